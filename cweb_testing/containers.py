"""cweb in Docker for tests, as testcontainers modules.

    CwebContainer      one container: the embedded server (gcc, runtime agent,
                       workers) from the image that carries the compiler
    CwebComposeStack   docker-compose.yml as users run it: api, builder, runtime

Both are context managers with get_url() and the helpers of CwebClient.
testcontainers (>= 4.8) is needed: pip install 'cweb[testing]'.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from testcontainers.core.container import DockerContainer

from cweb_testing.client import CwebClient
from cweb_testing.errors import ServerStartError

# The image with gcc and the whole cweb package: `python -m api` runs embedded
# in it (cweb-api has no compiler; in compose it needs the builder service).
DEFAULT_IMAGE = "cweb-builder:dev"
API_PORT = 8080
# A tmpfs of its own: writable by any uid, gone with the container.
STATE_DIR = "/cweb"
LABEL = "org.cweb.testing"
# Seconds: the first start compiles the SDK glue; a cold image build takes minutes.
STARTUP_TIMEOUT_S = 120.0
IMAGES_TIMEOUT_S = 1500.0
COMPOSE_UP_TIMEOUT_S = 240.0
# Workers and gcc count against RLIMIT_NPROC per uid, host-wide: a uid of
# its own per container keeps it from sharing that budget with other
# containers of the same image (the compose builder runs as 10002).
UID_RANGE = (20000, 60000)


def checkout_root() -> Path | None:
    """The cweb checkout this package sits in, when it is one (scripts/images.sh)."""
    root = Path(__file__).resolve().parent.parent
    return root if (root / "scripts" / "images.sh").is_file() and (root / "docker-compose.yml").is_file() else None


_built: set[Path] = set()


def build_images(timeout: float = IMAGES_TIMEOUT_S) -> None:
    """cweb-api:dev and cweb-builder:dev from the checkout (`make images`), once per process."""
    root = checkout_root()
    if root is None:
        raise ServerStartError(
            "no image given and no cweb checkout to build one from: pass image=... "
            "(`make images` in a cweb checkout builds cweb-api:dev and cweb-builder:dev)"
        )
    if root in _built:
        return
    done = subprocess.run(["bash", str(root / "scripts" / "images.sh")], cwd=str(root),
                          capture_output=True, text=True, timeout=timeout)
    if done.returncode != 0:
        raise ServerStartError(f"scripts/images.sh failed ({done.returncode}):\n{done.stdout[-2000:]}\n{done.stderr[-4000:]}")
    _built.add(root)


def _wait_healthy(url: str, timeout: float, alive: Any, logs: Any) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if httpx.get(url + "/healthz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if not alive():
            raise ServerStartError(f"cweb stopped while starting:\n{logs()}")
        if time.monotonic() > deadline:
            raise ServerStartError(f"cweb did not answer {url}/healthz within {timeout:g} s:\n{logs()}")
        time.sleep(0.2)


class CwebContainer(CwebClient, DockerContainer):
    """The embedded cweb in one container, with a random API key.

        with CwebContainer() as cweb:
            cweb.deploy("modules/counter.c")
            httpx.get(cweb.get_url() + "/counter")

    image: None builds cweb-builder:dev from the checkout (scripts/images.sh)
    and runs it; any other image is used as it is. bind: the host address the
    port is published on (127.0.0.1; None for every address, e.g. a remote
    Docker host). env: more CWEB_* settings. The container runs with a
    read-only root, no capabilities, no-new-privileges and a uid of its own;
    builds run without bubblewrap (the container is the jail), workers
    confine themselves with Landlock. Labels: org.cweb.testing=container
    plus testcontainers' own. Other keyword arguments go to docker-py's
    containers.create, as with testcontainers' DockerContainer."""

    def __init__(
        self,
        image: str | None = None,
        *,
        api_key: str | None = None,
        env: dict[str, str] | None = None,
        bind: str | None = "127.0.0.1",
        startup_timeout: float = STARTUP_TIMEOUT_S,
        docker_client_kw: dict[str, Any] | None = None,
        **kwargs: Any,
    ) -> None:
        DockerContainer.__init__(self, image or DEFAULT_IMAGE, docker_client_kw=docker_client_kw)
        CwebClient.__init__(self)
        self._build_from_checkout = image is None
        self._url: str | None = None  # known once started; asking Docker on every call is slow
        self.api_key = secrets.token_hex(16) if api_key is None else (api_key or None)
        self.bind = bind
        self.startup_timeout = startup_timeout
        uid = secrets.randbelow(UID_RANGE[1] - UID_RANGE[0]) + UID_RANGE[0]
        self.with_command(["python", "-m", "api"])
        self.with_envs(
            HOME="/tmp", CWEB_HOST="0.0.0.0", CWEB_PORT=str(API_PORT), CWEB_DATA_DIR=f"{STATE_DIR}/data",
            CWEB_STORE_DIR=f"{STATE_DIR}/data/store", CWEB_WORKDIR=STATE_DIR, CWEB_RUN_DIR=f"{STATE_DIR}/run",
            CWEB_UNSAFE_BUILDS="1", **({"CWEB_API_KEY": self.api_key} if self.api_key else {}), **(env or {}),
        )
        self.ports[str(API_PORT)] = (bind,) if bind else None  # type: ignore[assignment]
        self.tmpfs[STATE_DIR] = "size=1g,mode=1777,exec"
        self.tmpfs["/tmp"] = "size=512m,mode=1777,exec"
        # Merged under the caller's docker-py keyword arguments (theirs win), as with_kwargs replaces them all.
        self.with_kwargs(**{"user": f"{uid}:{uid}", "read_only": True, "cap_drop": ["ALL"],
                            "security_opt": ["no-new-privileges:true"], **kwargs,
                            "labels": {LABEL: "container", **kwargs.get("labels", {})}})

    def get_url(self) -> str:
        if self._url is None:
            host = "127.0.0.1" if self.bind in ("127.0.0.1", "localhost") else self.get_container_host_ip()
            self._url = f"http://{host}:{self.get_exposed_port(API_PORT)}"
        return self._url

    @property
    def url(self) -> str:  # type: ignore[override]
        return self.get_url()

    def start(self) -> CwebContainer:
        if self._build_from_checkout:
            build_images()
        super().start()
        _wait_healthy(self.get_url(), self.startup_timeout, self._running, self._log_tail)
        return self

    def stop(self, force: bool = True, delete_volume: bool = True) -> None:
        self.close()
        self._url = None
        super().stop(force=force, delete_volume=delete_volume)

    def _running(self) -> bool:
        wrapped = self.get_wrapped_container()
        wrapped.reload()
        return wrapped.status in ("created", "running")

    def _log_tail(self, lines: int = 60) -> str:
        out, err = self.get_logs()
        return "\n".join((out + err).decode("utf-8", "replace").splitlines()[-lines:])

    def server_log(self) -> str:
        """What the server printed (the container's log)."""
        out, err = self.get_logs()
        return (out + err).decode("utf-8", "replace")

    def log_tail(self, lines: int = 60) -> str:
        return self._log_tail(lines)

    def _forget_module_data(self, name: str) -> None:
        self.exec(["rm", "-rf", f"{STATE_DIR}/data/modules-data/{name}"])

    def _forget_secrets(self) -> None:
        self.exec(["rm", "-rf", f"{STATE_DIR}/data/secrets"])


