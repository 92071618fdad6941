"""Signed provenance end to end: a real server builds and signs, the runtime
agent refuses to load an artifact whose signed manifest was tampered with,
stripped of its signature or signed by a builder it does not trust."""

from __future__ import annotations

import json
import os
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from runtime import provenance
from tests.conftest import Server, route_module, unique


def _rewrite(path: Path, change) -> None:  # type: ignore[no-untyped-def]
    manifest = json.loads(path.read_text())
    change(manifest)
    os.chmod(path, 0o644)
    path.write_text(json.dumps(manifest))


def _two_versions(server: Server) -> tuple[str, str, str]:
    name = unique("prov")
    v1 = server.deploy(route_module(name, f"/{name}", "one"), "prov.c")
    assert 200 == v1.status_code, v1.text
    v2 = server.deploy(route_module(name, f"/{name}", "two"), "prov.c")
    assert 200 == v2.status_code, v2.text
    return name, v1.json()["module_hash"], v2.json()["module_hash"]


def _rollback(server: Server, name: str, module_hash: str):  # type: ignore[no-untyped-def]
    with server.client() as c:
        return c.post(f"/modules/{name}/rollback", json={"module_hash": module_hash})


def test_signed_artifacts_load_and_show_their_chain(make_server) -> None:  # type: ignore[no-untyped-def]
    """Every build is signed by the builder's key; GET /artifacts/{hash} shows the statement verified."""
    server = make_server()
    name, h1, h2 = _two_versions(server)
    with server.client() as c:
        art = c.get(f"/artifacts/{h2}").json()
    chain = art["provenance"]
    assert (True, True, None) == (chain["signed"], chain["verified"], chain["error"])
    st = chain["statement"]
    assert (h2, art["build_key"], art["source_sha256"], "local") == (st["module_hash"], st["build_key"], st["source_sha256"], st["builder_id"])
    keys = list((server.data_dir / "store" / "builders").glob("*.json"))
    assert [f"{st['key_id']}.json"] == [k.name for k in keys]
    assert 200 == _rollback(server, name, h1).status_code


def test_tampered_manifest_is_refused_by_the_runtime(make_server) -> None:  # type: ignore[no-untyped-def]
    """A signed field changed after signing: the rollback to it is 409 artifact_tampered,
    the active version keeps serving, and the chain says why."""
    server = make_server()
    name, h1, h2 = _two_versions(server)
    _rewrite(server.data_dir / "store" / "artifacts" / f"{h1}.json", lambda m: m["provenance"].update(builder_id="mallory"))
    r = _rollback(server, name, h1)
    assert (409, "artifact_tampered") == (r.status_code, r.json()["error"]), r.text
    assert "signature does not verify" in r.json()["message"]
    with server.client() as c:
        assert "two" == c.get(f"/{name}").text
        chain = c.get(f"/artifacts/{h1}").json()["provenance"]
    assert (False, "artifact_tampered") == (chain["verified"], chain["error"])


def test_unsigned_manifest_is_refused_by_the_runtime(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server()
    name, h1, _ = _two_versions(server)
    _rewrite(server.data_dir / "store" / "artifacts" / f"{h1}.json", lambda m: m.pop("provenance"))
    r = _rollback(server, name, h1)
    assert (409, "artifact_unsigned") == (r.status_code, r.json()["error"]), r.text
    assert "no signed provenance" in r.json()["message"]


def test_manifest_signed_by_an_unknown_key_is_refused(make_server) -> None:  # type: ignore[no-untyped-def]
    """Re-signed with a key no builder registered (a forger who can write the
    artifacts but not the builders' keys): untrusted_builder."""
    server = make_server()
    name, h1, _ = _two_versions(server)
    forger = provenance.Signer("local", Ed25519PrivateKey.generate())

    def resign(m: dict) -> None:
        m["provenance"] = forger.sign(build_key=m["build_key"], toolchain={"forged": True},
                                      source_sha256=m["source_sha256"], module_hash=m["module_hash"])

    _rewrite(server.data_dir / "store" / "artifacts" / f"{h1}.json", resign)
    r = _rollback(server, name, h1)
    assert (409, "untrusted_builder") == (r.status_code, r.json()["error"]), r.text


def test_restart_refuses_a_tampered_active_artifact_and_serves_the_rest(make_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """On restart the restore re-checks every signature: a tampered active
    artifact is not loaded; an intact one is."""
    server = make_server()
    bad, good = unique("provbad"), unique("provgood")
    hb = server.deploy(route_module(bad, f"/{bad}", "bad"), "b.c").json()["module_hash"]
    assert 200 == server.deploy(route_module(good, f"/{good}", "good"), "g.c").status_code
    server.stop()
    _rewrite(server.data_dir / "store" / "artifacts" / f"{hb}.json", lambda m: m.update(source_sha256="0" * 64))
    again = make_server(server.data_dir)
    with again.client() as c:
        assert "good" == c.get(f"/{good}").text
        assert 404 == c.get(f"/{bad}").status_code
    assert "manifest field 'source_sha256' differs from the signed one" in again.logs()
