"""builder.store: atomic writes and the content-addressed store, on a real disk."""

from __future__ import annotations

import hashlib
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from builder.store import Store, is_hash, write_atomic

ROOT = Path(__file__).resolve().parents[2]


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# ------------------------------------------------------------- write_atomic


@pytest.mark.parametrize("mode", [0o444, 0o644, 0o600])
def test_write_atomic_writes_whole_file_with_mode(tmp_path: Path, mode: int) -> None:
    """The target holds exactly the bytes given, with the mode given, and nothing else is left."""
    data = os.urandom(300_000)
    target = tmp_path / "out.bin"
    write_atomic(str(target), data, mode)
    assert data == target.read_bytes()
    assert mode == mode_of(target)
    assert ["out.bin"] == sorted(os.listdir(tmp_path))


def test_write_atomic_replaces_existing_file(tmp_path: Path) -> None:
    """Writing over an existing file swaps in the new content whole."""
    target = tmp_path / "out.json"
    target.write_bytes(b"old content that is longer than the new one")
    write_atomic(str(target), b"new", 0o644)
    assert b"new" == target.read_bytes()
    assert ["out.json"] == os.listdir(tmp_path)


def test_write_atomic_default_mode_is_read_only(tmp_path: Path) -> None:
    """Without a mode the file is 0444 (store entries are immutable)."""
    target = tmp_path / "x"
    write_atomic(str(target), b"x")
    assert 0o444 == mode_of(target)


