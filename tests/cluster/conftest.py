"""The cluster suite's stack: the real cluster/stack.yml, deployed by the real
scripts/cluster.sh (what `make cluster-up` runs) on a single-node swarm,
under a stack name of its own and a free port.

One stack per session: 2 nodes, 2 builders, PostgreSQL, the object store and
the proxy. `scripts/cluster.sh down` runs in a finalizer, also after a failed
start: it removes the stack, its volumes and secrets, and leaves the swarm
only when this session's `up` created it (the record is in the session's
own CWEB_CLUSTER_DIR). A run that was killed cannot clean up: its stack name
carries its pid, and the next run removes every `cwebtest-<pid>-…` stack
whose pid is gone.
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, free_port
from tests.containers.conftest import _pid_alive, docker_client

IMAGE_TAG = os.environ.get("CWEB_IMAGE_TAG", "dev")
STACK_PREFIX = "cwebtest-"
STACK = f"{STACK_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:6]}"
STACK_LABEL = "com.docker.stack.namespace"
SERVICE_LABEL = "com.docker.swarm.service.name"
SCRIPT = ROOT / "scripts" / "cluster.sh"
# Seconds: a cold build of every image (debootstrap, apt, pip) on 2 cores.
IMAGES_TIMEOUT_S = 1800
# Seconds for `cluster.sh up` to see every replica running and /healthz 200 through the proxy.
UP_TIMEOUT_S = 300
NODES = 2
BUILDERS = 2
# Seconds: a killed node's jobs run again elsewhere about one lease later.
JOB_LEASE_S = 10


@dataclass
class Cluster:
    """The deployed stack, reached only through the proxy's published port."""

    url: str
    stack: str
    api_key: str
    env: dict[str, str]
    engine: object
    started_s: float = 0.0
    node_ids: set[str] = field(default_factory=set)

    def service(self, name: str) -> str:
        return f"{self.stack}_{name}"

    def containers(self, service: str) -> list:  # type: ignore[type-arg]
        """The running containers of one service (freshly listed)."""
        return self.engine.containers.list(  # type: ignore[attr-defined]
            filters={"label": [f"{STACK_LABEL}={self.stack}", f"{SERVICE_LABEL}={self.service(service)}"]}
        )

    def client(self, auth: bool = True, timeout: float = 120.0) -> httpx.Client:
        headers = {"Authorization": f"Bearer {self.api_key}"} if auth else {}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def deploy(self, source: str | bytes, filename: str = "module.c", **params: str) -> httpx.Response:
        data = source.encode() if isinstance(source, str) else source
        with self.client() as c:
            return c.post("/mgnt", params=params, files={"code": (filename, data, "text/x-c")})

    def script(self, *args: str, timeout: float = UP_TIMEOUT_S + 60, **extra: str) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", str(SCRIPT), *args], cwd=str(ROOT), env={**self.env, **extra},
                              capture_output=True, text=True, timeout=timeout)

    def docker(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["docker", *args], env=self.env, capture_output=True, text=True, timeout=timeout)

    def logs(self, service: str, tail: int = 60) -> str:
        done = self.docker("service", "logs", "--no-trunc", "--tail", str(tail), self.service(service))
        return (done.stdout + done.stderr)[-8000:]


def _sweep_dead_stacks(env: dict[str, str]) -> None:
    """Remove suite stacks whose test process is gone (a killed run)."""
    done = subprocess.run(["docker", "stack", "ls", "--format", "{{.Name}}"], env=env, capture_output=True, text=True, timeout=60)
    for name in done.stdout.split():
        if not name.startswith(STACK_PREFIX):
            continue
        pid = name[len(STACK_PREFIX):].split("-", 1)[0]
        if pid.isdigit() and not _pid_alive(int(pid)):
            subprocess.run(["docker", "stack", "rm", name], env=env, capture_output=True, timeout=120)


