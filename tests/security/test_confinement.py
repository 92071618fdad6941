"""A module reaches nothing but its own worker (issue 13, items 1 and 2).

Each test deploys a hostile module (a C file like any other) that tries one
attack from inside its worker, then checks from outside that the victim
keeps serving and that nothing the attacker wanted left the server.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx

from tests.conftest import ROOT, route_module, unique, wait_for
from tests.security.conftest import SENTINEL_BODY, SENTINEL_PATH, SecServer, auth
from tests.security.test_runtime_attacks import deploy, wait_ok

# Every Unix socket under the server's directories, found the way an attacker
# would (the kernel's list, then the directories themselves), connected to
# and sent `payload` (a JSON line or a raw frame); returns how many accepted.
SOCKET_SCAN = r"""
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
static int under(const char *path, const char *const *roots) {
    for (int i = 0; roots[i]; i++)
        if (roots[i][0] && strncmp(path, roots[i], strlen(roots[i])) == 0) return 1;
    return 0;
}
static int try_one(const char *path, const char *payload, size_t plen, char *got, size_t cap) {
    int s = socket(AF_UNIX, SOCK_STREAM, 0);
    if (s < 0) return 0;
    struct sockaddr_un a = {.sun_family = AF_UNIX};
    snprintf(a.sun_path, sizeof a.sun_path, "%s", path);
    if (connect(s, (struct sockaddr *)&a, sizeof a) != 0) { close(s); return 0; }
    if (payload) {
        ssize_t w = write(s, payload, plen);
        (void)w;
        struct pollfd p = {s, POLLIN, 0};
        if (got && poll(&p, 1, 500) > 0) {
            ssize_t n = read(s, got, cap - 1);
            if (n > 0) got[n] = 0;
        }
    }
    close(s);
    return 1;
}
static int scan(const char *const *roots, const char *payload, size_t plen, char *got, size_t cap) {
    int accepted = 0, tried = 0;
    FILE *f = fopen("/proc/net/unix", "r");
    char line[1024];
    while (f && fgets(line, sizeof line, f) && tried < 200) {
        char *path = strchr(line, '/');
        if (!path) continue;
        path[strcspn(path, "\n")] = 0;
        if (!under(path, roots)) continue;
        tried++;
        accepted += try_one(path, payload, plen, got, cap);
    }
    if (f) fclose(f);
    for (int i = 0; roots[i]; i++) {
        DIR *d = opendir(roots[i]);
        struct dirent *e;
        while (d && (e = readdir(d)) && tried < 400) {
            char path[512];
            struct stat st;
            snprintf(path, sizeof path, "%s/%s", roots[i], e->d_name);
            if (stat(path, &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
            tried++;
            accepted += try_one(path, payload, plen, got, cap);
        }
        if (d) closedir(d);
    }
    return accepted;
}
"""


def _roots(s: SecServer) -> str:
    """This server's directories as a C array of strings (only its own: the
    machine may run other servers whose sockets must not be touched)."""
    dirs = [str(s.data_dir), str(s.data_dir / "run")]
    return "{" + ", ".join(json.dumps(d) for d in dirs) + ", NULL}"


def _agent_pid(s: SecServer) -> int:
    assert s.proc is not None
    kids = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
    for pid in kids:
        if b"runtime" in Path(f"/proc/{pid}/cmdline").read_bytes():
            return int(pid)
    raise AssertionError("no runtime agent under the server")


def _python_workers(s: SecServer) -> int:
    """Worker interpreters below the agent (not their bwrap parents)."""
    n = 0
    for pid in _worker_pids(s):
        try:
            n += "python" in os.readlink(f"/proc/{pid}/exe")
        except OSError:
            pass
    return n


def _worker_pids(s: SecServer) -> set[int]:
    """Every process below the agent (workers, and whatever they started)."""
    out: set[int] = set()
    todo = [_agent_pid(s)]
    while todo:
        pid = todo.pop()
        try:
            kids = [int(k) for t in os.listdir(f"/proc/{pid}/task")
                    for k in Path(f"/proc/{pid}/task/{t}/children").read_text().split()]
        except OSError:
            continue
        out.update(kids)
        todo.extend(kids)
    return out


def _workers(s: SecServer) -> dict:
    with s.client() as c:
        r = c.get("/_cweb/workers", headers=auth())
    assert r.status_code == 200, r.text
    return r.json()


def test_module_cannot_command_the_agent(healthy: SecServer) -> None:
    """kill "expected" of every worker id and ten loads, sent to any socket
    the module can find: the sentinel stays active and serving, no worker
    is added."""
    commands = "".join(
        json.dumps({"id": 900 + i, "op": "kill", "worker_id": i, "expected": True}) + "\\n" for i in range(1, 40)
    ) + "".join(json.dumps({"id": 990 + i, "op": "load", "hash": "0" * 64}) + "\\n" for i in range(10))
    before = _python_workers(healthy)
    r = deploy(
        healthy,
        [("/attack", "atk",
          "    static const char *const roots[] = " + _roots(healthy) + ";\n"
          "    static char got[4096];\n"
          f'    static const char cmds[] = "{commands.replace(chr(34), chr(92) + chr(34))}";\n'
          "    int n = scan(roots, cmds, sizeof cmds - 1, got, sizeof got);\n"
          '    snprintf(res->body, HTTP_RESPONSE_SIZE, "accepted=%d", n); res->status = HTTP_200_OK; return 0;')],
        extra=SOCKET_SCAN,
    )
    with healthy.client() as c:
        out = c.get(r["attack"])
        assert out.status_code == 200, out.text
        assert out.text == "accepted=0", f"a control socket was reachable from a module: {out.text}"
        time.sleep(1)
        assert c.get(SENTINEL_PATH).text == SENTINEL_BODY
    states = {w["version_state"] for w in _workers(healthy)["workers"] if w["module"]}
    assert states <= {"active", "retiring", "pinned"}, states
    # The attacker's own worker and a new spare, not ten more.
    assert _python_workers(healthy) <= before + 2, "workers were started on a module's behalf"


def test_module_cannot_take_over_another_workers_socket(healthy: SecServer) -> None:
    """A listener planted where worker sockets used to live gets no
    connection, even once the victim's worker is killed and replaced: the
    api's connections come from the agent, not from a path."""
    victim_path = f"/{unique('victim')}"
    assert healthy.deploy(route_module(unique("victim"), victim_path, "victim body")).status_code == 200
    ids = [w["worker_id"] for w in _workers(healthy)["workers"]]
    plant = r"""
#include <pthread.h>
#include <sys/socket.h>
#include <sys/un.h>
static int accepted, bound;
static void *acceptor(void *arg) {
    int s = (int)(long)arg;
    for (;;) { int c = accept(s, NULL, NULL); if (c >= 0) { __atomic_add_fetch(&accepted, 1, __ATOMIC_SEQ_CST); close(c); } }
    return NULL;
}
static void unplant(const char *dir, int first, int last) {
    for (int id = first; id <= last + 8; id++) {
        char p[108];
        snprintf(p, sizeof p, "%s/w%d.sock", dir, id);
        unlink(p);
    }
}
static void plant(const char *dir, int first, int last) {
    for (int id = first; id <= last + 8; id++) {
        struct sockaddr_un a = {.sun_family = AF_UNIX};
        snprintf(a.sun_path, sizeof a.sun_path, "%s/w%d.sock", dir, id);
        unlink(a.sun_path);
        int s = socket(AF_UNIX, SOCK_STREAM, 0);
        if (s < 0) continue;
        if (bind(s, (struct sockaddr *)&a, sizeof a) != 0 || listen(s, 16) != 0) { close(s); continue; }
        bound++;
        pthread_t t;
        pthread_create(&t, NULL, acceptor, (void *)(long)s);
    }
}
"""
    run_dir = json.dumps(str(healthy.data_dir / "run"))
    r = deploy(
        healthy,
        [("/plant", "pl", f"    plant({run_dir}, {min(ids)}, {max(ids)});\n"
          '    snprintf(res->body, HTTP_RESPONSE_SIZE, "bound=%d", bound); res->status = HTTP_200_OK; return 0;'),
         ("/count", "ct", f"    unplant({run_dir}, {min(ids)}, {max(ids)});\n"
          '    snprintf(res->body, HTTP_RESPONSE_SIZE, "accepted=%d", accepted); res->status = HTTP_200_OK; return 0;')],
        extra=plant,
    )
    with healthy.client() as c:
        assert c.get(r["plant"]).status_code == 200
        # Kill the victim's worker: the api reconnects through the agent.
        victim = next(w for w in _workers(healthy)["workers"] if w["module"] and w["module"].startswith("victim")
                      and w["version_state"] == "active" and w["worker_id"] == max(ids))
        os.kill(victim["pid"], signal.SIGKILL)
        wait_ok(healthy, victim_path)
        for _ in range(20):
            got = c.get(victim_path)
            assert got.status_code == 200 and got.text == "victim body", got.text
        assert c.get(r["count"]).text == "accepted=0"


def test_module_cannot_become_another_workers_events_channel(healthy: SecServer) -> None:
    """Connecting to any socket and announcing F_EVENTS (the frame that makes
    a connection a worker's outbound channel) reaches no worker."""
    frame = "\\x01\\x00\\x00\\x00\\x06"
    r = deploy(
        healthy,
        [("/hijack", "hj",
          "    static const char *const roots[] = " + _roots(healthy) + ";\n"
          f'    static const char f[] = "{frame}";\n'
          "    int n = scan(roots, f, 5, NULL, 0);\n"
          '    snprintf(res->body, HTTP_RESPONSE_SIZE, "accepted=%d", n); res->status = HTTP_200_OK; return 0;')],
        extra=SOCKET_SCAN,
    )
    with healthy.client() as c:
        out = c.get(r["hijack"])
    assert out.status_code == 200 and out.text == "accepted=0", out.text


def _start_compose_agent(tmp_path: Path) -> tuple[subprocess.Popen, str]:
    run = tmp_path / "run"
    run.mkdir()
    sock = str(run / "agent.sock")
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, "-m", "runtime", "--socket", sock, "--store", str(tmp_path / "store"),
         "--run-dir", str(run), "--data-dir", str(tmp_path), "--workdir", str(tmp_path)],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if b"ready" in line:
            break
    threading.Thread(target=proc.stdout.read, daemon=True).start()
    return proc, sock


