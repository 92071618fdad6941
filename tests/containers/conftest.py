"""The container suite's stack: images from scripts/images.sh, then builder,
runtime and api started with testcontainers the way docker-compose.yml starts
them (same networks, volumes, users, read-only roots, limits).

This file is the one place the suite touches Docker. Everything it creates is
labelled `org.cweb.test=<run id>` and removed in finalizers, even when a test
or the start-up fails; leftovers of a run that was killed are swept by label
at the start of the next.
"""

from __future__ import annotations

import os

# testcontainers reads its configuration at import time.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")

import json  # noqa: E402
import subprocess  # noqa: E402
import time  # noqa: E402
import uuid  # noqa: E402
from collections.abc import Callable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

import httpx  # noqa: E402
import pytest  # noqa: E402

from tests.conftest import ROOT, free_port  # noqa: E402

API_IMAGE = "cweb-api:dev"
BUILDER_IMAGE = "cweb-builder:dev"
LABEL = "org.cweb.test"
RUN_ID = uuid.uuid4().hex[:10]
API_KEY = f"containers-{uuid.uuid4().hex}"
# Seconds: a cold build of both images (debootstrap, apt, pip) on 2 cores.
IMAGES_TIMEOUT_S = 1500
HEALTHY_TIMEOUT_S = 90


def docker_client():  # type: ignore[no-untyped-def]
    """A docker SDK client, or None when no engine answers."""
    try:
        import docker
    except ImportError:
        return None
    try:
        client = docker.from_env(timeout=30)
        client.ping()
    except Exception:  # noqa: BLE001 - any failure means: no engine here
        return None
    return client


@pytest.fixture(scope="session")
def docker_engine():  # type: ignore[no-untyped-def]
    """The Docker engine; the suite skips, with the reason, where there is none."""
    client = docker_client()
    if client is None:
        pytest.skip(
            "no Docker engine reachable (docker info fails): run scripts/ensure-docker.sh as root "
            "(installs docker.io and starts dockerd), as .ci/run does"
        )
    _sweep(client)
    yield client
    _sweep(client, RUN_ID)
    client.close()


def _sweep(client, run_id: str | None = None) -> None:  # type: ignore[no-untyped-def]
    """Remove containers, networks and volumes this suite labelled (one run, or all)."""
    filters = {"label": f"{LABEL}={run_id}" if run_id else LABEL}
    for c in client.containers.list(all=True, filters=filters):
        c.remove(force=True, v=True)
    for n in client.networks.list(filters=filters):
        n.remove()
    for v in client.volumes.list(filters=filters):
        v.remove(force=True)


