"""Errors of the runtime: one class, raised in the worker and the agent,
re-raised in the api from an agent reply.

    RuntimeFailure(code, message)   anything the runtime refuses or cannot do
      codes, by who raises them:
        worker   artifact_corrupt, load_failed, abi_mismatch, missing_config,
                 describe_failed, onload_failed (or a module's own code)
        agent    no_uid, no_sandbox, worker_timeout, bad_hash, artifact_missing,
                 load_crashed, onload_crashed, bad_state, bad_count,
                 no_such_worker, too_many_connections, bad_name, bad_op,
                 agent_error (a bug of the agent's)
        client   runtime_failed, runtime_unreachable (runtime/client.py)

The code crosses the wire as the reply's "error" (extra fields beside it);
api/errors.py maps it to
HTTP (runtime_status).
"""

from __future__ import annotations


class RuntimeFailure(Exception):
    """A runtime operation failed; `code` is the stable code sent to the api."""

    def __init__(self, code: str, message: str, **extra: object) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        # JSON-able details that travel with the code (a crashed onload's
        # output, its signal) and end up in the api's error body.
        self.extra = extra
