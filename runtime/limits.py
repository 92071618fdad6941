"""Limits of the runtime agent and its workers, in one place."""

from __future__ import annotations

import resource

# Seconds a worker may take to dlopen and describe its artifact.
LOAD_TIMEOUT_S = 20.0
# Seconds a module's onload may run before the deploy is rejected.
ONLOAD_TIMEOUT_S = 20.0
# Seconds between asking a worker to stop (unload) and killing it.
STOP_TIMEOUT_S = 10.0
# Lines of module output kept per module hash.
LOG_RING_LINES = 2000


def apply_worker_limits() -> None:
    """Runs in the worker child between fork and exec (agent is single-threaded)."""
    # A crashing module must not fill the disk with cores.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
