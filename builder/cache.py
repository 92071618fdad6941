"""Build keys: the identity of everything that determines a build's output."""

from __future__ import annotations

import hashlib
import json

# Changing this forces every module to be rebuilt (new keys, cold cache).
BUILD_SALT = "cweb-build-1"


def build_key(
    *,
    source_sha256: str,
    sdk_digest: str,
    compiler: str,
    flags: list[str],
    abi_version: int,
    salt: str = BUILD_SALT,
) -> str:
    """sha256 over a canonical JSON object of every build input."""
    inputs = {
        "source_sha256": source_sha256,
        "sdk_digest": sdk_digest,
        "compiler": compiler,
        "flags": list(flags),
        "abi_version": abi_version,
        "salt": salt,
    }
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()
