"""The author's loop against a real server (issue 18): how the server starts
and stops (port taken, Ctrl-C on a terminal), what a followed log does when
the server goes away, gcc's excerpt and link errors with their line.
"""

from __future__ import annotations

import os
import pty
import select
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.conftest import ROOT, Server, free_port, route_module, unique, wait_for

CLI = ROOT / "cweb"


def cli_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env["NO_COLOR"] = "1"
    return env


def cweb(*args: str, cwd: Path, server: Server, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(CLI), "--server", server.url, *args], cwd=cwd, env=cli_env(),
                          capture_output=True, text=True, timeout=timeout)


def read_until(fd: int, done, timeout: float) -> bytes:
    """Read a pty until done(output) or EOF or timeout; the output."""
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and not done(out):
        ready, _, _ = select.select([fd], [], [], 0.1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the other side is gone
                break
            if not chunk:
                break
            out += chunk
    return out


def test_server_on_a_taken_port_says_so_at_once_and_never_ready(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env["PYTHONPATH"] = str(ROOT)
        run = subprocess.run([sys.executable, "-m", "api", "--port", str(port), "--data-dir", str(tmp_path / "data")],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert 2 == run.returncode, run.stderr
    assert f"cannot listen on 127.0.0.1:{port}" in run.stderr and "--port" in run.stderr, run.stderr
    assert "cweb ready" not in run.stderr and "Traceback" not in run.stderr


def test_server_logs_ready_only_once_listening(make_server) -> None:
    server = make_server()
    lines = server.logs().splitlines()
    ready = [i for i, line in enumerate(lines) if "cweb ready on http://127.0.0.1:" in line]
    started = [i for i, line in enumerate(lines) if "cweb started:" in line]
    assert len(ready) == 1 and started and started[0] < ready[0], lines


def start_in_pty(port: int, data: Path) -> tuple[int, int]:
    pid, fd = pty.fork()
    if pid == 0:  # the child: the server, on the terminal
        env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
        env["PYTHONPATH"] = str(ROOT)
        os.chdir(ROOT)
        os.execve(sys.executable, [sys.executable, "-m", "api", "--port", str(port), "--data-dir", str(data)], env)
    return pid, fd


def test_ctrl_c_stops_the_server_without_a_traceback_at_start_and_when_ready(tmp_path: Path) -> None:
    """^C on the terminal, once while the server is still importing and
    starting, once when it is ready: no traceback, no "lost the runtime
    agent" (the agent is not in the terminal's process group)."""
    for when in ("starting", "ready"):
        port = free_port()
        pid, fd = start_in_pty(port, tmp_path / f"data-{when}")
        try:
            if when == "starting":
                out = read_until(fd, lambda o: False, 0.8)
            else:
                out = read_until(fd, lambda o: b"cweb ready on" in o, 60)
                assert b"cweb ready on" in out, out.decode(errors="replace")
            os.write(fd, b"\x03")
            out += read_until(fd, lambda o: False, 20)
            _, status = os.waitpid(pid, 0)
        finally:
            os.close(fd)
        text = out.decode(errors="replace")
        assert "Traceback" not in text and "KeyboardInterrupt" not in text, (when, text)
        assert "lost the runtime agent" not in text, (when, text)
        assert os.waitstatus_to_exitcode(status) in (0, 130), (when, status, text)


def test_logs_follow_exits_3_with_a_message_when_the_server_goes_away(make_server, tmp_path: Path) -> None:
    server = make_server()
    name = unique("gone")
    assert 200 == server.deploy(route_module(name, f"/{name}")).status_code
    follower = subprocess.Popen([sys.executable, str(CLI), "--server", server.url, "logs", name, "-f"], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # Subscribed once the server counts a follower of the module.
        time.sleep(1.0)
        assert follower.poll() is None
        server.stop()
        follower.wait(30)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    err = follower.stderr.read()  # type: ignore[union-attr]
    assert 3 == follower.returncode, err
    assert "closed the log stream" in err or "cannot reach" in err, err
    assert "Traceback" not in err


def test_compile_errors_keep_gccs_excerpt_and_link_errors_their_line(server: Server, tmp_path: Path) -> None:
    src = tmp_path / "typo.c"
    src.write_text("#include <cweb.h>\nint f(void) {\n    int x = 1\n    return x;\n}\n")
    r = cweb("deploy", str(src), cwd=tmp_path, server=server)
    assert 1 == r.returncode
    lines = r.stderr.splitlines()
    first = next(i for i, line in enumerate(lines) if f"{src}:4:5: error:" in line)
    assert "|     return x;" in lines[first + 1] and lines[first + 2].strip().startswith("|") and "^" in lines[first + 2], r.stderr

    name = unique("link")
    src = tmp_path / "link.c"
    src.write_text(route_module(name, f"/{name}", extra="int not_defined_anywhere(void);")
                   .replace("(void)ctx; (void)req;", "(void)ctx; (void)req; not_defined_anywhere();"))
    wanted = next(i for i, line in enumerate(src.read_text().splitlines(), 1) if "not_defined_anywhere();" in line)
    r = server.deploy(src.read_text(), "link.c")
    assert 422 == r.status_code, r.text
    diags = [d for d in r.json()["diagnostics"] if "undefined reference" in d["message"]]
    assert diags and ("link.c", wanted) == (diags[0]["file"], diags[0]["line"]), r.json()["diagnostics"]
    r = cweb("deploy", str(src), cwd=tmp_path, server=server)
    assert f"{src}:{wanted}: error: undefined reference to `not_defined_anywhere'" in r.stderr, r.stderr


def test_sigint_to_a_follower_started_with_sigint_ignored_still_ends_it(server: Server, tmp_path: Path) -> None:
    name = unique("ign")
    assert 200 == server.deploy(route_module(name, f"/{name}")).status_code
    follower = subprocess.Popen([sys.executable, str(CLI), "--server", server.url, "logs", name, "-f"], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    try:
        assert not wait_for(lambda: follower.poll() is not None, 1.5), "follows until told to stop"
        follower.send_signal(signal.SIGINT)
        follower.wait(20)
    finally:
        if follower.poll() is None:
            follower.kill()
            follower.wait()
    assert 130 == follower.returncode
    assert "Traceback" not in follower.stderr.read()  # type: ignore[union-attr]


def test_readme_quick_start_port_and_data_dir_from_the_environment(tmp_path: Path) -> None:
    """README: `CWEB_PORT=... CWEB_DATA_DIR=... make run` (make passes the
    environment to `python -m api`): the server listens there and keeps its
    state there."""
    import httpx

    port = free_port()
    data = tmp_path / "elsewhere"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env.update({"PYTHONPATH": str(ROOT), "CWEB_PORT": str(port), "CWEB_DATA_DIR": str(data)})
    log = (tmp_path / "server.log").open("wb")
    proc = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        def healthy() -> bool:
            try:
                return httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        assert wait_for(healthy, 60), (tmp_path / "server.log").read_text()
        assert (data / "registry.db").is_file()
        assert f"cweb ready on http://127.0.0.1:{port}" in (tmp_path / "server.log").read_text()
    finally:
        proc.terminate()
        proc.wait(20)
        log.close()


def test_init_makes_a_project_editors_and_gcc_compile_and_the_server_deploys(server: Server, tmp_path: Path) -> None:
    import shutil

    import httpx

    name = unique("init")
    r = cweb("init", name, cwd=tmp_path, server=server)
    assert 0 == r.returncode, r.stderr
    project = tmp_path / name
    flags = (project / "compile_flags.txt").read_text().split()
    assert "-Icweb-sdk" in flags and (project / "cweb-sdk" / "cweb.h").is_file()
    assert f"-I{project / 'cweb-sdk'}" in (project / ".clangd").read_text()
    assert f"server_url = {server.url}" in (project / "routes.ini").read_text()
    gcc = shutil.which("gcc")
    assert gcc
    local = subprocess.run([gcc, "-fsyntax-only", *flags, f"{name}.c"], cwd=project, capture_output=True, text=True, timeout=60)
    assert 0 == local.returncode, local.stderr
    deployed = subprocess.run([sys.executable, str(CLI), "deploy"], cwd=project, env=cli_env(), capture_output=True, text=True, timeout=120)
    assert 0 == deployed.returncode, deployed.stderr
    assert f"  GET    {server.url}/{name}\n" in deployed.stdout, deployed.stdout
    assert f"  GET    {server.url}/{name}/items/[0-9]+   (regex" in deployed.stdout
    assert "hello me from " + name in httpx.get(f"{server.url}/{name}", params={"who": "me"}).text
    assert {"item": 42} == httpx.get(f"{server.url}/{name}/items/42").json()
    again = cweb("init", name, cwd=tmp_path, server=server)
    assert 2 == again.returncode and "not empty" in again.stderr


def test_rollback_without_a_hash_goes_to_the_previous_version(server: Server, tmp_path: Path) -> None:
    import httpx

    name = unique("rb")
    for body in ("one", "two"):
        (tmp_path / f"{body}.c").write_text(route_module(name, f"/{name}", body=body))
        assert 0 == cweb("deploy", f"{body}.c", cwd=tmp_path, server=server).returncode
    assert "two" == httpx.get(f"{server.url}/{name}").text
    r = cweb("rollback", name, cwd=tmp_path, server=server)
    assert 0 == r.returncode, r.stderr
    assert r.stdout.startswith(f"rolled back {name}") and f"GET    {server.url}/{name}" in r.stdout
    assert "one" == httpx.get(f"{server.url}/{name}").text
    assert 0 == cweb("rollback", name, cwd=tmp_path, server=server).returncode
    assert "two" == httpx.get(f"{server.url}/{name}").text


def test_deploy_watch_redeploys_on_save_and_reports_refusals(server: Server, tmp_path: Path) -> None:
    import httpx

    name = unique("watch")
    src = tmp_path / "w.c"
    src.write_text(route_module(name, f"/{name}", body="v1"))
    watcher = subprocess.Popen([sys.executable, str(CLI), "--server", server.url, "deploy", "--watch", "w.c"], cwd=tmp_path,
                               env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert wait_for(lambda: httpx.get(f"{server.url}/{name}").text == "v1", 60)
        src.write_text("#include <cweb.h>\nint broken = ;\n")
        time.sleep(1.0)
        assert "v1" == httpx.get(f"{server.url}/{name}").text, "a refused save leaves the old version serving"
        src.write_text(route_module(name, f"/{name}", body="v2"))
        assert wait_for(lambda: httpx.get(f"{server.url}/{name}").text == "v2", 60)
        assert watcher.poll() is None, "keeps watching after a refusal"
        watcher.send_signal(signal.SIGINT)
        watcher.wait(20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    out, err = watcher.stdout.read(), watcher.stderr.read()  # type: ignore[union-attr]
    assert 130 == watcher.returncode
    assert 2 == out.count(f"deployed {name}"), out
    assert "w.c:2:" in err and "error" in err, err
    assert "Traceback" not in err


def test_logs_follow_shows_request_lines_with_method_route_status_and_time(server: Server, tmp_path: Path) -> None:
    import threading

    import httpx

    name = unique("reqlog")
    assert 200 == server.deploy(route_module(name, f"/{name}/[0-9]+", method="POST")).status_code
    follower = subprocess.Popen([sys.executable, str(CLI), "--server", server.url, "logs", name, "-f", "-n", "0"], cwd=tmp_path,
                                env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    got: list[str] = []
    reader = threading.Thread(target=lambda: got.extend(iter(follower.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    try:
        def seen() -> bool:
            httpx.post(f"{server.url}/{name}/12")
            return any(f"request POST /{name}/[0-9]+ 200 " in line and line.rstrip().endswith(" ms") for line in got)

        assert wait_for(seen, 30), got
    finally:
        follower.send_signal(signal.SIGINT)
        follower.wait(20)
    assert 130 == follower.returncode


def test_diagnostics_on_a_terminal_are_coloured_like_gccs(server: Server, tmp_path: Path) -> None:
    """Through a real TTY: the location bold, `error:` red, the excerpt under
    it with the caret line green, as gcc colours them; no colour in a pipe."""
    src = tmp_path / "typo.c"
    src.write_text("#include <cweb.h>\nint f(void) {\n    int x = 1\n    return x;\n}\n")
    master, slave = pty.openpty()
    env = cli_env()
    env.pop("NO_COLOR", None)
    env["TERM"] = "xterm"
    proc = subprocess.Popen([sys.executable, str(CLI), "--server", server.url, "deploy", "typo.c"], cwd=tmp_path, env=env,
                            stdin=subprocess.DEVNULL, stdout=slave, stderr=slave)
    os.close(slave)
    try:
        out = read_until(master, lambda o: False, 120).decode(errors="replace")
        proc.wait(30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert 1 == proc.returncode, out
    assert "\x1b[1mtypo.c:4:5:\x1b[0m \x1b[31;1merror:\x1b[0m" in out, repr(out)
    assert "    4 |     return x;" in out, repr(out)
    assert "\x1b[32m      |     ^~~~~~\x1b[0m" in out, repr(out)
    piped = cweb("deploy", "typo.c", cwd=tmp_path, server=server)
    assert "\x1b[" not in piped.stderr and "      |     ^~~~~~" in piped.stderr
