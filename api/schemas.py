"""Pydantic models of the control plane's request and response bodies.

They document the wire shapes in /openapi.json (api/openapi.py attaches
them to the operations) and let tests check real answers against what the
docs promise. Handlers keep returning plain dicts serialized by orjson: no
model is instantiated per request, and nothing here is imported by the
module fast path (api/dispatch.py).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

HASH = "f91ad9477057f2a2381cd6e521713b70fb071adbaed3222ea89cf79b3f1ef827"
SOURCE_HASH = "15894cc8a6d0bcf587c1ddd8c0079a8b6534326ac5f73b76f0466ae81804cf22"
BUILD_KEY = "14125d09b82824cb1d0cce99a83a95b8eb67ea98639582b29c9b3bcead259c89"
JOB_UUID = "6f1c1c1e-2f7a-4f4e-9a55-3f2d3c1b9e01"


class Model(BaseModel):
    # Answers may grow fields; the docs list the ones clients can rely on.
    model_config = ConfigDict(extra="allow")


# ---- errors -------------------------------------------------------------------


class Diagnostic(Model):
    """One compiler message, parsed from gcc's output."""

    file: str = Field(examples=["hello.c"])
    line: int = Field(examples=[2])
    column: int = Field(examples=[9])
    severity: str = Field(description="error, warning, note or fatal error", examples=["error"])
    message: str = Field(examples=["expected expression before ';' token"])
    excerpt: list[str] | None = Field(None, description="gcc's source line, caret and fix-it hint under the message",
                                      examples=[["    2 | int x = ;", "      |         ^"]])


class Error(Model):
    """Every error of the control plane: a stable code and a human message."""

    error: str = Field(description="Stable machine-readable code", examples=["compile_failed"])
    message: str = Field(description="What went wrong, for humans")
    diagnostics: list[Diagnostic] | None = Field(None, description="Compile errors only: the parsed compiler messages")
    log: str | None = Field(None, description="Compile errors only: the raw compiler output")
    signal: str | None = Field(None, description="onload_crashed, load_crashed: the signal the module died of", examples=["SIGSEGV"])
    output: list[str] | None = Field(None, description="onload_crashed, load_crashed: what the module printed before, "
                                                       "its crash report (signal, backtrace) last")


# ---- deploy -------------------------------------------------------------------


class DeployUpload(BaseModel):
    """POST /mgnt: the C source as a multipart file field named `code`."""

    code: bytes = Field(json_schema_extra={"format": "binary"}, description="The module's C source file")


class Route(Model):
    method: str = Field(examples=["GET"])
    path: str = Field(description="Exact path, or a regular expression matched in full", examples=["/hello"])


class SocketPath(Model):
    path: str = Field(examples=["/chat/ws"])


class JobName(Model):
    name: str = Field(examples=["resize"])


class ModuleInfo(Model):
    """An active module: the exact artifact serving it and what it exports."""

    name: str = Field(examples=["hello"])
    author: str = Field(examples=["me"])
    module_hash: str = Field(description="sha256 of the artifact (.so) bytes", examples=[HASH])
    source_sha256: str = Field(description="sha256 of the uploaded source", examples=[SOURCE_HASH])
    build_key: str = Field(description="hash of every build input; the action cache key", examples=[BUILD_KEY])
    routes: list[Route]
    websockets: list[SocketPath]
    jobs: list[JobName]
    deployed_at: float = Field(description="Unix time of activation")
    state: str = Field(description="active, restarting or quarantined; forwarded: another node serves it (placement one)",
                       examples=["active"])
    connections: int | None = Field(None, description="Open WebSocket connections (listings only)")
    node: str | None = Field(None, description="forwarded: the node that serves it (docs/CLUSTER.md)")


class NodeOutcome(Model):
    """What one node of a cluster did for a deploy, rollback or removal (docs/CLUSTER.md)."""

    node: str = Field(examples=["node-2"])
    outcome: str = Field(description="swapped, unchanged, removed, forwarded (placement one), failed (keeps its previous "
                                     "version) or unreachable", examples=["swapped"])
    ms: float = Field(description="Milliseconds that node took (prepare_ms + swap_ms), as seen by the node that drove the deploy")
    prepare_ms: float | None = Field(None, description="Loading the artifact in a new worker (with an object store: fetching it first)")
    swap_ms: float | None = Field(None, description="Making it the active version")
    module_hash: str | None = None
    forwarded_to: str | None = Field(None, description="forwarded: the node that serves the module")
    error: str | None = Field(None, description="Why that node failed")
    code: str | None = Field(None, description="The failure's error code")


class BuildInfo(Model):
    """Where and how long the build of a deploy ran (GET /builds/{id} has the rest)."""

    id: str = Field(examples=["3f2a9c1d0b7e4a55"])
    builder: str | None = Field(description="The builder that compiled it; 'cache' for an action-cache hit", examples=["local"])
    queue_ms: float = Field(description="Milliseconds queued before a builder took it")
    compile_ms: float = Field(description="Milliseconds on the builder")
    joined: bool = Field(description="This deploy shared another deploy's compile of the same build key")