def _env(cluster_dir: Path, port: int) -> dict[str, str]:
    """A clean environment for cluster.sh: none of the caller's CWEB_* settings leak in."""
    keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONFIG")
    env = {k: os.environ[k] for k in keep if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("HOME", "/tmp")
    return {**env, "CWEB_STACK": STACK, "CWEB_PORT": str(port), "CWEB_IMAGE_TAG": IMAGE_TAG,
            "CWEB_CLUSTER_DIR": str(cluster_dir), "CWEB_NODES": str(NODES), "CWEB_BUILDERS": str(BUILDERS),
            "CWEB_CLUSTER_TIMEOUT": str(UP_TIMEOUT_S), "CWEB_JOB_LEASE_S": str(JOB_LEASE_S)}


def _attached(engine) -> Cluster | None:  # type: ignore[no-untyped-def]
    """CWEB_TEST_CLUSTER=DIR:STACK:PORT: a stack `scripts/cluster.sh up` already
    runs (CWEB_CLUSTER_DIR=DIR, CWEB_STACK=STACK, CWEB_PORT=PORT), used as it
    is and left running: quicker rounds while working on the suite."""
    spec = os.environ.get("CWEB_TEST_CLUSTER", "")
    if not spec:
        return None
    directory, stack, port = spec.rsplit(":", 2)
    env = {**_env(Path(directory), int(port)), "CWEB_STACK": stack}
    key = (Path(directory) / "secrets" / stack / "api_key").read_text().strip()
    return Cluster(url=f"http://127.0.0.1:{port}", stack=stack, api_key=key, env=env, engine=engine)


@pytest.fixture(scope="session")
def cluster(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> Iterator[Cluster]:
    engine = docker_client()
    if engine is None:
        pytest.skip("no Docker engine reachable (docker info fails): run scripts/ensure-docker.sh as root, as .ci/run does")
    attached = _attached(engine)
    if attached is not None:
        yield attached
        return
    port = free_port()
    env = _env(tmp_path_factory.mktemp("cluster"), port)
    _sweep_dead_stacks(env)
    if os.environ.get("CWEB_TEST_PREBUILT_IMAGES") != "1":
        built = subprocess.run(["bash", str(ROOT / "scripts" / "images.sh")], cwd=str(ROOT), env=env,
                               capture_output=True, text=True, timeout=IMAGES_TIMEOUT_S)
        if built.returncode != 0:
            pytest.fail(f"scripts/images.sh failed ({built.returncode}):\n{built.stdout[-3000:]}\n{built.stderr[-5000:]}")
    c = Cluster(url=f"http://127.0.0.1:{port}", stack=STACK, api_key="", env=env, engine=engine)

    def down() -> None:
        done = c.script("down", timeout=300, CWEB_CLUSTER_PURGE="1")
        if done.returncode != 0:
            print(f"cluster.sh down failed ({done.returncode}):\n{done.stderr[-3000:]}")
        engine.close()

    # Registered before `up`: a stack that half-started is removed too.
    request.addfinalizer(down)
    t0 = time.monotonic()
    up = c.script("up", CWEB_CLUSTER_BUILD="0")
    if up.returncode != 0:
        pytest.fail(f"cluster.sh up failed ({up.returncode}):\n{up.stderr[-12000:]}")
    c.started_s = time.monotonic() - t0
    c.api_key = (Path(env["CWEB_CLUSTER_DIR"]) / "secrets" / STACK / "api_key").read_text().strip()
    print(f"stack {STACK} healthy in {c.started_s:.1f}s on {c.url}")
    yield c
    if request.session.testsfailed:
        for service in ("proxy", "node", "builder"):
            print(f"--- {service}\n{c.logs(service)}")


class Load:
    """GETs through the proxy from a few threads until stopped: every outcome counted."""

    def __init__(self, url: str, path: str, threads: int = 4, body: str | None = None) -> None:
        self.url, self.path, self.body = url, path, body
        self.ok = 0
        self.failed: list[str] = []
        # Answers per node (X-Cweb-Node).
        self.nodes: Counter[str] = Counter()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def _run(self) -> None:
        with httpx.Client(base_url=self.url, timeout=10) as c:
            while not self._stop.is_set():
                try:
                    r = c.get(self.path)
                    good = r.status_code == 200 and (self.body is None or r.text == self.body)
                    outcome = None if good else f"{r.status_code} {r.headers.get('x-cweb-node')} {r.text[:100]}"
                except httpx.HTTPError as exc:
                    outcome = f"{type(exc).__name__} {exc}"
                with self._lock:
                    if outcome is None:
                        self.ok += 1
                        self.nodes[r.headers.get("x-cweb-node", "")] += 1
                    else:
                        self.failed.append(outcome)

    def __enter__(self) -> Load:
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=15)

    @property
    def total(self) -> int:
        return self.ok + len(self.failed)


def wait_nodes_healthy(cluster: Cluster, count: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        running = cluster.containers("node")
        healthy = [c for c in running if c.attrs.get("State", {}).get("Health", {}).get("Status") == "healthy"]
        if len(healthy) == count:
            return
        time.sleep(1)
    raise AssertionError(f"{count} healthy nodes not reached in {timeout}s:\n{cluster.logs('node')}")
