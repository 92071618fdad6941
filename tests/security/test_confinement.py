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

from tests.conftest import ROOT, route_module, unique
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
    before = len(_worker_pids(healthy))
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
    assert len(_worker_pids(healthy)) <= before + 2, "workers were started on a module's behalf"


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

