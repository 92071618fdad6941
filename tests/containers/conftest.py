"""The container suite's stack: the images from scripts/images.sh, then the
real docker-compose.yml (the file users run) brought up with docker-compose
under a project name of its own, published on 127.0.0.1 and a free port.

This file is the one place the suite touches Docker. `docker-compose down -v`
runs in a finalizer, even when a test or the start-up fails. A run that was
killed cannot clean up: its project name carries its pid, and the next run
removes the resources of every `cwebtest-<pid>-…` project whose pid is gone
(concurrent runs on the same engine keep theirs).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from tests.conftest import ROOT, free_port

# CWEB_IMAGE_TAG (default dev) names the images scripts/images.sh builds and
# docker-compose.yml runs: concurrent checkouts on one engine keep theirs apart.
IMAGE_TAG = os.environ.get("CWEB_IMAGE_TAG", "dev")
API_IMAGE = f"cweb-api:{IMAGE_TAG}"
BUILDER_IMAGE = f"cweb-builder:{IMAGE_TAG}"
PROJECT_PREFIX = "cwebtest-"
PROJECT = f"{PROJECT_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}"
PROJECT_LABEL = "com.docker.compose.project"
SERVICE_LABEL = "com.docker.compose.service"
API_KEY = f"containers-{uuid.uuid4().hex}"
COMPOSE_FILE = ROOT / "docker-compose.yml"
# Seconds: a cold build of both images (debootstrap, apt, pip) on 2 cores.
IMAGES_TIMEOUT_S = 1500
# `up -d` returns once builder and runtime are healthy (depends_on), then the api's own start.
UP_TIMEOUT_S = 240
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
            "(installs docker.io and docker-compose and starts dockerd), as .ci/run does"
        )
    _sweep_dead_projects(client)
    yield client
    client.close()


@pytest.fixture(scope="session")
def compose_bin() -> str:
    """docker-compose (Debian's 1.29, installed by scripts/ensure-docker.sh)."""
    path = shutil.which("docker-compose")
    if path is None:
        pytest.skip("docker-compose is not installed: run scripts/ensure-docker.sh as root, as .ci/run does")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _sweep_dead_projects(client) -> None:  # type: ignore[no-untyped-def]
    """Remove containers, networks and volumes of suite projects whose test process is gone."""

    def dead(labels: dict | None) -> bool:
        project = (labels or {}).get(PROJECT_LABEL, "")
        if not project.startswith(PROJECT_PREFIX):
            return False
        pid = project[len(PROJECT_PREFIX):].split("-", 1)[0]
        return pid.isdigit() and not _pid_alive(int(pid))

    for c in client.containers.list(all=True, filters={"label": PROJECT_LABEL}):
        if dead(c.labels):
            c.remove(force=True, v=True)
    for n in client.networks.list(filters={"label": PROJECT_LABEL}):
        if dead(n.attrs.get("Labels")):
            n.remove()
    for v in client.volumes.list(filters={"label": PROJECT_LABEL}):
        if dead(v.attrs.get("Labels")):
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


def compose_env(**extra: str) -> dict[str, str]:
    """A clean environment for docker-compose: none of the caller's CWEB_* settings leak in."""
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("HOME", "/tmp")
    return {**env, "CWEB_IMAGE_TAG": IMAGE_TAG, **extra}


def compose(compose_bin: str, env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [compose_bin, "-p", PROJECT, "-f", str(COMPOSE_FILE), *args],
        cwd=str(ROOT), env=env, capture_output=True, text=True, timeout=timeout,
    )


def run(container, *argv: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    """Run argv inside a running container (docker SDK): (exit code, output)."""
    code, out = container.exec_run(list(argv))
    return code, out.decode("utf-8", "replace")


@dataclass
class Stack:
    """The compose project: api, builder and runtime, reached through the api's published port."""

    url: str
    project: str
    engine: object
    started_s: float = 0.0
    # The environment `up` ran with: another `up` (e.g. --scale) needs the same.
    env: dict | None = None

    def containers(self, service: str) -> list:  # type: ignore[type-arg]
        """Every container of a service (replicas after --scale), freshly listed."""
        return self.engine.containers.list(  # type: ignore[attr-defined]
            filters={"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={service}"]}
        )

    def container(self, service: str):  # type: ignore[no-untyped-def]
        """The one container compose created for a service, freshly inspected."""
        found = self.engine.containers.list(  # type: ignore[attr-defined]
            filters={"label": [f"{PROJECT_LABEL}={self.project}", f"{SERVICE_LABEL}={service}"]}
        )
        assert 1 == len(found), f"{service}: {found}"
        return found[0]

    @property
    def api(self):  # type: ignore[no-untyped-def]
        return self.container("api")

    @property
    def builder(self):  # type: ignore[no-untyped-def]
        return self.container("builder")

    @property
    def runtime(self):  # type: ignore[no-untyped-def]
        return self.container("runtime")

    def network(self, key: str):  # type: ignore[no-untyped-def]
        """One of the networks docker-compose.yml defines (`public`, `builds`), as created."""
        return self.engine.networks.get(f"{self.project}_{key}")  # type: ignore[attr-defined]

    def network_info(self, container, network_key: str) -> dict:  # type: ignore[no-untyped-def]
        """The container's endpoint (IPAddress, Gateway) on one of the project's networks."""
        container.reload()
        return container.attrs["NetworkSettings"]["Networks"][f"{self.project}_{network_key}"]

    def client(self, auth: bool = True) -> httpx.Client:
        headers = {"Authorization": f"Bearer {API_KEY}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=60)

    def deploy(self, source: str | bytes, filename: str = "module.c") -> httpx.Response:
        data = source.encode() if isinstance(source, str) else source
        with self.client() as c:
            return c.post("/mgnt", files={"code": (filename, data, "text/x-c")})


@pytest.fixture(scope="session")
def stack(docker_engine, images, compose_bin: str, request: pytest.FixtureRequest) -> Iterator[Stack]:  # type: ignore[no-untyped-def]
    """docker-compose.yml, up under its own project name on 127.0.0.1 and a free port."""
    port = free_port()
    env = compose_env(CWEB_API_KEY=API_KEY, CWEB_BIND="127.0.0.1", CWEB_PORT=str(port))

    def down() -> None:
        done = compose(compose_bin, env, "down", "-v", "--remove-orphans", "--timeout", "5", timeout=180)
        if done.returncode != 0:
            print(f"docker-compose down failed ({done.returncode}):\n{done.stderr[-3000:]}")

    # Registered before `up`: a stack that half-started is removed too.
    request.addfinalizer(down)
    t0 = time.monotonic()
    up = compose(compose_bin, env, "up", "-d", "--no-build", timeout=UP_TIMEOUT_S)
    if up.returncode != 0:
        logs = compose(compose_bin, env, "logs", "--no-color", "--tail", "60").stdout
        pytest.fail(f"docker-compose up failed ({up.returncode}):\n{up.stderr[-3000:]}\n{logs[-6000:]}")
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + HEALTHY_TIMEOUT_S
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            logs = compose(compose_bin, env, "logs", "--no-color", "--tail", "60").stdout
            pytest.fail(f"the api did not answer /healthz within {HEALTHY_TIMEOUT_S}s:\n{logs[-6000:]}")
        time.sleep(0.3)
    s = Stack(url=url, project=PROJECT, engine=docker_engine, started_s=time.monotonic() - t0, env=env)
    print(f"compose project {PROJECT} healthy in {s.started_s:.1f}s")
    yield s
    # On failure, the services' logs are the evidence: print them (pytest shows them with the failure).
    if request.session.testsfailed:
        print(compose(compose_bin, env, "logs", "--no-color", "--tail", "80").stdout[-12000:])


def dumps(obj: object) -> str:
    return json.dumps(obj, indent=1, sort_keys=True)