def test_write_failure_leaves_no_temp_and_no_target(tmp_path: Path) -> None:
    """A write that fails midway (file size limit reached: EFBIG) leaves the directory empty.

    Runs in a child process so the RLIMIT_FSIZE applies to it alone.
    """
    script = textwrap.dedent(
        f"""
        import errno, resource, signal, sys
        sys.path.insert(0, {str(ROOT)!r})
        from builder.store import write_atomic
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
        try:
            write_atomic({str(tmp_path / "big.so")!r}, b"x" * 1_000_000)
        except OSError as exc:
            print("errno", errno.errorcode[exc.errno])
        else:
            print("no error")
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert "errno EFBIG\n" == run.stdout, run.stderr
    assert [] == os.listdir(tmp_path)


def test_unwritable_data_leaves_no_temp_and_no_target(tmp_path: Path) -> None:
    """Data the file cannot take (not bytes-like) fails after the temp file exists; it is removed."""
    with pytest.raises(TypeError):
        write_atomic(str(tmp_path / "t.json"), {"not": "bytes"})  # type: ignore[arg-type]
    assert [] == os.listdir(tmp_path)


def test_write_into_missing_directory_raises(tmp_path: Path) -> None:
    """A target in a directory that does not exist raises and creates nothing."""
    with pytest.raises(FileNotFoundError):
        write_atomic(str(tmp_path / "nope" / "x"), b"x")
    assert [] == os.listdir(tmp_path)


# ------------------------------------------------------------------- Store


def sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def test_store_creates_its_layout(tmp_path: Path) -> None:
    """A new Store makes its subdirectories."""
    Store(str(tmp_path / "store"))
    assert ["actions", "artifacts", "builders", "glue", "sources"] == sorted(os.listdir(tmp_path / "store"))


def test_put_artifact_is_read_only_and_named_by_hash(tmp_path: Path) -> None:
    """The artifact is <hash>.so, mode 0444, beside a 0444 <hash>.json manifest."""
    store = Store(str(tmp_path))
    data = b"\x7fELF fake shared object"
    h = sha(data)
    manifest = {"module_hash": h, "name": "hello", "routes": [{"method": "GET", "path": "/hello"}]}
    store.put_artifact(h, data, manifest)
    so = tmp_path / "artifacts" / f"{h}.so"
    js = tmp_path / "artifacts" / f"{h}.json"
    assert sorted([f"{h}.json", f"{h}.so"]) == sorted(os.listdir(tmp_path / "artifacts"))
    assert data == so.read_bytes()
    assert (0o444, 0o444) == (mode_of(so), mode_of(js))
    assert manifest == json.loads(js.read_text())
    assert manifest == store.manifest(h)
    assert str(so) == store.artifact_path(h)
    assert store.has_artifact(h)


def test_put_artifact_twice_keeps_the_first(tmp_path: Path) -> None:
    """Artifacts are immutable: a second put of the same hash changes nothing
    (the first signed manifest stays, whichever builder rebuilds the bytes)."""
    store = Store(str(tmp_path))
    data = b"artifact"
    h = sha(data)
    store.put_artifact(h, data, {"n": 1, "provenance": {"builder_id": "a"}})
    store.put_artifact(h, data, {"n": 2, "provenance": {"builder_id": "b"}})
    assert {"n": 1, "provenance": {"builder_id": "a"}} == store.manifest(h)


def test_put_artifact_replaces_an_unsigned_manifest(tmp_path: Path) -> None:
    """A manifest from before signing is replaced by the signed one of a rebuild."""
    store = Store(str(tmp_path))
    data = b"artifact"
    h = sha(data)
    store.put_artifact(h, data, {"n": 1})
    store.put_artifact(h, data, {"n": 2, "provenance": {"builder_id": "b"}})
    assert 2 == store.manifest(h)["n"]


def test_put_source_round_trips(tmp_path: Path) -> None:
    """Sources are kept by their hash, read-only."""
    store = Store(str(tmp_path))
    src = b"#include <cweb.h>\n"
    store.put_source(sha(src), src)
    assert src == store.source(sha(src))
    assert 0o444 == mode_of(tmp_path / "sources" / f"{sha(src)}.c")
    assert None is store.source("0" * 64)


def test_lookup_action_finds_recorded_artifact(tmp_path: Path) -> None:
    """A recorded build key maps to its module hash while the artifact exists."""
    store = Store(str(tmp_path))
    data = b"artifact"
    h = sha(data)
    store.put_artifact(h, data, {})
    store.record_action("k" * 64, h)
    assert h == store.lookup_action("k" * 64)
    assert None is store.lookup_action("j" * 64)


def test_lookup_action_is_none_when_artifact_is_gone(tmp_path: Path) -> None:
    """If the artifact was removed from the store, the action cache misses."""
    store = Store(str(tmp_path))
    data = b"artifact"
    h = sha(data)
    store.put_artifact(h, data, {})
    store.record_action("k" * 64, h)
    os.unlink(store.artifact_path(h))
    assert None is store.lookup_action("k" * 64)


def test_lookup_action_is_none_for_a_corrupt_entry(tmp_path: Path) -> None:
    """A damaged action file is a miss, not an error."""
    store = Store(str(tmp_path))
    (tmp_path / "actions" / f"{'k' * 64}.json").write_text("{not json")
    (tmp_path / "actions" / f"{'j' * 64}.json").write_text('{"other": 1}')
    assert (None, None) == (store.lookup_action("k" * 64), store.lookup_action("j" * 64))


def test_lookup_action_evicts_an_artifact_that_fails_its_hash(tmp_path: Path) -> None:
    """Bytes appended to an artifact: the action cache misses and the bad file
    is gone, so the next build writes the right bytes again."""
    store = Store(str(tmp_path))
    data = b"artifact bytes"
    h = sha(data)
    store.put_artifact(h, data, {})
    store.record_action("k" * 64, h)
    so = Path(store.artifact_path(h))
    os.chmod(so, 0o644)
    with open(so, "ab") as f:
        f.write(b"7 bytes")
    assert not store.artifact_intact(h)
    assert None is store.lookup_action("k" * 64)
    assert not so.exists()
    store.put_artifact(h, data, {})
    assert data == so.read_bytes() and store.artifact_intact(h)
    assert h == store.lookup_action("k" * 64)


def test_put_artifact_rewrites_a_corrupt_copy(tmp_path: Path) -> None:
    """An artifact overwritten in place (same name, wrong bytes) is replaced
    by the next put of the right bytes, not kept because the name exists."""
    store = Store(str(tmp_path))
    data = b"the real artifact"
    h = sha(data)
    store.put_artifact(h, data, {})
    so = Path(store.artifact_path(h))
    os.chmod(so, 0o644)
    so.write_bytes(b"the fake artifact")
    store.put_artifact(h, data, {})
    assert data == so.read_bytes()
    assert 0o444 == mode_of(so)


@pytest.mark.parametrize(
    "value, expected",
    [
        ("a" * 64, True),
        ("0123456789abcdef" * 4, True),
        ("A" * 64, False),
        ("a" * 63, False),
        ("a" * 65, False),
        ("../x", False),
        ("../" + "a" * 61, False),
        ("a" * 64 + "/../x", False),
        ("a" * 64 + "\n", False),
        ("", False),
    ],
)
def test_is_hash(value: str, expected: bool) -> None:
    """Only 64 lower-case hex digits count as a hash."""
    assert expected == is_hash(value)


def test_store_refuses_path_traversal(tmp_path: Path) -> None:
    """Names like '../x' never reach the file system."""
    secret = tmp_path / "secret.json"
    secret.write_text('{"leaked": true}')
    store = Store(str(tmp_path / "store"))
    with pytest.raises(ValueError):
        store.artifact_path("../x")
    assert (False, None, None) == (
        store.has_artifact("../../secret"),
        store.manifest("../../secret"),
        store.source("../../secret"),
    )
