"""The compose stack for real: docker-compose.yml as users run it, images built
from this checkout, driven only through the api's published port, plus the
hardening each service is promised (docs/CONTAINERS.md), checked on the
containers compose created."""

from __future__ import annotations

import re
import subprocess
import threading
import time
import uuid

import httpx
import pytest

from tests.conftest import EXAMPLES, HANDLER, ROOT, module, route_module, unique, wait_for
from tests.containers.conftest import COMPOSE_FILE, Stack, compose_env, dumps, run

# Session fixtures build the images (minutes when cold): the first test pays.
pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]


def get_text(stack: Stack, path: str) -> str:
    with stack.client(auth=False) as c:
        r = c.get(path)
    assert 200 == r.status_code, r.text
    return r.text


def test_stack_is_healthy_and_builds_through_the_builder(stack: Stack) -> None:
    """The api answers on its published port and builds remotely, not in-process."""
    with stack.client(auth=False) as c:
        health = c.get("/healthz").json()
    assert "ok" == health["status"]
    assert "remote" == health["builds"]


def test_deploy_without_key_is_refused(stack: Stack) -> None:
    """CWEB_API_KEY is passed through: an anonymous deploy is 401."""
    with stack.client(auth=False) as c:
        r = c.post("/mgnt", files={"code": ("m.c", route_module(unique(), "/nokey").encode(), "text/x-c")})
    assert 401 == r.status_code, r.text


def test_deploy_route_hot_swap_and_rollback(stack: Stack) -> None:
    """deploy -> route answers -> hot swap to a new body -> rollback to the first artifact."""
    name = unique("swap")
    path = f"/{name}"
    v1_source = route_module(name, path, "version one")
    first = stack.deploy(v1_source, "swap.c")
    assert 200 == first.status_code, first.text
    v1 = first.json()
    assert (name, False) == (v1["name"], v1["cache_hit"])
    assert "version one" == get_text(stack, path)

    second = stack.deploy(route_module(name, path, "version two"), "swap.c")
    assert 200 == second.status_code, second.text
    v2 = second.json()
    assert v1["module_hash"] == v2["previous_hash"]
    assert v1["module_hash"] != v2["module_hash"]
    assert "version two" == get_text(stack, path)

    with stack.client() as c:
        back = c.post(f"/modules/{name}/rollback", json={"module_hash": v1["module_hash"]})
    assert 200 == back.status_code, back.text
    with stack.client(auth=False) as c:
        assert v1["module_hash"] == c.get(f"/modules/{name}").json()["module_hash"]
    assert "version one" == get_text(stack, path)


def _slow_body(body: str, sleep_ms: int = 0) -> str:
    sleep = f"usleep({sleep_ms} * 1000);" if sleep_ms else ""
    return f"""
{HANDLER.format(fn="h")} {{
    (void)ctx; (void)req;
    {sleep}
    snprintf(res->body, HTTP_RESPONSE_SIZE, "%s", "{body}");
    res->status = HTTP_200_OK;
    return 0;
}}
"""


def test_hot_swap_answers_with_the_new_version_and_drains_the_old(stack: Stack) -> None:
    """A request in flight on v1 finishes on v1 while v2 already answers new
    requests; v1's unload runs only after that request, i.e. once drained."""
    name = unique("drain")
    path = f"/{name}"
    unload = """
static void on_unload(struct cweb_context *ctx) {
    (void)ctx;
    printf("unloaded-marker\\n");
}
"""

    def unloaded() -> bool:
        with stack.client() as c:
            return any("unloaded-marker" in e["line"] for e in c.get(f"/modules/{name}/logs").json()["lines"])

    v1 = module(name, [(path, "GET", "h")], _slow_body("v1", sleep_ms=2000) + unload, ".unload = on_unload,")
    v2 = module(name, [(path, "GET", "h")], _slow_body("v2"))
    first = stack.deploy(v1, "drain.c")
    assert 200 == first.status_code, first.text
    # Build v2 ahead, so the swap below is a cache hit that lands while v1's request runs.
    with stack.client() as c:
        assert 200 == c.post("/mgnt", params={"check": 1}, files={"code": ("drain.c", v2.encode(), "text/x-c")}).status_code
    slow: dict = {}

    def slow_request() -> None:
        with stack.client(auth=False) as c:
            r = c.get(path)
            slow["answer"] = (r.status_code, r.text)

    t = threading.Thread(target=slow_request)
    t.start()
    time.sleep(0.5)
    second = stack.deploy(v2, "drain.c")
    assert 200 == second.status_code, second.text
    assert first.json()["module_hash"] == second.json()["previous_hash"]
    assert "v2" == get_text(stack, path)
    unloaded_while_draining = unloaded()
    t.join(30)
    assert False is unloaded_while_draining
    assert (200, "v1") == slow["answer"]
    assert True is wait_for(unloaded, timeout=15)


