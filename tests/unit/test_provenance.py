"""Signed build provenance (runtime/provenance.py): what verifies, and every way it does not."""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path

import pytest

from runtime import provenance
from runtime.provenance import ProvenanceError, Signer, TrustedKeys

TOOLCHAIN = {"compiler": "gcc 12", "sdk_digest": "ab" * 32, "flags": ["-O2"], "abi_version": 3}
HASH = hashlib.sha256(b"artifact").hexdigest()
SOURCE = hashlib.sha256(b"source").hexdigest()
KEY = hashlib.sha256(b"key").hexdigest()


def _manifest(signer: Signer, module_hash: str = HASH) -> dict:
    return {"module_hash": module_hash, "source_sha256": SOURCE, "build_key": KEY,
            "provenance": signer.sign(build_key=KEY, toolchain=TOOLCHAIN, source_sha256=SOURCE, module_hash=module_hash)}


@pytest.fixture
def store(tmp_path: Path) -> Path:
    return tmp_path / "store"


def test_registered_builder_signature_verifies(store: Path) -> None:
    signer = Signer.load_or_create("b1", None)
    signer.register(str(store))
    reg = json.loads((store / "builders" / f"{signer.key_id}.json").read_text())
    assert ("b1", signer.key_id) == (reg["builder_id"], reg["key_id"])
    statement = provenance.verify(_manifest(signer), HASH, TrustedKeys(str(store)))
    assert ("b1", HASH, provenance.toolchain_digest(TOOLCHAIN)) == (statement["builder_id"], statement["module_hash"], statement["toolchain_digest"])


@pytest.mark.parametrize(("change", "code"), [
    (lambda m: m.pop("provenance"), "artifact_unsigned"),
    (lambda m: m["provenance"].pop("signature"), "artifact_unsigned"),
    (lambda m: m["provenance"].update(builder_id="someone-else"), "artifact_tampered"),
    (lambda m: m["provenance"].update(source_sha256="0" * 64), "artifact_tampered"),
    (lambda m: m["provenance"].update(signature="AAAA" + m["provenance"]["signature"][4:]), "artifact_tampered"),
    (lambda m: m["provenance"].update(signature="not base64!"), "artifact_tampered"),
    (lambda m: m.update(build_key="1" * 64), "artifact_tampered"),
    (lambda m: m["provenance"].pop("toolchain_digest"), "artifact_tampered"),
], ids=["no-provenance", "no-signature", "builder-id", "source", "signature-bytes", "signature-garbage", "manifest-field", "missing-field"])
def test_tampered_or_unsigned_manifests_are_refused(store: Path, change, code: str) -> None:  # type: ignore[no-untyped-def]
    signer = Signer.load_or_create("b1", None)
    signer.register(str(store))
    manifest = copy.deepcopy(_manifest(signer))
    change(manifest)
    with pytest.raises(ProvenanceError) as info:
        provenance.verify(manifest, HASH, TrustedKeys(str(store)))
    assert code == info.value.code, info.value.message


def test_a_statement_for_another_artifact_is_refused(store: Path) -> None:
    """A valid signature over another hash does not vouch for this one (a swapped manifest)."""
    signer = Signer.load_or_create("b1", None)
    signer.register(str(store))
    other = hashlib.sha256(b"other").hexdigest()
    manifest = _manifest(signer, other)
    manifest["module_hash"] = HASH
    with pytest.raises(ProvenanceError) as info:
        provenance.verify(manifest, HASH, TrustedKeys(str(store)))
    assert "artifact_tampered" == info.value.code


def test_unregistered_or_unconfigured_keys_are_untrusted(store: Path) -> None:
    registered, stranger = Signer.load_or_create("b1", None), Signer.load_or_create("evil", None)
    registered.register(str(store))
    with pytest.raises(ProvenanceError) as info:
        provenance.verify(_manifest(stranger), HASH, TrustedKeys(str(store)))
    assert "untrusted_builder" == info.value.code and "evil" in info.value.message
    # Configured keys replace the store's registrations.
    only_stranger = TrustedKeys(str(store), provenance.public_b64(stranger.public))
    provenance.verify(_manifest(stranger), HASH, only_stranger)
    with pytest.raises(ProvenanceError):
        provenance.verify(_manifest(registered), HASH, only_stranger)


def test_a_key_file_is_created_private_and_reused(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "builder.pem"
    first = Signer.load_or_create("b1", str(path))
    assert 0o600 == path.stat().st_mode & 0o777
    assert first.key_id == Signer.load_or_create("b1", str(path)).key_id
    assert first.key_id != Signer.load_or_create("b1", None).key_id
