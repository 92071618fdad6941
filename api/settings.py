"""Server settings: read once from the environment and flags, then passed in."""

from __future__ import annotations

import dataclasses
import os
import re
import socket
from dataclasses import dataclass, field

from builder.objects import S3Settings
from runtime.env import env_float, env_int, env_secret
from runtime.settings import AgentSettings

# Seconds a client has to send a request's line and headers (slowloris), and
# its whole body once the headers are in; 408 after (api/http_server.py).
HEADER_TIMEOUT_S = 15.0
BODY_TIMEOUT_S = 120.0
# Per-module secrets (api/secrets.py): bytes of one value, keys per module.
MAX_SECRET_BYTES = 64 << 10
MAX_SECRETS_PER_MODULE = 64
# Several nodes (api/cluster): seconds between a node's heartbeats, and
# without one after which a node counts as gone (its placement-one modules
# move to a live node).
NODE_HEARTBEAT_S = 2.0
NODE_TTL_S = 10.0
# Seconds between two full comparisons of what a node serves with the
# registry (the backstop behind NOTIFY and the deploy's own calls).
NODE_RECONCILE_S = 10.0
# Seconds one node-to-node call of a deploy may take (load includes fetching
# the artifact), and a prepared worker waits for its swap before it is discarded.
NODE_CALL_TIMEOUT_S = 60.0
NODE_PREPARED_TTL_S = 120.0