def _compose_command() -> list[str]:
    """Compose v2 (`docker compose`) when the CLI has it, else docker-compose (v1)."""
    if shutil.which("docker") and subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0:
        return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise ServerStartError("neither `docker compose` nor docker-compose is installed")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class CwebComposeStack(CwebClient):
    """docker-compose.yml (api, builder, runtime) under a project name of its
    own, the api published on 127.0.0.1 and a free port.

        with CwebComposeStack() as cweb:
            cweb.deploy("modules/counter.c")

    compose_file: None is the checkout's docker-compose.yml, with its images
    built from the checkout first (scripts/images.sh); build=False uses the
    images as they are. `down -v` removes containers, networks and volumes
    on exit, also after a failed start. testcontainers' DockerCompose is not
    used: it needs Compose v2, and Debian ships docker-compose 1.29."""

    def __init__(
        self,
        compose_file: str | os.PathLike[str] | None = None,
        *,
        api_key: str | None = None,
        project: str | None = None,
        build: bool = True,
        env: dict[str, str] | None = None,
        startup_timeout: float = COMPOSE_UP_TIMEOUT_S,
    ) -> None:
        super().__init__()
        root = checkout_root()
        if compose_file is None and root is None:
            raise ServerStartError("no compose_file given and no cweb checkout holding docker-compose.yml")
        self.compose_file = Path(compose_file) if compose_file is not None else root / "docker-compose.yml"  # type: ignore[operator]
        self._build = build and compose_file is None
        self.api_key = api_key or secrets.token_hex(16)  # the stack refuses to start without one
        self.project = project or f"cwebtc-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self.port = 0
        self.extra_env = dict(env or {})
        self.startup_timeout = startup_timeout
        self._cmd: list[str] = []

    @property
    def url(self) -> str:  # type: ignore[override]
        return f"http://127.0.0.1:{self.port}"

    def get_url(self) -> str:
        return self.url

    def _env(self) -> dict[str, str]:
        keep = ("PATH", "HOME", "DOCKER_HOST", "DOCKER_CERT_PATH", "DOCKER_TLS_VERIFY", "DOCKER_CONFIG")
        env = {k: os.environ[k] for k in keep if k in os.environ}
        return {**env, **self.extra_env, "CWEB_API_KEY": self.api_key, "CWEB_BIND": "127.0.0.1", "CWEB_PORT": str(self.port)}

    def compose(self, *args: str, timeout: float = 180.0) -> subprocess.CompletedProcess:
        """Run a compose command on this project: compose("ps"), compose("logs", "api")."""
        return subprocess.run([*self._cmd, "-p", self.project, "-f", str(self.compose_file), *args],
                              cwd=str(self.compose_file.parent), env=self._env(), capture_output=True, text=True, timeout=timeout)

    def start(self) -> CwebComposeStack:
        self._cmd = _compose_command()
        if self._build:
            build_images()
        self.port = _free_port()
        up = self.compose("up", "-d", "--no-build", timeout=self.startup_timeout)
        if up.returncode != 0:
            raise ServerStartError(f"compose up failed ({up.returncode}):\n{up.stderr[-3000:]}\n{self.log_tail()}")
        _wait_healthy(self.url, self.startup_timeout, lambda: True, self.log_tail)
        return self

    def stop(self) -> None:
        self.close()
        if self._cmd:
            self.compose("down", "-v", "--remove-orphans", "--timeout", "5")

    def __enter__(self) -> CwebComposeStack:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def server_log(self) -> str:
        return self.compose("logs", "--no-color").stdout

    def log_tail(self, lines: int = 60) -> str:
        return self.compose("logs", "--no-color", "--tail", str(lines)).stdout

    def _forget_module_data(self, name: str) -> None:
        self.compose("exec", "-T", "runtime", "rm", "-rf", f"/var/lib/cweb/modules-data/{name}")

    def _forget_secrets(self) -> None:
        self.compose("exec", "-T", "api", "rm", "-rf", "/data/secrets")
