"""builder.store's remote tier on a real SeaweedFS (tests/objects.py): what
one machine's store writes, another's fetches, verifies and only then keeps."""

from __future__ import annotations

import hashlib
import json
import os
import time
from pathlib import Path

import pytest

from builder.errors import ArtifactCorrupt, ArtifactMissing, ObjectStoreUnavailable
from builder.objects import ObjectStore, S3Settings
from builder.store import Store
from runtime import provenance
from tests.objects import S3Target


def signed(store: Store, data: bytes, source: bytes, key: str, signer: provenance.Signer) -> tuple[str, dict]:
    """A module hash and a signed manifest for data, the way builder/local.py writes them."""
    signer.register(store.root)
    module_hash = hashlib.sha256(data).hexdigest()
    source_sha = hashlib.sha256(source).hexdigest()
    manifest = {"module_hash": module_hash, "source_sha256": source_sha, "build_key": key, "builder_id": signer.builder_id,
                "provenance": signer.sign(build_key=key, toolchain={"t": 1}, source_sha256=source_sha, module_hash=module_hash)}
    return module_hash, manifest


def build_into(store: Store, data: bytes, source: bytes = b"int x;\n", key: str | None = None) -> tuple[str, str, dict]:
    """What a builder keeps after a compile: source, artifact + manifest, action entry."""
    key = key or hashlib.sha256(os.urandom(16)).hexdigest()
    module_hash, manifest = signed(store, data, source, key, provenance.Signer.load_or_create("builder-a", None))
    store.put_source(manifest["source_sha256"], source)
    store.put_artifact(module_hash, data, manifest)
    store.record_action(key, module_hash)
    return module_hash, key, manifest


@pytest.fixture
def objects(s3_endpoint: S3Target):
    store = ObjectStore(s3_endpoint.settings())
    yield store
    store.close()


def local_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}