def _talk(sock_path: str, lines: list[dict], wait: float = 3.0) -> list[dict]:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(wait)
    s.connect(sock_path)
    s.sendall(b"".join(json.dumps(m).encode() + b"\n" for m in lines))
    buf = b""
    try:
        while chunk := s.recv(65536):
            buf += chunk
            if buf.count(b"\n") >= len(lines):
                break
    except TimeoutError:
        pass
    finally:
        s.close()
    return [json.loads(x) for x in buf.splitlines()]


def test_compose_agent_socket_refuses_a_client_without_the_secret(tmp_path: Path) -> None:
    """The compose layout keeps a path for the agent; only a client proving
    the secret (agent.secret, 0600, never visible to workers) is served."""
    proc, sock = _start_compose_agent(tmp_path)
    try:
        secret_file = Path(sock).parent / "agent.secret"
        assert secret_file.stat().st_mode & 0o077 == 0
        assert _talk(sock, [{"id": 1, "op": "ping"}]) == []
        assert _talk(sock, [{"id": 1, "op": "hello", "secret": "guess"}, {"id": 2, "op": "ping"}]) == []
        assert _talk(sock, [{"id": 1, "op": "load", "hash": "0" * 64}]) == []
        good = _talk(sock, [{"id": 1, "op": "hello", "secret": secret_file.read_text()}, {"id": 2, "op": "ping"}])
        assert [m.get("ok") for m in good] == [True, True], good
        ok = subprocess.run([sys.executable, "-m", "runtime", "--check", "--socket", sock],
                            env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, timeout=30)
        assert ok.returncode == 0, ok.stderr
    finally:
        proc.terminate()
        proc.wait(10)