def test_workers_are_confined_by_landlock_in_the_runtime_container(stack: Stack) -> None:
    """bubblewrap cannot run in the runtime container: workers confine
    themselves with Landlock. The agent's secret and the token-signing key sit
    in the same container under the same uid, yet a module cannot open them."""
    with stack.client(auth=False) as c:
        assert "landlock" == c.get("/healthz").json()["workers"]
    code, listing = run(stack.runtime, "sh", "-c", "ls /run/cweb/agent.secret; find /var/lib/cweb/signing -type f")
    assert 0 == code, listing
    targets = listing.split()
    assert "/run/cweb/agent.secret" in targets and len(targets) >= 2, targets
    # The same files are readable to the runtime's own uid: the refusal below is Landlock's.
    code, _ = run(stack.runtime, "cat", *targets)
    assert 0 == code
    name = unique("confined")
    probes = "".join(
        f'    fd = open("{t}", O_RDONLY); n += snprintf(res->body + n, HTTP_RESPONSE_SIZE - n, "%s=%d,%d\\n", "{t}", fd, fd < 0 ? errno : 0);'
        f" if (fd >= 0) close(fd);\n"
        for t in targets
    )
    code_c = f"""
#include <errno.h>
#include <fcntl.h>
{HANDLER.format(fn="h")} {{
    (void)ctx; (void)req;
    int fd, n = 0;
{probes}    res->status = HTTP_200_OK;
    return 0;
}}
"""
    r = stack.deploy(module(name, [(f"/{name}", "GET", "h")], code_c), "confined.c")
    assert 200 == r.status_code, r.text
    lines = get_text(stack, f"/{name}").splitlines()
    assert [f"{t}=-1,13" for t in targets] == lines  # EACCES from Landlock, for every file


def test_compile_error_comes_back_with_diagnostics(stack: Stack) -> None:
    """A compile error in the builder container reaches the user as structured diagnostics."""
    r = stack.deploy(b"#include <cweb.h>\nint broken(void) { return nope; }\n", "broken.c")
    assert 422 == r.status_code, r.text
    body = r.json()
    assert "compile_failed" == body["error"]
    assert ("broken.c", 2) == (body["diagnostics"][0]["file"], body["diagnostics"][0]["line"])


def test_module_links_openssl_sqlite_and_jansson_in_the_runtime(stack: Stack) -> None:
    """The api image has the shared libraries a module links against (and no compiler)."""
    name = unique("libs")
    extra = """
static void use_libs(void) {
    unsigned char md[32]; SHA256((const unsigned char *)"x", 1, md);
    json_decref(json_object());
    (void)sqlite3_libversion();
}
"""
    source = route_module(name, f"/{name}", "libs ok", extra=extra).replace("(void)ctx; (void)req;", "(void)ctx; (void)req; use_libs();")
    source = source.replace("#include <cweb.h>", "#include <cweb.h>\n#include <openssl/sha.h>")
    r = stack.deploy(source, "libs.c")
    assert 200 == r.status_code, r.text
    assert "libs ok" == get_text(stack, f"/{name}")
    code, out = run(stack.runtime, "sh", "-c", "command -v gcc cc || echo no-compiler")
    assert "no-compiler" == out.strip()


def test_socket_echo_through_the_runtime(stack: Stack) -> None:
    """A module's WebSocket answers through api -> runtime worker."""
    from websockets.sync.client import connect

    name = unique("ws")
    source = (EXAMPLES / "websocket.c").read_text().replace('.name = "websocket"', f'.name = "{name}"')
    source = source.replace('"/websocket"', f'"/{name}"')
    r = stack.deploy(source, "websocket.c")
    assert 200 == r.status_code, r.text
    with connect(stack.url.replace("http://", "ws://") + f"/{name}", open_timeout=10, close_timeout=5) as ws:
        ws.send("through the containers")
        assert "You: through the containers" == ws.recv(timeout=10)