def test_another_machine_fetches_verifies_and_keeps_everything(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    """A builds; B (an empty directory, the same bucket) gets the action hit,
    artifact, manifest, source and the signer's key, all byte for byte."""
    a = Store(str(tmp_path / "a"), objects)
    data = os.urandom(200_000)
    module_hash, key, manifest = build_into(a, data)
    keys = {o["Key"] for o in s3_endpoint.client().list_objects_v2(Bucket=s3_endpoint.bucket)["Contents"]}
    kid = manifest["provenance"]["key_id"]
    assert {f"artifacts/{module_hash}.so", f"artifacts/{module_hash}.json", f"actions/{key}.json",
            f"sources/{manifest['source_sha256']}.c", f"builders/{kid}.json"} == keys

    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    assert not b.has_artifact(module_hash)
    assert module_hash == b.lookup_action(key)
    assert data == Path(b.artifact_path(module_hash)).read_bytes()
    assert manifest == b.manifest(module_hash)
    assert (tmp_path / "b" / "builders" / f"{kid}.json").read_bytes() == (tmp_path / "a" / "builders" / f"{kid}.json").read_bytes()
    assert b"int x;\n" == b.source(manifest["source_sha256"])
    assert (tmp_path / "b" / "sources" / f"{manifest['source_sha256']}.c").exists()
    # Already local: nothing fetched again.
    assert b.fetch_artifact(module_hash) is False
    # The agent's provenance check finds the fetched key in B's store.
    assert provenance.verify(b.manifest(module_hash), module_hash, provenance.TrustedKeys(b.root))["module_hash"] == module_hash


def test_fetch_artifact_by_hash_on_a_cold_store(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    """ensure's path: a hash this machine never saw becomes local, 1 MiB in well under a second."""
    a = Store(str(tmp_path / "a"), objects)
    module_hash, _, _ = build_into(a, os.urandom(1 << 20))
    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    started = time.perf_counter()
    assert b.fetch_artifact(module_hash) is True
    elapsed = time.perf_counter() - started
    assert b.artifact_intact(module_hash)
    assert elapsed < 10, elapsed


def test_corrupt_artifact_is_refused_and_not_cached(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    a = Store(str(tmp_path / "a"), objects)
    data = os.urandom(50_000)
    module_hash, key, _ = build_into(a, data)
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=f"artifacts/{module_hash}.so", Body=data + b"evil")
    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    with pytest.raises(ArtifactCorrupt, match="does not hash to its name"):
        b.fetch_artifact(module_hash)
    assert not b.has_artifact(module_hash)
    assert not any(f.endswith(".so") or f.startswith("artifacts/.tmp") for f in local_files(tmp_path / "b"))
    # The action cache treats it as a miss (the caller rebuilds) ...
    assert b.lookup_action(key) is None
    assert not b.has_artifact(module_hash)
    # ... and the rebuild's identical bytes replace the bad object.
    c = Store(str(tmp_path / "c"), ObjectStore(s3_endpoint.settings()))
    build_into(c, data, key=key)
    assert data == s3_endpoint.client().get_object(Bucket=s3_endpoint.bucket, Key=f"artifacts/{module_hash}.so")["Body"].read()
    assert module_hash == b.lookup_action(key)


def test_tampered_manifest_is_refused_and_not_cached(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    a = Store(str(tmp_path / "a"), objects)
    module_hash, _, manifest = build_into(a, os.urandom(10_000))
    forged = dict(manifest, source_sha256="0" * 64)
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=f"artifacts/{module_hash}.json", Body=json.dumps(forged).encode())
    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    with pytest.raises(ArtifactCorrupt, match="does not verify"):
        b.fetch_artifact(module_hash)
    assert not os.path.exists(os.path.join(b.root, "artifacts", f"{module_hash}.json"))
    assert not b.has_artifact(module_hash)
    # A manifest naming another artifact is refused too.
    other = dict(manifest, module_hash="1" * 64)
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=f"artifacts/{module_hash}.json", Body=json.dumps(other).encode())
    with pytest.raises(ArtifactCorrupt, match="not this artifact's manifest"):
        b.manifest(module_hash)


def test_swapped_builder_key_is_refused(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    """A registration under a key id that is not its key's digest is refused, not kept."""
    a = Store(str(tmp_path / "a"), objects)
    module_hash, _, manifest = build_into(a, os.urandom(10_000))
    kid = manifest["provenance"]["key_id"]
    intruder = provenance.Signer.load_or_create("intruder", None)
    body = {"builder_id": "builder-a", "key_id": kid, "algorithm": "ed25519", "public_key": provenance.public_b64(intruder.public)}
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=f"builders/{kid}.json", Body=json.dumps(body).encode())
    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    with pytest.raises(ArtifactCorrupt, match="holds another key"):
        b.fetch_artifact(module_hash)
    assert not (tmp_path / "b" / "builders" / f"{kid}.json").exists()
    assert not b.has_artifact(module_hash)


def test_corrupt_source_is_refused_and_not_cached(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    a = Store(str(tmp_path / "a"), objects)
    _, _, manifest = build_into(a, os.urandom(1000), source=b"int y;\n")
    sha = manifest["source_sha256"]
    s3_endpoint.client().put_object(Bucket=s3_endpoint.bucket, Key=f"sources/{sha}.c", Body=b"int z;\n")
    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    with pytest.raises(ArtifactCorrupt):
        b.source(sha)
    assert not (tmp_path / "b" / "sources" / f"{sha}.c").exists()


def test_missing_objects(tmp_path: Path, objects: ObjectStore) -> None:
    """Nothing here, nothing there: None for lookups, ArtifactMissing for a fetch (the bucket need not even exist yet)."""
    b = Store(str(tmp_path / "b"), objects)
    h = "ab" * 32
    assert b.manifest(h) is None
    assert b.source(h) is None
    assert b.lookup_action("cd" * 32) is None
    with pytest.raises(ArtifactMissing, match="neither in this node's store nor in the object store"):
        b.fetch_artifact(h)
    with pytest.raises(ArtifactMissing, match="not in this node's store"):
        Store(str(tmp_path / "c")).fetch_artifact(h)


def test_a_local_hit_from_before_the_object_store_is_published(tmp_path: Path, objects: ObjectStore, s3_endpoint: S3Target) -> None:
    """A store that built without S3, then runs with it: its cache hits are uploaded for the other nodes."""
    root = str(tmp_path / "a")
    module_hash, key, _ = build_into(Store(root), os.urandom(5000))
    assert module_hash == Store(root, objects).lookup_action(key)
    b = Store(str(tmp_path / "b"), ObjectStore(s3_endpoint.settings()))
    assert module_hash == b.lookup_action(key)
    assert b.artifact_intact(module_hash)


def test_wrong_credentials_are_a_clear_error(tmp_path: Path, s3_endpoint: S3Target) -> None:
    bad = ObjectStore(S3Settings(endpoint=s3_endpoint.endpoint, bucket=s3_endpoint.bucket, access_key=s3_endpoint.access_key,
                                 secret_key="wrong"))
    store = Store(str(tmp_path / "a"), bad)
    with pytest.raises(ObjectStoreUnavailable, match=r"object store http://127.0.0.1:\d+/t-\w+: .* failed"):
        store.put_source("ef" * 32, b"int q;\n")
    with pytest.raises(ObjectStoreUnavailable, match="GET artifacts/"):
        store.manifest("ab" * 32)