@dataclass
class Settings:
    host: str = "127.0.0.1"
    port: int = 8080
    data_dir: str = "./data"
    api_keys: list[str] = field(default_factory=list)
    insecure_no_auth: bool = False
    # One builder URL or several, comma-separated; each host name stands for
    # every address it resolves to (api/builder_discovery.py).
    builder_url: str = ""
    # Build slots of the embedded pool (0: one per core).
    build_slots: int = 0
    runtime_socket: str = ""
    run_dir: str = ""
    workdir: str = ""
    unsafe_builds: bool = False
    max_source_bytes: int = 1 << 20
    max_body_bytes: int = 8 << 20
    max_response_bytes: int = 16 << 20
    max_form_fields: int = 1000
    worker_threads: int = 8
    job_threads: int = 4
    ws_max_message: int = 1 << 20
    ws_queue_limit: int = 256
    ws_ping_interval: float = 20.0
    request_timeout: float = 30.0
    header_timeout: float = HEADER_TIMEOUT_S
    body_timeout: float = BODY_TIMEOUT_S
    # The embedded runtime agent's settings (worker limits, cache size, ...),
    # read here from the same environment and handed to it by agent_settings().
    runtime: AgentSettings = field(default_factory=AgentSettings)
    tls_cert: str = ""
    tls_key: str = ""
    log_json: bool = False
    store_override: str = ""
    # CORS on module routes (api/cors.py); defaults as c-web-modules.
    cors_origins: str = "*"
    cors_methods: str = "GET, POST, PUT, DELETE, OPTIONS"
    cors_headers: str = "Content-Type, Authorization"
    cors_max_age: int = 600
    cors_credentials: bool = False
    # Per-job bounds on what a job may store (api/jobs): see docs/JOBS.md#limits.
    job_max_events: int = 10_000
    job_max_event_bytes: int = 64 << 10
    job_max_events_total_bytes: int = 16 << 20
    job_max_result_bytes: int = 1 << 20
    # Seconds after a job finished before its events are deleted (0 = kept forever).
    job_event_retention_s: float = 30 * 86400.0
    # Seconds a running job's lease outlives its last renewal with a shared
    # database: how long a dead node's jobs wait before another node re-runs them.
    job_lease_s: float = 30.0
    # Several nodes (docs/CLUSTER.md): shared state in PostgreSQL when set
    # (else SQLite files in data_dir), artifacts in an S3-compatible store
    # when s3.endpoint is set (else the local store only).
    database_url: str = ""
    s3: S3Settings = field(default_factory=S3Settings)
    # This node's id (X-Cweb-Node, /_cweb/nodes; default the host name) and
    # the URL other nodes reach it at (default http://<its address>:<port>).
    node_id: str = ""
    node_url: str = ""
    node_header: bool = True
    node_heartbeat_s: float = NODE_HEARTBEAT_S
    node_ttl_s: float = NODE_TTL_S

    @classmethod
    def from_env(cls, env: dict | None = None) -> Settings:
        env = dict(os.environ if env is None else env)
        keys = [k.strip() for k in env_secret(env, "CWEB_API_KEY").split(",") if k.strip()]
        return cls(
            host=env.get("CWEB_HOST", "127.0.0.1"),
            port=env_int(env, "CWEB_PORT", 8080),
            data_dir=env.get("CWEB_DATA_DIR", "./data"),
            api_keys=keys,
            builder_url=env.get("CWEB_BUILDER_URL", ""),
            build_slots=env_int(env, "CWEB_BUILD_SLOTS", 0),
            runtime_socket=env.get("CWEB_RUNTIME_SOCKET", ""),
            run_dir=env.get("CWEB_RUN_DIR", ""),
            workdir=env.get("CWEB_WORKDIR", ""),
            unsafe_builds=env.get("CWEB_UNSAFE_BUILDS", "") == "1",
            max_source_bytes=env_int(env, "CWEB_MAX_SOURCE_BYTES", 1 << 20),
            max_body_bytes=env_int(env, "CWEB_MAX_BODY_BYTES", 8 << 20),
            max_response_bytes=env_int(env, "CWEB_MAX_RESPONSE_BYTES", 16 << 20),
            max_form_fields=env_int(env, "CWEB_MAX_FORM_FIELDS", 1000),
            worker_threads=env_int(env, "CWEB_WORKER_THREADS", 8),
            job_threads=env_int(env, "CWEB_JOB_THREADS", 4),
            ws_max_message=env_int(env, "CWEB_WS_MAX_MESSAGE", 1 << 20),
            ws_queue_limit=env_int(env, "CWEB_WS_QUEUE", 256),
            ws_ping_interval=env_float(env, "CWEB_WS_PING_INTERVAL", 20.0),
            request_timeout=env_float(env, "CWEB_REQUEST_TIMEOUT", 30.0),
            header_timeout=env_float(env, "CWEB_HEADER_TIMEOUT", HEADER_TIMEOUT_S),
            body_timeout=env_float(env, "CWEB_BODY_TIMEOUT", BODY_TIMEOUT_S),
            runtime=AgentSettings.from_env(env),
            tls_cert=env.get("CWEB_TLS_CERT", ""),
            tls_key=env.get("CWEB_TLS_KEY", ""),
            log_json=env.get("CWEB_LOG_JSON", "") == "1",
            store_override=env.get("CWEB_STORE_DIR", ""),
            cors_origins=env.get("CWEB_CORS_ORIGINS", "*"),
            cors_methods=env.get("CWEB_CORS_METHODS", "GET, POST, PUT, DELETE, OPTIONS"),
            cors_headers=env.get("CWEB_CORS_HEADERS", "Content-Type, Authorization"),
            cors_max_age=env_int(env, "CWEB_CORS_MAX_AGE", 600),
            cors_credentials=env.get("CWEB_CORS_CREDENTIALS", "") == "1",
            job_max_events=env_int(env, "CWEB_JOB_MAX_EVENTS", 10_000),
            job_max_event_bytes=env_int(env, "CWEB_JOB_MAX_EVENT_BYTES", 64 << 10),
            job_max_events_total_bytes=env_int(env, "CWEB_JOB_MAX_EVENTS_BYTES", 16 << 20),
            job_max_result_bytes=env_int(env, "CWEB_JOB_MAX_RESULT_BYTES", 1 << 20),
            job_event_retention_s=env_float(env, "CWEB_JOB_EVENT_RETENTION_S", 30 * 86400.0),
            job_lease_s=max(1.0, env_float(env, "CWEB_JOB_LEASE_S", 30.0)),
            database_url=env_secret(env, "CWEB_DATABASE_URL"),
            # The same variables python -m builder reads.
            s3=S3Settings.from_env(env),
            node_id=env.get("CWEB_NODE_ID", ""),
            node_url=env.get("CWEB_NODE_URL", ""),
            node_header=env.get("CWEB_NODE_HEADER", "1") != "0",
            node_heartbeat_s=env_float(env, "CWEB_NODE_HEARTBEAT_S", NODE_HEARTBEAT_S),
            node_ttl_s=env_float(env, "CWEB_NODE_TTL_S", NODE_TTL_S),
        )

    def resolved(self) -> Settings:
        """Fill in the paths that derive from data_dir, and the node's id and URL."""
        if not self.node_id:
            self.node_id = default_node_id(self.port)
        if not self.node_url:
            self.node_url = default_node_url(self.host, self.port, bool(self.tls_cert))
        self.data_dir = os.path.abspath(self.data_dir)
        if not self.workdir:
            self.workdir = os.getcwd()
        if not self.run_dir:
            candidate = os.path.join(self.data_dir, "run")
            # Unix socket paths are limited to 107 bytes.
            if len(candidate) + len("/agent.sock") > 100:
                import tempfile

                candidate = tempfile.mkdtemp(prefix="cweb-run-")
            self.run_dir = candidate
        return self

    @property
    def cache_bytes(self) -> int:
        """Size of the module cache the agent holds (reported by /metrics)."""
        return self.runtime.services.cache_bytes

    def agent_settings(self) -> AgentSettings:
        """What the embedded agent runs with: the runtime settings read from
        the environment, with this server's paths, TLS pair and log format."""
        return dataclasses.replace(
            self.runtime, store_dir=self.store_dir, run_dir=self.run_dir, data_dir=self.data_dir,
            workdir=self.workdir, log_json=self.log_json, secret="",
            services=dataclasses.replace(self.runtime.services, tls_cert=self.tls_cert, tls_key=self.tls_key),
        )

    @property
    def store_dir(self) -> str:
        return self.store_override or os.path.join(self.data_dir, "store")


