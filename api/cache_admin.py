"""Data-dir files the module services share, prepared once per server start.

    <data_dir>/cache.shm       the cross-module cache: recreated (empty) at every
                               start, so it survives hot swaps but not restarts.
                               Its size is the cache size; workers map it and the
                               first one lays it out (builder/sdk/cweb_services.c).
    <data_dir>/server.key.bin  32 random bytes, the HMAC key of ctx->crypto.
                               Created once if missing, never replaced.

Call prepare() in the lifespan before any worker loads a module. If it is not
called, the first worker creates both files itself (cache of DEFAULT_BYTES,
kept across restarts); this module only adds the per-run reset and the size.
"""

from __future__ import annotations

import logging
import os
import secrets
import tempfile

log = logging.getLogger("cweb.api")

CACHE_FILE = "cache.shm"
KEY_FILE = "server.key.bin"
# Default size of the cross-module cache (env CWEB_CACHE_BYTES).
DEFAULT_BYTES = 64 << 20
# Smallest cache the glue accepts; smaller files turn the cache off.
MIN_BYTES = 256 << 10
# Largest size accepted from the environment.
MAX_BYTES = 64 << 30
KEY_BYTES = 32
_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30}


def parse_size(text: str) -> int:
    """'67108864', '64M', '512k' -> bytes. Raises ValueError when malformed."""
    raw = text.strip().lower().removesuffix("ib").removesuffix("b")
    unit = raw[-1:] if raw[-1:] in _UNITS and raw[-1:] else ""
    number = raw[: len(raw) - len(unit)] if unit else raw
    if not number.isdigit():
        raise ValueError(f"not a size: {text!r} (use bytes, or a K/M/G suffix)")
    return int(number) * _UNITS[unit]


def cache_bytes_from_env(env: dict | None = None) -> int:
    """The cache size from CWEB_CACHE_BYTES, clamped to [MIN_BYTES, MAX_BYTES]."""
    env = os.environ if env is None else env
    raw = env.get("CWEB_CACHE_BYTES", "")
    size = parse_size(raw) if raw.strip() else DEFAULT_BYTES
    if size < MIN_BYTES or size > MAX_BYTES:
        log.warning("CWEB_CACHE_BYTES=%s is outside [%d, %d]; clamped", raw, MIN_BYTES, MAX_BYTES)
    return min(max(size, MIN_BYTES), MAX_BYTES)


def reset_cache(data_dir: str, size: int) -> str:
    """Replace cache.shm by an empty (sparse, all-zero) file of size bytes.

    Workers of this server run map the new file; nothing maps the old one any
    more, since they were started by an earlier run."""
    path = os.path.join(data_dir, CACHE_FILE)
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".cache-")
    try:
        os.fchmod(fd, 0o600)
        os.ftruncate(fd, size)
        os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def ensure_server_key(data_dir: str) -> str:
    """Create server.key.bin with fresh random bytes unless it exists.

    Written under a temporary name and link()ed into place, so a worker racing
    to create it too reads either no file or a whole key."""
    path = os.path.join(data_dir, KEY_FILE)
    if os.path.exists(path):
        if os.path.getsize(path) != KEY_BYTES:
            log.error("%s is not %d bytes: modules cannot sign tokens until it is fixed or removed", path, KEY_BYTES)
        return path
    fd, tmp = tempfile.mkstemp(dir=data_dir, prefix=".key-")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, secrets.token_bytes(KEY_BYTES))
        os.fsync(fd)
        os.close(fd)
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass
    finally:
        os.unlink(tmp)
    return path


def prepare(data_dir: str, cache_bytes: int | None = None) -> None:
    """Per-start setup of the module services' files (see the module docstring)."""
    os.makedirs(data_dir, exist_ok=True)
    size = cache_bytes if cache_bytes is not None else cache_bytes_from_env()
    reset_cache(data_dir, size)
    ensure_server_key(data_dir)
    log.info("module cache: %d bytes (%s)", size, os.path.join(data_dir, CACHE_FILE))