def test_job_runs_in_the_runtime_and_records_its_hash(stack: Stack) -> None:
    """POST /jobs -> the job runs on the module's exact hash -> result."""
    name = unique("jobs")
    source = (EXAMPLES / "job_sum.c").read_text().replace('.name = "job_sum"', f'.name = "{name}"')
    r = stack.deploy(source, "job_sum.c")
    assert 200 == r.status_code, r.text
    module_hash = r.json()["module_hash"]
    with stack.client() as c:
        created = c.post("/jobs", json={"module": name, "job": "sum", "payload": {"n": 100}})
        assert 200 == created.status_code, created.text
        job_id = next(created.json()[k] for k in ("job_uuid", "uuid", "id") if k in created.json())
        deadline = time.monotonic() + 60
        job: dict = {}
        while time.monotonic() < deadline:
            job = c.get(f"/jobs/{job_id}").json()
            if job.get("state") in ("done", "failed", "canceled"):
                break
            time.sleep(0.2)
    assert "done" == job.get("state"), dumps(job)
    assert {"n": 100, "sum": 5050} == job["result"]
    assert module_hash == job["module_hash"]


# ---- hardening -------------------------------------------------------------


@pytest.mark.parametrize("service", ["api", "builder", "runtime"])
def test_services_run_as_non_root(stack: Stack, service: str) -> None:
    """No service runs as uid 0."""
    code, out = run(getattr(stack, service), "id", "-u")
    assert 0 == code
    assert "0" != out.strip()


def test_builder_has_a_uid_of_its_own(stack: Stack) -> None:
    """The compile's RLIMIT_NPROC counts every process of its uid on the host:
    sharing the runtime's uid, the workers' threads made gcc's vfork fail."""
    uids = {service: run(stack.container(service), "id", "-u")[1].strip() for service in ("api", "builder", "runtime")}
    assert uids["api"] == uids["runtime"], uids  # they share the run volume and its 0600 secret
    assert uids["builder"] != uids["runtime"], uids


@pytest.mark.parametrize("service", ["api", "builder", "runtime"])
def test_root_filesystem_is_read_only(stack: Stack, service: str) -> None:
    """Writing outside the volumes and /tmp fails: the root filesystem is read-only."""
    code, out = run(getattr(stack, service), "touch", "/x")
    assert 0 != code
    assert "Read-only file system" in out
    code, _ = run(getattr(stack, service), "touch", "/tmp/scratch-ok")
    assert 0 == code


@pytest.mark.parametrize("service", ["builder", "runtime"])
def test_no_capabilities_and_no_new_privileges(stack: Stack, service: str) -> None:
    """Compile and module processes hold no capabilities and cannot gain any."""
    code, status = run(getattr(stack, service), "cat", "/proc/self/status")
    assert 0 == code
    fields = dict(re.findall(r"^(\w+):\s*(\S+)", status, re.M))
    assert ("0000000000000000", "0000000000000000", "1") == (fields["CapEff"], fields["CapBnd"], fields["NoNewPrivs"])


def test_runtime_has_no_network(stack: Stack) -> None:
    """The runtime sees only loopback: the api reaches it through Unix sockets on the run volume."""
    code, dev = run(stack.runtime, "cat", "/proc/net/dev")
    assert 0 == code
    interfaces = sorted(line.split(":")[0].strip() for line in dev.splitlines()[2:] if ":" in line)
    assert ["lo"] == interfaces


def test_builder_has_no_route_out(stack: Stack) -> None:
    """The builder reaches the api on its own network and nothing beyond it.

    Targets are only addresses of networks this test created: the api's
    address on the public network (live: the host reaches it) and the
    host's side of the builder's internal network (no address there)."""
    api_public = stack.network_info(stack.api, "public")["IPAddress"]
    api_builds = stack.network_info(stack.api, "builds")["IPAddress"]
    gateway = stack.network_info(stack.builder, "builds")["Gateway"]
    with httpx.Client(timeout=5) as c:  # the target is up: the host can reach it
        assert 200 == c.get(f"http://{api_public}:8080/healthz").status_code
    probe = (
        "import socket,sys\n"
        "host, port = sys.argv[1], int(sys.argv[2])\n"
        "try:\n"
        "    socket.create_connection((host, port), timeout=3).close()\n"
        "    print('connected')\n"
        "except OSError as exc:\n"
        "    print('failed', exc)\n"
    )
    outcomes = {}
    for host, port in ((api_builds, 8080), (api_public, 8080), (gateway or "", 8080)):
        if not host:
            continue
        code, out = run(stack.builder, "python", "-c", probe, host, str(port))
        assert 0 == code, out
        outcomes[host] = out.strip().split()[0]
    assert "connected" == outcomes[api_builds]  # control: its own network works
    assert "failed" == outcomes[api_public]
    if gateway:
        assert "failed" == outcomes[gateway]