# A node id goes into a response header and a URL-free table key: a host
# name's characters (and ':' for the port), nothing that could split a header.
NODE_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:@-]{0,127}")


def node_problem(settings: Settings) -> str | None:
    """Why CWEB_NODE_ID / CWEB_NODE_URL cannot be used, None if they can (or are defaults)."""
    if settings.node_id and not NODE_ID_PATTERN.fullmatch(settings.node_id):
        return (f"CWEB_NODE_ID {settings.node_id[:140]!r} is not a node id: 1-128 letters, digits and . _ : @ -, "
                "starting with a letter or digit")
    if settings.node_url and not re.fullmatch(r"https?://[^\s/]+", settings.node_url):
        return f"CWEB_NODE_URL {settings.node_url[:200]!r} must be http(s)://host:port, with no path"
    return None


def in_container() -> bool:
    """Docker, Podman or Kubernetes: the host name is the container's own."""
    return (os.path.exists("/.dockerenv") or os.path.exists("/run/.containerenv")
            or bool(os.environ.get("KUBERNETES_SERVICE_HOST")))


def default_node_id(port: int) -> str:
    """The host name; outside a container with the port added, since several
    nodes on one machine (tests, a trial) share the host name but not the port."""
    name = socket.gethostname()
    return name if in_container() else f"{name}:{port}"


def default_node_url(host: str, port: int, tls: bool) -> str:
    """How other nodes reach this one: its listen address, or for a wildcard
    listener the address its host name resolves to (a container's address on
    its networks)."""
    if host in ("0.0.0.0", "::", ""):
        try:
            host = socket.gethostbyname(socket.gethostname())
        except OSError:
            host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"{'https' if tls else 'http'}://{host}:{port}"
