"""The content-addressed store shared by the builder and the runtime.

    <store>/artifacts/<module_hash>.so     read-only, named by sha256 of its bytes
    <store>/artifacts/<module_hash>.json   manifest: build provenance
    <store>/sources/<source_sha256>.c      uploaded sources, for provenance
    <store>/actions/<build_key>.json       action cache: build key -> module_hash
    <store>/builders/<key_id>.json         builders' public keys (runtime/provenance.py)

Every file is written to a temporary name in the same directory, synced and
renamed, so a reader sees either nothing or the whole file. An artifact is
checked against its name before the action cache hands it out: one that no
longer matches is evicted and rebuilt, never served or kept failing.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re

from runtime.files import write_atomic

__all__ = ["Store", "is_hash", "write_atomic"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hash(value: str) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


class Store:
    def __init__(self, root: str) -> None:
        self.root = root
        for sub in ("artifacts", "sources", "actions", "glue", "builders"):
            path = os.path.join(root, sub)
            # Only create what is missing: readers mount the store read-only,
            # and a reader of a store whose builder is older lacks a directory.
            if not os.path.isdir(path):
                try:
                    os.makedirs(path, exist_ok=True)
                except OSError as exc:
                    if exc.errno not in (errno.EROFS, errno.EACCES, errno.EPERM):
                        raise

    def artifact_path(self, module_hash: str) -> str:
        if not is_hash(module_hash):
            raise ValueError("not a module hash")
        return os.path.join(self.root, "artifacts", f"{module_hash}.so")

    def has_artifact(self, module_hash: str) -> bool:
        return is_hash(module_hash) and os.path.exists(self.artifact_path(module_hash))

    def artifact_intact(self, module_hash: str) -> bool:
        """Whether the stored artifact's bytes still hash to its name."""
        h = hashlib.sha256()
        try:
            with open(self.artifact_path(module_hash), "rb") as f:
                while chunk := f.read(1 << 20):
                    h.update(chunk)
        except FileNotFoundError:
            return False
        return h.hexdigest() == module_hash

    def evict_artifact(self, module_hash: str) -> None:
        """Drop an artifact whose bytes no longer match its hash: the next
        build of its source writes it again (builds are reproducible)."""
        try:
            os.unlink(self.artifact_path(module_hash))
        except FileNotFoundError:
            pass

    def put_artifact(self, module_hash: str, data: bytes, manifest: dict) -> None:
        path = self.artifact_path(module_hash)
        if not os.path.exists(path) or not self.artifact_intact(module_hash):
            write_atomic(path, data, 0o444)
        mpath = os.path.join(self.root, "artifacts", f"{module_hash}.json")
        # The first signed manifest stays (another builder's rebuild of the
        # same bytes does not replace it); an unsigned one from before is replaced.
        if "provenance" not in (self.manifest(module_hash) or {}):
            write_atomic(mpath, json.dumps(manifest, indent=1, sort_keys=True).encode(), 0o444)

    def manifest(self, module_hash: str) -> dict | None:
        if not is_hash(module_hash):
            return None
        try:
            with open(os.path.join(self.root, "artifacts", f"{module_hash}.json"), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def put_source(self, source_sha256: str, data: bytes) -> None:
        path = os.path.join(self.root, "sources", f"{source_sha256}.c")
        if not os.path.exists(path):
            write_atomic(path, data, 0o444)

    def source(self, source_sha256: str) -> bytes | None:
        if not is_hash(source_sha256):
            return None
        try:
            with open(os.path.join(self.root, "sources", f"{source_sha256}.c"), "rb") as f:
                return f.read()
        except FileNotFoundError:
            return None

    def lookup_action(self, key: str) -> str | None:
        """The module_hash a build key produced, if its artifact is still here
        and intact. A corrupt one (bytes appended, overwritten) is evicted, so
        the caller rebuilds it from the source instead of failing forever."""
        try:
            with open(os.path.join(self.root, "actions", f"{key}.json"), "rb") as f:
                module_hash = json.loads(f.read())["module_hash"]
        except (FileNotFoundError, ValueError, KeyError):
            return None
        if not is_hash(module_hash) or not self.has_artifact(module_hash):
            return None
        if not self.artifact_intact(module_hash):
            self.evict_artifact(module_hash)
            return None
        return module_hash

    def record_action(self, key: str, module_hash: str) -> None:
        write_atomic(
            os.path.join(self.root, "actions", f"{key}.json"),
            json.dumps({"module_hash": module_hash}).encode(),
            0o644,
        )
