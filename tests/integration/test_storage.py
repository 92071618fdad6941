"""Disk full and corrupt artifacts are ordinary errors: a deploy on a full
disk answers JSON 507 and changes nothing, deploys work again once space is
back, and an artifact that fails its hash check is rebuilt from its source
on the next deploy instead of failing forever."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.conftest import Server, fill_disk, route_module, small_disk, unique


@pytest.fixture
def disk(tmp_path: Path) -> Iterator[Path]:
    with small_disk(tmp_path / "small", 24) as mnt:
        yield mnt


def leftovers(store: Path) -> list[str]:
    return sorted(str(p.relative_to(store)) for p in store.rglob(".tmp-*"))


def test_deploy_on_a_full_disk_is_507_and_recovers(make_server, disk: Path) -> None:
    s: Server = make_server(data_dir=disk / "data", env={"CWEB_CACHE_BYTES": "1M"})
    first_path = f"/{unique('before')}"
    first = unique("before")
    assert s.deploy(route_module(first, first_path, "before")).status_code == 200
    with s.client() as c:
        modules_before = [m["module_hash"] for m in c.get("/modules").json()["modules"]]
    fill_disk(disk / "filler")
    try:
        later_path = f"/{unique('later')}"
        later_src = route_module(unique("later"), later_path, "later")
        r = s.deploy(later_src)
        assert r.status_code == 507, r.text
        assert r.json()["error"] == "insufficient_storage"
        assert "disk" in r.json()["message"]
        with s.client() as c:
            assert c.get(first_path).text == "before"
            assert c.get(later_path).status_code == 404
            assert [m["module_hash"] for m in c.get("/modules").json()["modules"]] == modules_before
            assert c.get("/healthz").status_code == 200
        assert leftovers(disk / "data" / "store") == []
    finally:
        (disk / "filler").unlink(missing_ok=True)
    r = s.deploy(later_src)
    assert r.status_code == 200, r.text
    with s.client() as c:
        assert c.get(later_path).text == "later"
        assert c.get(first_path).text == "before"


def test_a_corrupt_artifact_is_rebuilt_on_the_next_deploy(server: Server) -> None:
    """Seven bytes appended to an artifact in the store (what a module could do
    before workers were confined): redeploying the same source rebuilds it;
    the route answers and the stored bytes match their hash again."""
    name = unique("corrupt")
    path = f"/{unique('corrupt')}"
    source = route_module(name, path, "intact")
    r = server.deploy(source)
    assert r.status_code == 200, r.text
    module_hash = r.json()["module_hash"]
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.delete(f"/modules/{name}").status_code == 200
    so = server.data_dir / "store" / "artifacts" / f"{module_hash}.so"
    os.chmod(so, 0o644)
    with open(so, "ab") as f:
        f.write(b"7 bytes")
    r = server.deploy(source)
    assert r.status_code == 200, r.text
    assert (r.json()["module_hash"], r.json()["cache_hit"]) == (module_hash, False)
    assert hashlib.sha256(so.read_bytes()).hexdigest() == module_hash
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.get(path).text == "intact"
    # And the next deploy of it is a cache hit again.
    with httpx.Client(base_url=server.url, timeout=60) as c:
        assert c.delete(f"/modules/{name}").status_code == 200
    r = server.deploy(source)
    assert (r.status_code, r.json()["cache_hit"]) == (200, True)
