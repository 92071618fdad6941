"""The api's side of the module services (the broker itself runs in the
runtime agent: runtime/services.py).

At every start, prepare() is told the cache size the agent will use
(Settings.cache_bytes from CWEB_CACHE_BYTES, reported by /metrics as
cweb_cache_capacity_bytes) and
removes what earlier releases kept in the data dir for services that now
live outside it: cache.shm, the shared-memory cache every worker mapped.
server.key.bin, the old HMAC key, is left alone (an operator may want it);
nothing reads it any more.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger("cweb.api")

__all__ = ["capacity", "prepare"]

LEGACY_CACHE_FILE = "cache.shm"

_capacity = 0


def capacity() -> int:
    """The cache size read by the last prepare() (0 before)."""
    return _capacity


def prepare(data_dir: str, cache_bytes: int) -> None:
    """Per-start housekeeping of the module services (see the module docstring)."""
    global _capacity
    os.makedirs(data_dir, exist_ok=True)
    _capacity = cache_bytes
    try:
        os.unlink(os.path.join(data_dir, LEGACY_CACHE_FILE))
        log.info("removed %s: the module cache now lives in the runtime", LEGACY_CACHE_FILE)
    except FileNotFoundError:
        pass
    log.info("module cache: %d bytes, held by the runtime agent", _capacity)
