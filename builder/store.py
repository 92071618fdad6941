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

With an object store (`objects`, builder/objects.py: CWEB_S3_ENDPOINT) the
directory is one machine's cache of a shared remote tier with the same keys.
Every write goes to both; a read that misses here is fetched from the object
store and kept here only once it is verified: an artifact's bytes must hash to
its name, a source's to its digest, a manifest's signature must verify under
the builder key it names and that key's id must be its digest. What fails
verification raises ArtifactCorrupt and leaves nothing behind. The remote
calls block: callers on an event loop run these methods in a thread.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re

from builder import limits
from builder.errors import ArtifactCorrupt, ArtifactMissing
from builder.objects import ObjectStore
from runtime import provenance
from runtime.files import write_atomic

__all__ = ["Store", "is_hash", "write_atomic"]

_HEX64 = re.compile(r"[0-9a-f]{64}")


def is_hash(value: str) -> bool:
    return isinstance(value, str) and _HEX64.fullmatch(value) is not None


class _OneKey:
    """provenance.verify's key lookup for the one key a manifest names."""

    def __init__(self, kid: str, public: object) -> None:
        self.kid, self.public = kid, public

    def get(self, kid: str) -> object | None:
        return self.public if kid == self.kid else None


class Store:
    def __init__(self, root: str, objects: ObjectStore | None = None) -> None:
        self.root = root
        self.objects = objects
        self._published_keys: set[str] = set()
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
        if "provenance" not in (self._local_manifest(module_hash) or {}):
            write_atomic(mpath, json.dumps(manifest, indent=1, sort_keys=True).encode(), 0o444)
        if self.objects is not None:
            self._publish_artifact(module_hash, data)

    def _publish_artifact(self, module_hash: str, data: bytes) -> None:
        """Artifact, then its signer's key, then its manifest into the object
        store: a reader that finds the manifest finds everything it names.
        The artifact is always written (a corrupt object is replaced by
        the rebuild's bytes); a remote manifest that verifies stays."""
        assert self.objects is not None
        manifest = self._local_manifest(module_hash) or {}
        self.objects.put(f"artifacts/{module_hash}.so", data)
        kid = (manifest.get("provenance") or {}).get("key_id")
        if isinstance(kid, str):
            self.publish_builder_key(kid)
        try:
            remote = self._remote_manifest(module_hash)
        except ArtifactCorrupt:
            remote = None
        if remote is None or "provenance" not in remote:
            self.objects.put(f"artifacts/{module_hash}.json", _dump(manifest), "application/json")

    def publish_builder_key(self, kid: str) -> None:
        """Copy a builder's registration (builders/<key_id>.json) to the object store, once per process."""
        if self.objects is None or kid in self._published_keys:
            return
        try:
            with open(os.path.join(self.root, "builders", f"{kid}.json"), "rb") as f:
                body = f.read()
        except FileNotFoundError:
            return
        self.objects.put(f"builders/{kid}.json", body, "application/json")
        self._published_keys.add(kid)

    def _local_manifest(self, module_hash: str) -> dict | None:
        try:
            with open(os.path.join(self.root, "artifacts", f"{module_hash}.json"), "rb") as f:
                return json.loads(f.read())
        except FileNotFoundError:
            return None

    def manifest(self, module_hash: str) -> dict | None:
        """The artifact's manifest: from here, else (verified, then kept) from the object store."""
        if not is_hash(module_hash):
            return None
        local = self._local_manifest(module_hash)
        if local is not None or self.objects is None:
            return local
        remote = self._remote_manifest(module_hash)
        if remote is not None:
            write_atomic(os.path.join(self.root, "artifacts", f"{module_hash}.json"), _dump(remote), 0o444)
        return remote

    def _remote_manifest(self, module_hash: str) -> dict | None:
        """The object store's manifest of module_hash, verified: it names this
        hash and, when signed, its signature holds under the registered key
        it names (which is fetched and kept here too). ArtifactCorrupt otherwise."""
        assert self.objects is not None
        raw = self.objects.get(f"artifacts/{module_hash}.json", limits.MAX_RECORD_BYTES)
        if raw is None:
            return None
        short = module_hash[:12]
        try:
            manifest = json.loads(raw)
        except ValueError:
            manifest = None
        if not isinstance(manifest, dict) or manifest.get("module_hash") != module_hash:
            raise ArtifactCorrupt(f"the object store's manifest of artifact {short} is not this artifact's manifest: refused")
        prov = manifest.get("provenance")
        if isinstance(prov, dict):
            kid = str(prov.get("key_id") or "")
            public = self._builder_key(kid)
            if public is None:
                raise ArtifactCorrupt(f"artifact {short} was signed by key {kid[:16]}, which is registered neither here nor in the object store")
            try:
                provenance.verify(manifest, module_hash, _OneKey(kid, public))  # type: ignore[arg-type]
            except provenance.ProvenanceError as exc:
                raise ArtifactCorrupt(f"the object store's manifest of artifact {short} does not verify: {exc.message}") from exc
        return manifest

    def _builder_key(self, kid: str) -> object | None:
        """A builder's public key by id: registered here, else fetched from the
        object store, checked against its id and kept here (where the agent's
        provenance check reads it)."""
        if not re.fullmatch(r"[0-9a-f]{32}", kid):
            return None
        path = os.path.join(self.root, "builders", f"{kid}.json")
        try:
            with open(path, "rb") as f:
                raw: bytes | None = f.read()
            local = True
        except FileNotFoundError:
            raw = self.objects.get(f"builders/{kid}.json", limits.MAX_RECORD_BYTES) if self.objects is not None else None
            local = False
        if raw is None:
            return None
        try:
            public = provenance.load_public(str(json.loads(raw)["public_key"]))
        except (ValueError, KeyError, TypeError) as exc:
            raise ArtifactCorrupt(f"builder key {kid[:16]} is not a registration: refused") from exc
        if provenance.key_id(public) != kid:
            raise ArtifactCorrupt(f"builder key {kid[:16]} holds another key: refused")
        if not local:
            write_atomic(path, raw, 0o444)
        return public

    def fetch_artifact(self, module_hash: str) -> bool:
        """Make the artifact local: False when it already was, True when it was
        fetched from the object store (manifest and signer's key first, the
        artifact last, each verified). ArtifactMissing when neither has it,
        ArtifactCorrupt when the object store's copy does not verify."""
        if not is_hash(module_hash):
            raise ValueError("not a module hash")
        if self.has_artifact(module_hash):
            return False
        short = module_hash[:12]
        if self.objects is None:
            raise ArtifactMissing(f"artifact {short} is not in this node's store")
        manifest = self.manifest(module_hash)
        data = self.objects.get(f"artifacts/{module_hash}.so", limits.MAX_ARTIFACT_BYTES)
        if data is None:
            raise ArtifactMissing(f"artifact {short} is neither in this node's store nor in the object store")
        if hashlib.sha256(data).hexdigest() != module_hash:
            raise ArtifactCorrupt(f"artifact {short} in the object store does not hash to its name: refused, not cached")
        if manifest is None:
            raise ArtifactMissing(f"artifact {short} has no manifest in the object store")
        write_atomic(self.artifact_path(module_hash), data, 0o444)
        return True

    def put_source(self, source_sha256: str, data: bytes) -> None:
        path = os.path.join(self.root, "sources", f"{source_sha256}.c")
        if not os.path.exists(path):
            write_atomic(path, data, 0o444)
        if self.objects is not None:
            self.objects.put(f"sources/{source_sha256}.c", data, "text/x-c")

    def source(self, source_sha256: str) -> bytes | None:
        if not is_hash(source_sha256):
            return None
        path = os.path.join(self.root, "sources", f"{source_sha256}.c")
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            pass
        if self.objects is None:
            return None
        data = self.objects.get(f"sources/{source_sha256}.c", limits.MAX_ARTIFACT_BYTES)
        if data is None:
            return None
        if hashlib.sha256(data).hexdigest() != source_sha256:
            raise ArtifactCorrupt(f"source {source_sha256[:12]} in the object store does not hash to its name: refused")
        write_atomic(path, data, 0o444)
        return data

    def lookup_action(self, key: str) -> str | None:
        """The module_hash a build key produced, if its artifact is still here
        and intact. A corrupt one (bytes appended, overwritten) is evicted, so
        the caller rebuilds it from the source instead of failing forever."""
        try:
            with open(os.path.join(self.root, "actions", f"{key}.json"), "rb") as f:
                module_hash = json.loads(f.read())["module_hash"]
        except (FileNotFoundError, ValueError, KeyError):
            return self._remote_action(key) if self.objects is not None else None
        if not is_hash(module_hash) or not self.has_artifact(module_hash):
            return self._remote_action(key) if self.objects is not None else None
        if not self.artifact_intact(module_hash):
            self.evict_artifact(module_hash)
            return None
        if self.objects is not None and not self.objects.exists(f"artifacts/{module_hash}.so"):
            # Built here before the object store was configured (or its
            # bucket was emptied): publish it, so other nodes can load it.
            with open(self.artifact_path(module_hash), "rb") as f:
                self._publish_artifact(module_hash, f.read())
            self.objects.put(f"actions/{key}.json", _action(module_hash), "application/json")
        return module_hash

    def _remote_action(self, key: str) -> str | None:
        """The object store's action-cache entry, fetched with its artifact
        (verified, kept here): a hit means this machine can load it. An
        entry whose artifact is missing or corrupt is a miss, so the caller
        rebuilds, and the rebuild replaces the bad object."""
        if not re.fullmatch(r"[0-9a-f]{64}", key):
            return None
        raw = self.objects.get(f"actions/{key}.json", limits.MAX_RECORD_BYTES) if self.objects is not None else None
        try:
            module_hash = json.loads(raw)["module_hash"] if raw is not None else None
        except (ValueError, KeyError, TypeError):
            return None
        if not is_hash(module_hash):
            return None
        try:
            self.fetch_artifact(module_hash)
        except (ArtifactMissing, ArtifactCorrupt):
            return None
        write_atomic(os.path.join(self.root, "actions", f"{key}.json"), _action(module_hash), 0o644)
        return module_hash

    def record_action(self, key: str, module_hash: str) -> None:
        write_atomic(os.path.join(self.root, "actions", f"{key}.json"), _action(module_hash), 0o644)
        if self.objects is not None:
            self.objects.put(f"actions/{key}.json", _action(module_hash), "application/json")


def _action(module_hash: str) -> bytes:
    return json.dumps({"module_hash": module_hash}).encode()


def _dump(manifest: dict) -> bytes:
    return json.dumps(manifest, indent=1, sort_keys=True).encode()