def test_backlogged_request_to_a_dead_worker_answers_by_the_deadline(healthy: SecServer) -> None:
    """Requests queued behind busy connections of a worker that stops
    answering get their answer at the request deadline at the latest."""
    from tests.security.conftest import REQUEST_TIMEOUT_S

    r = deploy(healthy, [("/slow", "slow", "    sleep(30);\n    return 0;"), ("/ok", "ok", '    snprintf(res->body, HTTP_RESPONSE_SIZE, "ok"); res->status = HTTP_200_OK; return 0;')])
    n = 24  # three times the worker's connections: the later ones wait in the backlog
    results: list[tuple[int, float]] = []

    clients = [httpx.Client(base_url=healthy.url, timeout=30) for _ in range(n)]
    for c in clients:  # connected before the clock starts
        assert c.get("/healthz").status_code == 200
    first_wave = 8  # one per connection; the rest come when these are old
    start = threading.Barrier(first_wave)
    later = threading.Barrier(n - first_wave)

    def one(c: httpx.Client, i: int) -> None:
        if i < first_wave:
            start.wait()
        else:
            later.wait()
            time.sleep(0.3)
        t0 = time.monotonic()
        try:
            code = c.get(r["slow"]).status_code
        except httpx.HTTPError:
            code = 0
        results.append((code, time.monotonic() - t0))
        c.close()

    threads = [threading.Thread(target=one, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(results) == n
    slowest = max(d for _, d in results)
    assert {code for code, _ in results} <= {502, 503, 504}, results
    # The deadline and its sweep; not the hung-worker grace (2 s more) nor the restart.
    assert slowest < REQUEST_TIMEOUT_S + 1.0, results
    wait_ok(healthy, r["ok"])
    assert healthy.get(SENTINEL_PATH).text == SENTINEL_BODY



# Files a module must neither read nor write: opened for reading, then for
# appending; what could be read is returned (so the test sees any leak).
FILE_PROBE = r"""
#include <errno.h>
#include <fcntl.h>
static void try_file(const char *path, char *out, size_t cap) {
    size_t used = strlen(out);
    int r = open(path, O_RDONLY), w = open(path, O_WRONLY | O_APPEND);
    char head[65] = {0};
    if (r >= 0) { ssize_t n = read(r, head, 64); (void)n; close(r); }
    if (w >= 0) close(w);
    for (char *p = head; *p; p++) if (*p < 33 || *p > 126) *p = '.';
    snprintf(out + used, cap - used, "%s r=%d w=%d head=%s\n", path, r >= 0, w >= 0, head);
}
"""


def test_module_cannot_open_server_or_host_files(healthy: SecServer, tmp_path: Path) -> None:
    """The data dir's databases and keys, the store (sources and other
    modules' artifacts), /etc/shadow and a host file: none opens, for
    reading or writing, and every file is unchanged afterwards."""
    host_secret = tmp_path / "host-secret.txt"
    host_secret.write_text("HOSTSECRET-" + unique("s"))
    data = healthy.data_dir
    targets = [data / "jobs.db", data / "registry.db", data / "server.key.bin", host_secret, Path("/etc/shadow")]
    targets += sorted((data / "store").rglob("*"))[:40]
    targets += sorted(p for p in (data / "signing").rglob("*") if p.is_file()) if (data / "signing").exists() else []
    targets = [t for t in targets if t.is_file()]
    assert any("artifacts" in str(t) for t in targets) and any(t.name == "registry.db" for t in targets)
    before = {t: t.read_bytes() for t in targets if t.name not in ("jobs.db", "registry.db")}
    calls = "\n".join(f"    try_file({json.dumps(str(t))}, res->body, HTTP_RESPONSE_SIZE);" for t in targets)
    r = deploy(healthy, [("/files", "fl", "    res->body[0] = 0;\n" + calls + "\n    res->status = HTTP_200_OK; return 0;")],
               extra=FILE_PROBE)
    out = healthy.get(r["files"])
    assert out.status_code == 200, out.text
    lines = out.text.strip().splitlines()
    assert len(lines) == len(targets)
    opened = [line for line in lines if " r=1" in line or " w=1" in line]
    assert opened == [], opened
    assert "HOSTSECRET" not in out.text
    for t, content in before.items():
        assert t.read_bytes() == content, f"{t} changed"


TCP_PROBE = r"""
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
static int tcp_to(int port) {
    int s = socket(AF_INET, SOCK_STREAM, 0);
    if (s < 0) return -2;
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int rc = connect(s, (struct sockaddr *)&a, sizeof a);
    if (rc == 0) { ssize_t n = write(s, "GET / HTTP/1.0\r\n\r\n", 18); (void)n; }
    close(s);
    return rc;
}
"""


def _listener() -> tuple[socket.socket, list[bytes]]:
    """A loopback listener of the test's; what it receives."""
    got: list[bytes] = []
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    srv.settimeout(0.2)

    def serve() -> None:
        while srv.fileno() >= 0:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            got.append(conn.recv(100) or b"(connected)")
            conn.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, got


def _tcp_module(s: SecServer, ports: list[int]) -> str:
    body = "".join(f'    n += snprintf(res->body + n, HTTP_RESPONSE_SIZE - n, "{p}=%d ", tcp_to({p}));\n' for p in ports)
    r = deploy(s, [("/tcp", "tc", "    int n = 0;\n" + body + "    res->status = HTTP_200_OK; return 0;")], extra=TCP_PROBE)
    return r["tcp"]


def test_module_cannot_open_tcp_connections(healthy: SecServer) -> None:
    """Neither the api's port nor a loopback listener of the test's: the
    worker's network namespace has no interface at all."""
    srv, got = _listener()
    try:
        path = _tcp_module(healthy, [healthy.port, srv.getsockname()[1]])
        out = healthy.get(path)
        assert out.status_code == 200, out.text
        assert "=0" not in out.text, out.text
        time.sleep(0.5)
        assert got == []
    finally:
        srv.close()


def test_network_opt_in_lets_modules_reach_the_host(tmp_path: Path) -> None:
    """CWEB_WORKER_NETWORK=1 keeps the host's network for workers."""
    from tests.security.conftest import start_sec_server

    s = start_sec_server(tmp_path / "data", env={"CWEB_WORKER_NETWORK": "1"})
    srv, got = _listener()
    try:
        path = _tcp_module(s, [srv.getsockname()[1]])
        out = s.get(path)
        assert out.status_code == 200 and out.text.strip() == f"{srv.getsockname()[1]}=0", out.text
        assert wait_for(lambda: bool(got), 5) and got[0].startswith(b"GET / HTTP/1.0")
    finally:
        srv.close()
        s.stop()


PROC_PROBE = r"""
#include <ctype.h>
#include <dirent.h>
#include <signal.h>
static int visible(void) {
    int n = 0;
    DIR *d = opendir("/proc");
    struct dirent *e;
    while (d && (e = readdir(d))) if (isdigit((unsigned char)e->d_name[0])) n++;
    if (d) closedir(d);
    return n;
}
"""


def test_module_sees_and_signals_no_other_process(healthy: SecServer) -> None:
    """Its own PID namespace: /proc lists the worker and bwrap's init only,
    and signals to the api, the agent or the sentinel's worker fail."""
    assert healthy.proc is not None
    sentinel = next(w["pid"] for w in _workers(healthy)["workers"] if w["module"] and w["module"].startswith("sentinel"))
    victims = [healthy.proc.pid, _agent_pid(healthy), sentinel]
    body = "".join(f'    n += snprintf(res->body + n, HTTP_RESPONSE_SIZE - n, "kill{p}=%d ", kill({p}, SIGKILL));\n' for p in victims)
    r = deploy(healthy, [("/procs", "pp", '    int n = snprintf(res->body, HTTP_RESPONSE_SIZE, "visible=%d ", visible());\n'
                          + body + "    res->status = HTTP_200_OK; return 0;")], extra=PROC_PROBE)
    out = healthy.get(r["procs"])
    assert out.status_code == 200, out.text
    facts = dict(kv.split("=", 1) for kv in out.text.split())
    assert int(facts["visible"]) <= 2, out.text
    assert all(facts[f"kill{p}"] == "-1" for p in victims), out.text
    assert healthy.get(SENTINEL_PATH).text == SENTINEL_BODY


def test_workers_of_different_modules_run_as_different_uids(healthy: SecServer) -> None:
    """A root server gives each worker a uid of its own (CWEB_WORKER_UIDS),
    never 0; a server that is not root runs every worker as itself."""
    uid_route = [("/uid", "ud", '    snprintf(res->body, HTTP_RESPONSE_SIZE, "%d %d", (int)getuid(), (int)geteuid()); res->status = HTTP_200_OK; return 0;')]
    a = deploy(healthy, uid_route)["uid"]
    b = deploy(healthy, uid_route)["uid"]
    ua, ub = healthy.get(a).text.split(), healthy.get(b).text.split()
    assert ua[0] == ua[1] and ub[0] == ub[1]
    if os.geteuid() != 0:
        assert int(ua[0]) == int(ub[0]) == os.geteuid()
        return
    assert int(ua[0]) >= 1_500_000_000 and int(ub[0]) >= 1_500_000_000
    assert ua[0] != ub[0]


def test_sandbox_is_reported(healthy: SecServer) -> None:
    assert healthy.get("/healthz").json()["workers"] == "bubblewrap"
    assert _workers(healthy)["sandbox"] == "bubblewrap"


def test_landlock_confines_workers_where_bubblewrap_cannot_run(tmp_path: Path) -> None:
    """The compose runtime container's sandbox (bubblewrap cannot run there),
    forced here: no server file, no host file, no TCP, no signal to another
    process; module databases still work."""
    from tests.security.conftest import deploy_sentinel, start_sec_server

    s = start_sec_server(tmp_path / "data", env={"CWEB_WORKER_SANDBOX": "landlock"})
    srv, got = _listener()
    try:
        assert s.get("/healthz").json()["workers"] == "landlock"
        deploy_sentinel(s)
        host_secret = tmp_path / "host-secret.txt"
        host_secret.write_text("HOSTSECRET-" + unique("s"))
        data = s.data_dir
        targets = [data / "jobs.db", data / "registry.db", host_secret, Path("/etc/shadow")]
        targets += sorted(p for p in (data / "store").rglob("*") if p.is_file())[:20]
        targets += sorted(p for p in (data / "signing").rglob("*") if p.is_file())
        calls = "\n".join(f"    try_file({json.dumps(str(t))}, res->body, HTTP_RESPONSE_SIZE);" for t in targets)
        r = deploy(s, [("/files", "fl", "    res->body[0] = 0;\n" + calls + "\n    res->status = HTTP_200_OK; return 0;")],
                   extra=FILE_PROBE)
        out = s.get(r["files"])
        assert out.status_code == 200, out.text
        assert [line for line in out.text.splitlines() if " r=1" in line or " w=1" in line] == []
        assert "HOSTSECRET" not in out.text

        path = _tcp_module(s, [s.port, srv.getsockname()[1]])
        tcp = s.get(path)
        assert tcp.status_code == 200 and "=0" not in tcp.text, tcp.text

        assert s.proc is not None
        sentinel = next(w["pid"] for w in _workers(s)["workers"] if w["module"] and w["module"].startswith("sentinel"))
        victims = [s.proc.pid, _agent_pid(s), sentinel]
        body = "".join(f'    n += snprintf(res->body + n, HTTP_RESPONSE_SIZE - n, "kill{p}=%d ", kill({p}, SIGKILL));\n' for p in victims)
        k = deploy(s, [("/procs", "pp", "    int n = 0;\n" + body + "    res->status = HTTP_200_OK; return 0;")],
                   extra="#include <signal.h>\n")
        killed = s.get(k["procs"])
        assert killed.status_code == 200 and all(f"kill{p}=-1" in killed.text for p in victims), killed.text
        time.sleep(0.5)
        assert got == []
        s.assert_healthy()
    finally:
        srv.close()
        s.stop()
