"""docs/OPERATIONS.md, run as written: the nginx site from the page in front
of a real cweb (deploy, a route, a WebSocket, the live event stream through
it), and the backup and restore commands against a server with a module
database and jobs."""

from __future__ import annotations

import json
import re
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import connect as ws_connect

from bench.nginx import _binary, wait_for_port
from tests.conftest import EXAMPLES, ROOT, Server, free_port, route_module, unique

DOC = ROOT / "docs" / "OPERATIONS.md"

# What the page's site needs around it to run unprivileged in a temp dir. Bodies
# stay in memory (the worker user may not write this dir).
WRAPPER = """\
daemon off;
master_process on;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_buffer_size 2m;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
{site}
}}
"""


def documented_site(cweb_port: int, listen_port: int) -> str:
    blocks = re.findall(r"```nginx\n(.*?)```", DOC.read_text(), flags=re.S)
    assert 1 == len(blocks), "docs/OPERATIONS.md has one nginx site"
    site = blocks[0]
    assert "server 127.0.0.1:8080;" in site and "listen 80;" in site
    return site.replace("server 127.0.0.1:8080;", f"server 127.0.0.1:{cweb_port};").replace("listen 80;", f"listen 127.0.0.1:{listen_port};")


@pytest.fixture
def nginx(server: Server, tmp_path: Path) -> Iterator[str]:
    port = free_port()
    conf = tmp_path / "nginx.conf"
    conf.write_text(WRAPPER.format(dir=tmp_path, site=documented_site(server.port, port)))
    check = subprocess.run([_binary(), "-t", "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                           capture_output=True, text=True)
    assert 0 == check.returncode, check.stderr
    proc = subprocess.Popen([_binary(), "-p", str(tmp_path), "-c", str(conf), "-e", str(tmp_path / "error.log")],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_port(port, proc, 15, "nginx")
        yield f"127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(15)


def test_the_documented_nginx_site_passes_deploys_routes_websockets_and_streams(nginx: str) -> None:
    name = unique("nginxmod")
    echo = unique("nginxws")
    with httpx.Client(base_url=f"http://{nginx}", timeout=60) as c:
        r = c.post("/mgnt", files={"code": ("m.c", route_module(name, f"/{name}", body="through nginx"))})
        assert 200 == r.status_code, r.text
        src = (EXAMPLES / "websocket.c").read_text().replace('.name = "websocket"', f'.name = "{echo}"').replace('"/websocket"', f'"/{echo}"')
        assert 200 == c.post("/mgnt", files={"code": ("ws.c", src)}).status_code
        assert "through nginx" == c.get(f"/{name}").text
        assert 404 == c.get(f"/{name}-missing").status_code

        # The upgrade passes through: a module socket answers.
        with ws_connect(f"ws://{nginx}/{echo}", open_timeout=30, compression=None) as ws:
            ws.send("hi")
            assert "You: hi" == ws.recv(timeout=10)

        # Streams are not buffered: the live feed's first event and a deploy's arrive as they happen.
        with c.stream("GET", "/_cweb/events") as events:
            assert 200 == events.status_code
            lines = events.iter_lines()
            assert "event: hello" == next(lines)
            t0 = time.monotonic()
            other = unique("nginxlive")
            assert 200 == httpx.post(f"http://{nginx}/mgnt", files={"code": ("m.c", route_module(other, f"/{other}"))}, timeout=60).status_code
            for line in lines:
                if line.startswith("data: ") and other in line and '"activated"' in line:
                    break
            assert time.monotonic() - t0 < 30


KV = (EXAMPLES / "kvstore.c").read_text()
JOBS = (EXAMPLES / "job_sum.c").read_text()


def shell_block(after: str) -> str:
    """The ```sh block of docs/OPERATIONS.md that follows the text `after`."""
    text = DOC.read_text()
    start = text.index(after)
    return re.search(r"```sh\n(.*?)```", text[start:], flags=re.S).group(1)


def test_backup_online_then_restore_brings_back_modules_their_data_and_jobs(make_server, tmp_path: Path) -> None:
    s = make_server(data_dir=tmp_path / "data")
    assert 200 == s.deploy(KV, "kvstore.c").status_code
    jobs = s.deploy(JOBS, "job_sum.c")
    assert 200 == jobs.status_code, jobs.text
    with s.client() as c:
        kv_hash = c.get("/modules/kvstore").json()["module_hash"]
        assert 201 == c.post("/kv/a", content=b"one").status_code
        job = c.post("/jobs", json={"module": jobs.json()["name"], "job": "sum", "payload": {"n": 10}}).json()["job_uuid"]
        deadline = time.monotonic() + 60
        while c.get(f"/jobs/{job}").json()["state"] != "done":
            assert time.monotonic() < deadline, "the job did not finish"
            time.sleep(0.1)

        # The online recipe, while the server runs.
        online = subprocess.run(["bash", "-euo", "pipefail", "-c", shell_block("**Online (no downtime):**")], cwd=tmp_path,
                                capture_output=True, text=True, timeout=300)
        assert 0 == online.returncode, online.stderr
        (tmp_path / "cweb-backup.tgz").rename(tmp_path / "online.tgz")
        assert 201 == c.post("/kv/b", content=b"after the backup").status_code
    s.stop()

    # The offline recipe's archive line, with the server stopped.
    offline_tar = next(line for line in shell_block("**Offline (simplest").splitlines() if line.startswith("tar "))
    assert 0 == subprocess.run(["bash", "-c", offline_tar], cwd=tmp_path, timeout=300).returncode
    for archive in ("online.tgz", "cweb-backup.tgz"):
        with tarfile.open(tmp_path / archive) as t:
            names = {n.removeprefix("./") for n in t.getnames()}
        assert {"registry.db", "jobs.db", f"store/artifacts/{kv_hash}.so", "modules-data/kvstore/module.db"} <= names, archive
        assert not any(n == "run" or n.startswith("run/") for n in names), archive

    # Restore the online backup into an empty data dir, as the page says.
    restored = tmp_path / "restored"
    restored.mkdir()
    subprocess.run(["tar", "-C", str(restored), "-xzf", str(tmp_path / "online.tgz")], check=True)
    r = make_server(data_dir=restored)
    with r.client() as c:
        assert kv_hash == c.get("/modules/kvstore").json()["module_hash"], "restored from the store, same artifact"
        assert "one" == c.get("/kv/a").text
        assert 404 == c.get("/kv/b").status_code, "written after the backup"
        done = c.get(f"/jobs/{job}").json()
        assert ("done", {"n": 10, "sum": 55}) == (done["state"], done["result"])
        assert json.loads(c.get("/kv").text) == {"a": "one"}