class DeployResult(ModuleInfo):
    """POST /mgnt: the module now active, how it was built and how long it took."""

    cache_hit: bool = Field(description="The artifact came from the action cache: nothing was compiled")
    build_ms: float
    build: BuildInfo | None = None
    warnings: list[Diagnostic] = Field(description="Compiler warnings (never fatal)")
    noop: bool = Field(description="This artifact was already active; nothing changed")
    previous_hash: str | None = Field(description="The artifact this deploy replaced, if any")
    phases: dict[str, float] = Field(description="Milliseconds per deploy phase: load_ms (dlopen in a fresh worker), start_ms (onload), "
                                     "swap_ms (route table swap); empty for a no-op", examples=[{"load_ms": 41.2, "start_ms": 3.1, "swap_ms": 0.4}])
    deploy_ms: float
    nodes: list[NodeOutcome] | None = Field(None, description="Several nodes: what each did (absent on a single server)")
    placement: Literal["all", "one"] | None = Field(None, description="Several nodes: on every node, or on one that the others "
                                                                   "forward to")


class CheckResult(Model):
    """POST /mgnt?check=1: a dry run. The source compiles, the artifact loads
    in a worker, its declaration is valid and its routes conflict with no
    active module; onload did not run and nothing was activated."""

    ok: Literal[True]
    name: str = Field(examples=["hello"])
    routes: list[Route]
    websockets: list[SocketPath]
    jobs: list[JobName]
    module_hash: str = Field(examples=[HASH])
    source_sha256: str
    build_key: str
    cache_hit: bool
    build_ms: float
    warnings: list[Diagnostic]
    build: BuildInfo | None = None


class RollbackRequest(BaseModel):
    module_hash: str = Field(description="An artifact earlier deployed under this name (64 hex digits)", examples=[HASH])


class RollbackResult(ModuleInfo):
    action: Literal["rollback"]
    cache_hit: bool
    noop: bool
    previous_hash: str | None
    phases: dict[str, float] = Field(description="Milliseconds per phase, as for a deploy (load_ms, start_ms, swap_ms); empty for a no-op",
                                     examples=[{"load_ms": 41.2, "start_ms": 3.1, "swap_ms": 0.4}])
    deploy_ms: float
    nodes: list[NodeOutcome] | None = Field(None, description="Several nodes: what each did")
    placement: Literal["all", "one"] | None = None


class ModuleList(Model):
    modules: list[ModuleInfo]


class Removed(Model):
    name: str = Field(examples=["hello"])
    removed: Literal[True]
    nodes: list[NodeOutcome] | None = Field(None, description="Several nodes: what each did")


class Version(Model):
    module_hash: str = Field(examples=[HASH])
    source_sha256: str
    deployed_at: float = Field(description="First activation of this artifact under the name")
    last_deployed_at: float = Field(description="Latest activation")
    active: bool


class VersionList(Model):
    name: str
    versions: list[Version] = Field(description="Most recently deployed first")


class Artifact(Model):
    """Provenance of one artifact: source, build inputs, deploys and jobs."""

    module_hash: str
    name: str | None
    author: str
    source_sha256: str | None
    source_name: str | None
    build_key: str | None
    compiler: Any = Field(description="Compiler identity and version used for the build")
    flags: Any
    sdk_digest: str | None
    abi_version: int | None
    built_at: float | None
    size: int | None = Field(description="Artifact size in bytes")
    routes: list[Route]
    websockets: list[SocketPath]
    jobs: list[JobName]
    first_deployed_at: float | None
    deploys: list[dict[str, Any]]
    provenance: dict[str, Any] | None = Field(None, description="The builder's signed statement (builder_id, key_id, build_key, "
                                              "toolchain_digest, source_sha256, module_hash) and whether it verifies "
                                              "under a trusted builder key, as the runtime checks before loading")
    manifest: dict[str, Any]
    job_runs: list[dict[str, Any]] | None = None


class LogLine(Model):
    """One line a module printed (stdout or stderr of its worker)."""

    ts: float = Field(description="Unix time the line was read")
    stream: Literal["stdout", "stderr"]
    module_hash: str = Field(description="The version that printed it", examples=[HASH])
    line: str = Field(examples=["hello from the module"])


class LogTail(Model):
    name: str
    lines: list[LogLine] = Field(description="Oldest first, across every version of the module")


class Health(Model):
    status: Literal["ok"]
    modules: int = Field(description="Active modules")
    builds: str = Field(description="How builds run: bubblewrap, unsafe or remote", examples=["bubblewrap"])
    workers: str = Field(description="How workers are confined: bubblewrap, landlock, none (unconfined) or unknown",
                         examples=["bubblewrap"])


# ---- jobs ---------------------------------------------------------------------