def test_limits_are_set_on_builder_and_runtime(stack: Stack) -> None:
    """Memory, CPU and pids limits bound the builder and the runtime."""
    for c in (stack.builder, stack.runtime):
        host = c.attrs["HostConfig"]
        assert host["Memory"] > 0 and host["NanoCpus"] > 0 and host["PidsLimit"] > 0, host


@pytest.mark.parametrize("service", ["api", "builder", "runtime"])
def test_compose_created_hardened_containers(stack: Stack, service: str) -> None:
    """What Docker says about each container compose created: read-only root,
    no capabilities, no-new-privileges, the image's unprivileged user, the
    project's own networks only (none for the runtime)."""
    c = stack.container(service)
    host, config = c.attrs["HostConfig"], c.attrs["Config"]
    assert (True, ["ALL"]) == (host["ReadonlyRootfs"], host["CapDrop"])
    assert "no-new-privileges:true" in host["SecurityOpt"]
    assert "cweb" == config["User"]
    assert "unless-stopped" == host["RestartPolicy"]["Name"]
    networks = set(c.attrs["NetworkSettings"]["Networks"])
    expected = {
        "api": {f"{stack.project}_public", f"{stack.project}_builds"},
        "builder": {f"{stack.project}_builds"},
        "runtime": {"none"},
    }[service]
    assert expected == networks
    if service == "runtime":
        assert "none" == host["NetworkMode"]


def test_every_service_passes_its_compose_healthcheck(stack: Stack) -> None:
    """docker-compose.yml's healthchecks pass (the runtime's proves the agent's secret hello)."""

    def health(service: str) -> str:
        return stack.container(service).attrs["State"]["Health"]["Status"]

    for service in ("api", "builder", "runtime"):
        assert True is wait_for(lambda service=service: "healthy" == health(service), timeout=30), (service, health(service))


def test_builder_network_is_internal_and_only_the_api_is_published(stack: Stack) -> None:
    """The builds network has no route out and no host address; the api is
    published where the test asked (127.0.0.1), the others not at all."""
    builds = stack.network("builds")
    assert builds.attrs["Internal"] is True
    assert "true" == builds.attrs["Options"].get("com.docker.network.bridge.inhibit_ipv4")
    bindings = stack.api.attrs["HostConfig"]["PortBindings"]
    assert ["127.0.0.1"] == [b["HostIp"] for b in bindings["8080/tcp"]]
    assert stack.url.endswith(":" + bindings["8080/tcp"][0]["HostPort"])
    for service in ("builder", "runtime"):
        assert not stack.container(service).attrs["HostConfig"]["PortBindings"]


# ---- the compose file ------------------------------------------------------


def test_compose_file_refuses_to_start_without_api_key(compose_bin: str) -> None:
    """docker-compose.yml needs CWEB_API_KEY; by default it publishes 8080 on every address."""
    argv = [compose_bin, "-f", str(COMPOSE_FILE), "config"]
    without = subprocess.run(argv, cwd=str(ROOT), env=compose_env(), capture_output=True, text=True, timeout=60)
    assert 0 != without.returncode
    assert "CWEB_API_KEY" in without.stderr
    key = uuid.uuid4().hex
    ok = subprocess.run(argv, cwd=str(ROOT), env=compose_env(CWEB_API_KEY=key), capture_output=True, text=True, timeout=60)
    assert 0 == ok.returncode, ok.stderr
    import yaml

    config = yaml.safe_load(ok.stdout)
    services = config["services"]
    assert {"api", "builder", "runtime"} == set(services)
    assert key == services["api"]["environment"]["CWEB_API_KEY"]
    assert "none" == services["runtime"]["network_mode"]
    assert ["builds"] == list(services["builder"]["networks"])
    assert config["networks"]["builds"]["internal"] is True
    for name in ("builder", "runtime"):
        s = services[name]
        assert s["read_only"] is True
        assert ["ALL"] == s["cap_drop"]
        assert all(k in s for k in ("mem_limit", "cpus", "pids_limit", "healthcheck", "restart"))
    assert any(v.endswith(":/store:ro") or v.endswith("/store:ro") for v in map(str, _volume_specs(services["runtime"])))
    ports = services["api"]["ports"]
    assert 1 == len(ports)
    port = ports[0]
    published = port if isinstance(port, str) else f"{port.get('host_ip', '')}:{port['published']}:{port['target']}"
    assert published in ("0.0.0.0:8080:8080", "0.0.0.0:8080:8080/tcp")


def _volume_specs(service: dict) -> list[str]:
    specs = []
    for v in service.get("volumes", []):
        if isinstance(v, str):
            specs.append(v)
        else:
            specs.append(f"{v.get('source')}:{v.get('target')}{':ro' if v.get('read_only') else ''}")
    return specs