@pytest.fixture(scope="session")
def images(docker_engine) -> None:  # type: ignore[no-untyped-def]
    """Both images built from this checkout by scripts/images.sh (the `make images` path).

    CWEB_TEST_PREBUILT_IMAGES=1 uses cweb-api:dev and cweb-builder:dev as they
    are (e.g. right after `make images`); CI never sets it."""
    if os.environ.get("CWEB_TEST_PREBUILT_IMAGES") == "1":
        for image in (API_IMAGE, BUILDER_IMAGE):
            docker_engine.images.get(image)
        return
    proc = subprocess.run(
        ["bash", str(ROOT / "scripts" / "images.sh")],
        cwd=str(ROOT), capture_output=True, text=True, timeout=IMAGES_TIMEOUT_S,
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/images.sh failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")


def run(container, *argv: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run argv inside a started testcontainers container: (exit code, output)."""
    code, out = container.get_wrapped_container().exec_run(list(argv))
    return code, out.decode("utf-8", "replace")


def _wait(what: str, check: Callable[[], bool], timeout: float, logs: Callable[[], str]) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception:  # noqa: BLE001 - not up yet
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{what} did not become healthy within {timeout:g}s:\n{logs()[-4000:]}")


def _logs(container) -> str:  # type: ignore[no-untyped-def]
    try:
        return container.get_wrapped_container().logs().decode("utf-8", "replace")
    except Exception as exc:  # noqa: BLE001
        return f"(no logs: {exc})"


# The agent answers only a client that proves the secret it wrote next to its socket.
AGENT_PING = "from runtime.agent import main; main(['--check', '--socket', '/run/cweb/agent.sock'])"
BUILDER_HEALTH = (
    "import sys,urllib.request; sys.exit(urllib.request.urlopen('http://127.0.0.1:8081/healthz', timeout=2).status != 200)"
)


@dataclass
class Stack:
    """A running api + builder + runtime, reached through the api's published port."""

    url: str
    api: object
    builder: object
    runtime: object
    networks: dict[str, object] = field(default_factory=dict)
    started_s: float = 0.0

    def client(self, auth: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def deploy(self, source: str | bytes, filename: str = "module.c") -> httpx.Response:
        data = source.encode() if isinstance(source, str) else source
        with self.client() as c:
            return c.post("/mgnt", files={"code": (filename, data, "text/x-c")})

    def network_info(self, container, network_key: str) -> dict:  # type: ignore[no-untyped-def]
        """The container's endpoint (IPAddress, Gateway) on one of our networks."""
        wrapped = container.get_wrapped_container()
        wrapped.reload()
        name = self.networks[network_key].name  # type: ignore[attr-defined]
        return wrapped.attrs["NetworkSettings"]["Networks"][name]


def _hardened(container, labels: dict[str, str], tmpfs_size: str, **extra: object):  # type: ignore[no-untyped-def]
    """What every service gets: read-only root, tmpfs /tmp, no capabilities, no-new-privileges."""
    container.tmpfs["/tmp"] = f"rw,size={tmpfs_size},mode=1777"
    return container.with_kwargs(
        read_only=True,
        cap_drop=["ALL"],
        security_opt=["no-new-privileges:true"],
        labels=labels,
        **extra,
    )


@pytest.fixture(scope="module")
def stack(docker_engine, images, request: pytest.FixtureRequest) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """builder, runtime and api as in docker-compose.yml, on private networks and volumes."""
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

    labels = {LABEL: RUN_ID}
    prefix = f"cweb-test-{RUN_ID}"
    created: list[Callable[[], None]] = []

    def cleanup() -> None:
        for undo in reversed(created):
            try:
                undo()
            except Exception:  # noqa: BLE001 - keep removing the rest
                pass
        created.clear()

    request.addfinalizer(cleanup)
    t0 = time.monotonic()

    volumes = {}
    for name in ("store", "data", "run", "modules"):
        vol = docker_engine.volumes.create(name=f"{prefix}-{name}", labels=labels)
        created.append(lambda vol=vol: vol.remove(force=True))
        volumes[name] = vol.name

    public = Network(docker_network_kw={"labels": labels})
    builds = Network(
        docker_network_kw={
            "labels": labels,
            "internal": True,
            "options": {"com.docker.network.bridge.inhibit_ipv4": "true"},
        }
    )
    for net in (public, builds):
        net.create()
        created.append(net.remove)

    builder = (
        DockerContainer(BUILDER_IMAGE)
        .with_name(f"{prefix}-builder")
        .with_network(builds)
        .with_network_aliases("builder")
        .with_volume_mapping(volumes["store"], "/store", "rw")
        .with_envs(CWEB_BUILDER_HOST="0.0.0.0", CWEB_BUILDER_PORT="8081", CWEB_STORE_DIR="/store", CWEB_UNSAFE_BUILDS="1")
        .with_command(["python", "-m", "builder"])
    )
    _hardened(builder, labels, "512m", mem_limit="2g", memswap_limit="2g", nano_cpus=1_500_000_000, pids_limit=256)
    created.append(lambda: builder.stop())
    builder.start()
    _wait("builder", lambda: run(builder, "python", "-c", BUILDER_HEALTH)[0] == 0, HEALTHY_TIMEOUT_S, lambda: _logs(builder))

    runtime = (
        DockerContainer(API_IMAGE)
        .with_name(f"{prefix}-runtime")
        .with_volume_mapping(volumes["store"], "/store", "ro")
        .with_volume_mapping(volumes["run"], "/run/cweb", "rw")
        .with_volume_mapping(volumes["modules"], "/var/lib/cweb", "rw")
        .with_command(["python", "-m", "runtime", "--socket", "/run/cweb/agent.sock", "--store", "/store",
                       "--run-dir", "/run/cweb", "--data-dir", "/var/lib/cweb", "--workdir", "/var/lib/cweb"])
    )
    _hardened(runtime, labels, "64m", network=None, network_mode="none", mem_limit="2g", memswap_limit="2g",
              nano_cpus=1_500_000_000, pids_limit=512)
    created.append(lambda: runtime.stop())
    runtime.start()
    _wait("runtime", lambda: run(runtime, "python", "-c", AGENT_PING)[0] == 0, HEALTHY_TIMEOUT_S, lambda: _logs(runtime))

    port = free_port()
    api = (
        DockerContainer(API_IMAGE)
        .with_name(f"{prefix}-api")
        .with_network(public)
        .with_volume_mapping(volumes["data"], "/data", "rw")
        .with_volume_mapping(volumes["run"], "/run/cweb", "rw")
        .with_volume_mapping(volumes["store"], "/store", "ro")
        .with_envs(
            CWEB_API_KEY=API_KEY, CWEB_STORE_DIR="/store", CWEB_HOST="0.0.0.0", CWEB_PORT="8080", CWEB_DATA_DIR="/data",
            CWEB_RUN_DIR="/run/cweb", CWEB_RUNTIME_SOCKET="/run/cweb/agent.sock", CWEB_BUILDER_URL="http://builder:8081",
        )
        .with_command(["python", "-m", "api"])
    )
    _hardened(api, labels, "64m")
    # Published on loopback only (docker-compose.yml publishes on every address).
    api.ports["8080/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    created.append(lambda: api.stop())
    api.start()
    # Second network: the api reaches the builder; nothing else on it but the builder.
    builds.connect(api.get_container_id())
    url = f"http://127.0.0.1:{port}"
    _wait("api", lambda: httpx.get(url + "/healthz", timeout=2).status_code == 200, HEALTHY_TIMEOUT_S, lambda: _logs(api))

    s = Stack(url=url, api=api, builder=builder, runtime=runtime, networks={"public": public, "builds": builds})
    s.started_s = time.monotonic() - t0
    yield s
    # On failure, the services' logs are the evidence: print them (pytest shows them with the failure).
    if request.session.testsfailed:
        for name, c in (("api", api), ("builder", builder), ("runtime", runtime)):
            print(f"----- {name} logs -----\n{_logs(c)[-4000:]}")


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