class JobSubmit(BaseModel):
    """POST /jobs (an `Idempotency-Key` header makes a retry return the same job)."""

    module: str | None = Field(None, description="Without it: the one active module that declares `job` (409 when several do)",
                               examples=["job_sum"])
    job: str = Field(examples=["sum"])
    payload: Any = Field({}, description="Handed to the job as JSON text", examples=[{"n": 100}])
    max_attempts: int = Field(1, ge=1, description="Attempts before the job fails")
    timeout_s: float = Field(600.0, description="Per-attempt time limit")
    priority: int = Field(0, description="Higher runs first")
    delay_s: float = Field(0.0, description="Do not start before this many seconds from now")
    run_after: float | None = Field(None, description="Do not start before this Unix time")


class JobCreated(Model):
    job_uuid: str = Field(examples=[JOB_UUID])
    state: str = Field(examples=["pending"])
    module_hash: str = Field(description="The artifact the job is pinned to", examples=[HASH])
    created: bool = Field(description="False when an Idempotency-Key matched an existing job")


JobState = Literal["pending", "running", "done", "failed", "canceled"]


class JobSummary(Model):
    job_uuid: str = Field(examples=[JOB_UUID])
    state: JobState
    module: str
    job: str
    module_hash: str
    created_at: int = Field(description="Unix time, whole seconds")
    updated_at: int = Field(description="Unix time, whole seconds")
    attempts: int


class JobList(Model):
    jobs: list[JobSummary] = Field(description="Newest first")
    next_cursor: int | None = Field(description="Pass as cursor= for the next page; null on the last page")


class Job(JobSummary):
    result: Any = Field(description="What the job set with set_result (JSON), once done")
    error: str | None = Field(description="What the job set with set_error, once failed")
    max_attempts: int
    priority: int
    run_after: int | None = Field(description="Unix time, whole seconds")
    timeout_s: float


class JobCancel(Model):
    job_uuid: str
    state: JobState


class JobEvent(Model):
    job_uuid: str
    event_id: int = Field(description="Increasing per job; resume with since_event_id")
    ts: int = Field(description="Unix time, whole seconds")
    ts_ms: int = Field(description="The same instant in milliseconds")
    type: str = Field(description="created, started, progress, truncated, a module's own type, done, failed or canceled",
                      examples=["progress"])
    data: Any


class JobEventList(Model):
    events: list[JobEvent]
    next_since_event_id: int | None = Field(description="Pass as since_event_id for the next page; null on the last page")


# ---- observability ------------------------------------------------------------


class Build(Model):
    file: str = Field(examples=["hello.c"])
    outcome: Literal["compiled", "cache_hit", "joined", "failed", "rejected"] = Field(
        description="failed: did not compile; rejected: compiled, then refused by the deploy (route conflict, "
                    "reserved path, invalid regex, missing config, onload crash...), `error` says why; "
                    "joined: shared another deploy's compile of the same source")
    build_id: str | None = Field(None, description="The farm's build (GET /builds/{id})")
    at: float
    module_hash: str | None = None
    build_ms: float | None = None
    diagnostics: list[Diagnostic] = Field(description="Warnings of a success, errors of a failure")
    error: str | None = None
    message: str | None = None
    check: bool | None = Field(None, description="A dry run (cweb check, POST /mgnt?check=1): nothing was activated")
    built: str | None = Field(None, description="rejected only: how the artifact was built (compiled or cache_hit)")


class BuildList(Model):
    builds: list[Build] = Field(description="Newest first, the last 50")


class Worker(Model):
    worker_id: int
    pid: int
    hash: str = Field(description="The artifact the worker hosts")
    state: str = Field(description="The process: loading or running", examples=["running"])
    module: str | None
    version_state: str | None = Field(description="The module version: active, restarting, retiring, pinned, quarantined")
    restarts: int = Field(description="Crashes of this version in the last minute")


class WorkerList(Model):
    workers: list[Worker]
    sandbox: str = Field(description="How workers are confined: bubblewrap, landlock or none", examples=["bubblewrap"])


class Node(Model):
    """One node of a cluster (GET /_cweb/nodes)."""

    node: str = Field(examples=["node-1"])
    url: str = Field(description="How the other nodes reach it (CWEB_NODE_URL)", examples=["http://10.0.1.5:8080"])
    started: float = Field(description="Unix time it (last) started")
    last_seen: float = Field(description="Unix time of its last heartbeat (the database's clock)")
    heartbeat_age_s: float
    live: bool = Field(description="Its heartbeat is younger than CWEB_NODE_TTL_S")
    self: bool = Field(description="The node that answered")
    modules: dict[str, str] = Field(description="module -> the hash it serves", examples=[{"hello": HASH}])
    forwards: dict[str, str] = Field(description="placement-one module -> the node it forwards to", examples=[{"chat": "node-2"}])


class NodeList(Model):
    node: str = Field(description="The node that answered", examples=["node-1"])
    ttl_s: float | None = Field(description="Seconds without a heartbeat before a node counts as gone; null without a cluster")
    nodes: list[Node]
