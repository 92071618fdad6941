"""Signed build provenance: who built an artifact, from what, with what.

Every builder holds an Ed25519 key of its own and signs, in each manifest it
writes, one statement:

    {builder_id, key_id, build_key, toolchain_digest, source_sha256, module_hash}

as canonical JSON (sorted keys, no spaces). The manifest carries it under
"provenance" with the signature and the public key. A builder registers its
public key in the store (`<store>/builders/<key_id>.json`) when it starts.

The runtime agent checks the statement before it loads an artifact
(verify()): the signature must verify under a trusted key, the statement
must name the hash being loaded, and the manifest's own fields must agree
with the signed ones. The worker then re-hashes the bytes against that hash,
so the chain runs bytes -> module_hash -> signed statement -> builder key.

Trusted keys are the store's registrations, or, when CWEB_TRUSTED_BUILDER_KEYS
lists keys (base64 of the 32 raw bytes), only those: see SECURITY.md for
what each choice defends against.

This module lives in runtime/ because the agent needs it and may import
nothing else; the builder imports it from here.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from runtime.errors import RuntimeFailure
from runtime.files import write_atomic

SIGNED_FIELDS = ("builder_id", "key_id", "build_key", "toolchain_digest", "source_sha256", "module_hash")
# Manifest fields that must equal the signed ones (what GET /artifacts shows).
MIRRORED_FIELDS = ("build_key", "source_sha256", "module_hash")
ALGORITHM = "ed25519"


class ProvenanceError(RuntimeFailure):
    """An artifact whose provenance does not hold: unsigned, tampered or from an untrusted builder."""


def key_id(public: Ed25519PublicKey) -> str:
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:32]


def public_b64(public: Ed25519PublicKey) -> str:
    return base64.b64encode(public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()


def load_public(b64: str) -> Ed25519PublicKey:
    try:
        raw = base64.b64decode(b64, validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not a base64 Ed25519 public key: {b64[:60]!r}") from exc


def toolchain_digest(toolchain: dict) -> str:
    return hashlib.sha256(_canonical(toolchain)).hexdigest()


def _canonical(obj: object) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


class Signer:
    """A builder's signing key and identity."""

    def __init__(self, builder_id: str, private: Ed25519PrivateKey) -> None:
        self.builder_id = builder_id
        self.private = private
        self.public = private.public_key()
        self.key_id = key_id(self.public)

    @classmethod
    def load_or_create(cls, builder_id: str, path: str | None) -> Signer:
        """The key at path (PEM, created 0600 when missing), or a fresh key
        kept in memory only (a builder replica: a key per life, registered
        in the store, so its old artifacts stay verifiable)."""
        if not path:
            return cls(builder_id, Ed25519PrivateKey.generate())
        try:
            with open(path, "rb") as f:
                private = serialization.load_pem_private_key(f.read(), password=None)
        except FileNotFoundError:
            private = Ed25519PrivateKey.generate()
            os.makedirs(os.path.dirname(path) or ".", mode=0o700, exist_ok=True)
            pem = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
            write_atomic(path, pem, 0o600)
        if not isinstance(private, Ed25519PrivateKey):
            raise ValueError(f"{path} is not an Ed25519 private key")
        return cls(builder_id, private)

    def register(self, store_dir: str) -> None:
        """Publish the public key in the store, where the runtime finds it."""
        path = os.path.join(store_dir, "builders", f"{self.key_id}.json")
        if os.path.exists(path):
            return
        os.makedirs(os.path.dirname(path), exist_ok=True)
        body = {"builder_id": self.builder_id, "key_id": self.key_id, "algorithm": ALGORITHM,
                "public_key": public_b64(self.public), "registered_at": time.time()}
        write_atomic(path, json.dumps(body, sort_keys=True).encode(), 0o444)

    def sign(self, *, build_key: str, toolchain: dict, source_sha256: str, module_hash: str) -> dict:
        """The manifest's "provenance" block."""
        statement = {
            "builder_id": self.builder_id,
            "key_id": self.key_id,
            "build_key": build_key,
            "toolchain_digest": toolchain_digest(toolchain),
            "source_sha256": source_sha256,
            "module_hash": module_hash,
        }
        signature = self.private.sign(_canonical(statement))
        return {**statement, "algorithm": ALGORITHM, "public_key": public_b64(self.public),
                "signature": base64.b64encode(signature).decode()}


def registered_keys(store_dir: str) -> dict[str, Ed25519PublicKey]:
    """key_id -> public key of every builder registered in the store."""
    found: dict[str, Ed25519PublicKey] = {}
    try:
        names = os.listdir(os.path.join(store_dir, "builders"))
    except FileNotFoundError:
        return found
    for name in names:
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(store_dir, "builders", name), "rb") as f:
                body = json.loads(f.read())
            public = load_public(str(body["public_key"]))
        except (OSError, ValueError, KeyError, TypeError):
            continue
        found[key_id(public)] = public
    return found


def configured_keys(value: str) -> dict[str, Ed25519PublicKey]:
    """CWEB_TRUSTED_BUILDER_KEYS: base64 public keys, comma-separated."""
    keys = [load_public(v.strip()) for v in value.split(",") if v.strip()]
    return {key_id(k): k for k in keys}


class TrustedKeys:
    """The keys the runtime accepts: configured ones only, or the store's registrations
    (re-read when a manifest names a key not seen yet: builders register as they start)."""

    def __init__(self, store_dir: str, configured: str = "") -> None:
        self.store_dir = store_dir
        self.fixed = configured_keys(configured) if configured.strip() else None
        self._registered: dict[str, Ed25519PublicKey] = {}

    def get(self, kid: str) -> Ed25519PublicKey | None:
        if self.fixed is not None:
            return self.fixed.get(kid)
        if kid not in self._registered:
            self._registered = registered_keys(self.store_dir)
        return self._registered.get(kid)


def verify(manifest: dict | None, module_hash: str, trusted: TrustedKeys) -> dict:
    """The signed statement of an artifact, or ProvenanceError saying what is wrong."""
    short = module_hash[:12]
    prov = manifest.get("provenance") if isinstance(manifest, dict) else None
    if not isinstance(prov, dict) or "signature" not in prov:
        raise ProvenanceError("artifact_unsigned", f"artifact {short} has no signed provenance: refusing to load it "
                                                   "(rebuild it: deploy its source again)")
    statement = {k: prov.get(k) for k in SIGNED_FIELDS}
    if any(not isinstance(v, str) or not v for v in statement.values()):
        raise ProvenanceError("artifact_tampered", f"artifact {short}: its provenance lacks signed fields")
    public = trusted.get(statement["key_id"])
    if public is None:
        raise ProvenanceError("untrusted_builder", f"artifact {short} was signed by builder {statement['builder_id']!r} "
                                                   f"(key {statement['key_id'][:16]}), which is not trusted")
    try:
        public.verify(base64.b64decode(str(prov["signature"]), validate=True), _canonical(statement))
    except (InvalidSignature, binascii.Error, ValueError) as exc:
        raise ProvenanceError("artifact_tampered", f"artifact {short}: the provenance signature does not verify") from exc
    if statement["module_hash"] != module_hash:
        raise ProvenanceError("artifact_tampered", f"artifact {short}: its signed statement names another artifact "
                                                   f"({statement['module_hash'][:12]})")
    for field in MIRRORED_FIELDS:
        if manifest.get(field) != statement[field]:  # type: ignore[union-attr]
            raise ProvenanceError("artifact_tampered", f"artifact {short}: manifest field {field!r} differs from the signed one")
    return statement
