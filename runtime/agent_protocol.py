"""The agent's JSON-line protocol: every operation the api may ask of the
runtime agent and every event the agent sends, with their fields, in one
table that both sides use (the client, runtime/client.AgentClient,
builds its requests with request(); the server, runtime/agent.Agent,
dispatches through OPS and builds its events with event()).

Transport: runtime/channel.py, one JSON object per line, descriptors beside
a line by SCM_RIGHTS. A request is {"id": N, "op": NAME, **fields}; it gets
exactly one answer with the same id: {"id": N, "ok": true, **reply} or
{"id": N, "ok": false, "error": CODE, "message": TEXT}. Unsolicited events
carry "event": NAME instead of an id.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Op:
    name: str
    fields: frozenset[str]      # what a request may carry besides id and op
    reply: tuple[str, ...]      # what a successful answer carries besides id and ok
    doc: str
    fds: bool = False           # the answer comes with descriptors
    handshake: bool = False     # answered by the connection itself, never dispatched


def _op(name: str, fields: tuple[str, ...], reply: tuple[str, ...], doc: str, **kw: bool) -> Op:
    return Op(name, frozenset(fields), reply, doc, **kw)


OPS: dict[str, Op] = {
    op.name: op
    for op in (
        _op("hello", ("secret",), (),
            "First line of a connection to the agent's socket (compose layout): proves the secret in "
            "<run dir>/agent.secret or CWEB_RUNTIME_SECRET; anything else closes the connection.",
            handshake=True),
        _op("load", ("hash", "max_response"), ("worker_id", "describe"),
            "Load artifact <hash> from the store into the warm spare worker; describe is the module's "
            "declaration. The worker is 'loading' until start."),
        _op("start", ("worker_id", "name", "secrets"), (),
            "Run onload in a loaded worker, with the module's own data directory <name> and its secrets "
            "({key: value}, handed to the worker, never stored or logged by the agent); then it serves."),
        _op("connect", ("worker_id", "count"), (),
            "count (1..200) new data connections to a running worker: socketpairs, one end each to the "
            "worker and, as the answer's descriptors, to the api.",
            fds=True),
        _op("stop", ("worker_id", "timeout"), (),
            "Run unload and end the worker (killed after the timeout)."),
        _op("kill", ("worker_id", "expected"), (),
            "End the worker now; expected=false reports its exit as a crash."),
        _op("logs", ("hash", "hashes", "tail"), ("lines",),
            "The last <tail> stdout/stderr lines of the workers of these module hashes, oldest first."),
        _op("ping", (), ("sandbox", "workers"),
            "The confinement in use and every worker (id, hash, state, pid)."),
    )
}

# event name -> its fields (besides "event").
EVENTS: dict[str, frozenset[str]] = {
    "log": frozenset({"ts", "stream", "module_hash", "line"}),
    "exited": frozenset({"worker_id", "hash", "returncode", "reason", "expected"}),
}


def request(req_id: int, op: str, fields: dict[str, object]) -> dict[str, object]:
    """A request line; an op or field not in OPS is a programming error."""
    spec = OPS.get(op)
    if spec is None:
        raise ValueError(f"unknown agent op {op!r}")
    unknown = set(fields) - spec.fields
    if unknown:
        raise ValueError(f"agent op {op!r} has no field {', '.join(sorted(unknown))}")
    return {"id": req_id, "op": op, **fields}


def dispatched(op: object) -> Op | None:
    """The operation a request names, if the agent dispatches it (not the handshake)."""
    spec = OPS.get(op) if isinstance(op, str) else None
    return spec if spec is not None and not spec.handshake else None


def event(name: str, **fields: object) -> dict[str, object]:
    """An event line; an event or field not in EVENTS is a programming error."""
    known = EVENTS.get(name)
    if known is None or set(fields) != known:
        raise ValueError(f"event {name!r} with fields {sorted(fields)} is not in the protocol")
    return {"event": name, **fields}
