"""The build farm in compose: `docker-compose up --scale builder=3` on the
real docker-compose.yml, driven only through the api's published port.

The module scales the session's stack to three builder replicas and back to
one when it is done, so the other container tests see the stack as before."""

from __future__ import annotations

import concurrent.futures
import subprocess
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from tests.conftest import route_module, unique
from tests.containers.conftest import COMPOSE_FILE, Stack, run
from tests.integration.test_builders import SLOW_BODY

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

REPLICAS = 3


def scale(stack: Stack, compose_bin: str, replicas: int) -> subprocess.CompletedProcess:
    """`up --scale builder=N` on the session's own project (stack.project: this
    module's import of the conftest would make a project name of its own)."""
    return subprocess.run(
        # Only the builder service (--no-deps): the others' health is not this
        # call's business, and a slow healthcheck of theirs must not fail it.
        [compose_bin, "-p", stack.project, "-f", str(COMPOSE_FILE), "up", "-d", "--no-build", "--no-recreate", "--no-deps",
         "--scale", f"builder={replicas}", "builder"],
        cwd=str(COMPOSE_FILE.parent), env=stack.env, capture_output=True, text=True, timeout=300,
    )


def deploy(stack: Stack, source: str, filename: str) -> httpx.Response:
    """POST /mgnt with room for a queue: a burst waits for the builders' slots."""
    with stack.client() as c:
        c.timeout = httpx.Timeout(300, connect=10)
        return c.post("/mgnt", files={"code": (filename, source.encode(), "text/x-c")})


def _builders(stack: Stack) -> list[dict]:
    with stack.client() as c:
        return c.get("/builds").json()["builders"]


@pytest.fixture(scope="module")
def farm_stack(stack: Stack, compose_bin: str) -> Iterator[Stack]:
    """The session's stack with three builder replicas, found by the api through DNS."""
    assert stack.env is not None
    up = scale(stack, compose_bin, REPLICAS)
    assert 0 == up.returncode, up.stderr[-3000:]
    try:
        deadline = time.monotonic() + 120
        while len([b for b in _builders(stack) if b["up"]]) < REPLICAS:
            assert time.monotonic() < deadline, _builders(stack)
            time.sleep(0.5)
        yield stack
    finally:
        down = scale(stack, compose_bin, 1)
        assert 0 == down.returncode, down.stderr[-3000:]


def test_scaled_builders_have_their_own_names(farm_stack: Stack) -> None:
    """Three replicas, three builder ids (their container host names), each with slots."""
    containers = farm_stack.containers("builder")
    assert REPLICAS == len(containers)
    builders = _builders(farm_stack)
    assert REPLICAS == len({b["name"] for b in builders}), builders
    ids = {c.id[:12] for c in containers}
    assert ids == {b["name"].split(":")[0] for b in builders}, (ids, builders)
    assert all(b["slots"] >= 1 for b in builders)


def test_twelve_distinct_modules_at_once_all_succeed_on_several_builders(farm_stack: Stack) -> None:
    """Twelve different modules deployed at once: all 200, and more than one builder compiled them."""
    names = [unique("farm12") for _ in range(12)]
    with concurrent.futures.ThreadPoolExecutor(12) as pool:
        answers = list(pool.map(lambda n: deploy(farm_stack, route_module(n, f"/{n}", n), f"{n}.c"), names))
    for a in answers:
        assert 200 == a.status_code, a.text
    builds = [a.json()["build"] for a in answers]
    assert not any(b["joined"] for b in builds)
    used = {b["builder"] for b in builds}
    assert len(used) > 1, builds
    slots = {b["name"]: b["slots"] for b in _builders(farm_stack)}
    assert used <= set(slots)
    with farm_stack.client(auth=False) as c:
        for n in names:
            assert n == c.get(f"/{n}").text


def test_same_new_source_five_times_at_once_compiles_once(farm_stack: Stack) -> None:
    """Five deploys of one new source at once: one build, four joined, one artifact."""
    name = unique("farmjoin")
    source = route_module(name, f"/{name}", "once")
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        answers = list(pool.map(lambda _: deploy(farm_stack, source, "join.c"), range(5)))
    for a in answers:
        assert 200 == a.status_code, a.text
    builds = [a.json()["build"] for a in answers]
    assert 1 == len({b["id"] for b in builds}), builds
    assert [False, True, True, True, True] == sorted(b["joined"] for b in builds)
    assert 1 == len({a.json()["module_hash"] for a in answers})
    with farm_stack.client() as c:
        build = c.get(f"/builds/{builds[0]['id']}").json()
    assert (4, 1, "done") == (build["joined"], build["attempts"], build["state"])


def test_builder_killed_mid_compile_does_not_fail_the_deploy(farm_stack: Stack) -> None:
    """A slow module's builder is killed while gcc runs: the build is retried on
    another replica and the deploy answers 200 with the module serving."""
    name = unique("farmkill")
    source = route_module(name, f"/{name}", "survived").replace("#include <cweb.h>", "#include <cweb.h>\n" + SLOW_BODY, 1)
    answer: dict = {}

    def slow_deploy() -> None:
        answer["r"] = deploy(farm_stack, source, "slow.c")

    t = threading.Thread(target=slow_deploy)
    t.start()
    running = None
    deadline = time.monotonic() + 120
    with farm_stack.client() as c:
        while running is None and time.monotonic() < deadline:
            found = [b for b in c.get("/builds", params={"state": "running"}).json()["builds"] if b["file"] == "slow.c"]
            running = found[0] if found else None
            time.sleep(0.05)
    assert running is not None, "the slow build never ran"
    victim = next(x for x in farm_stack.containers("builder") if x.id.startswith(running["builder"].split(":")[0]))
    victim.kill()
    t.join(180)
    r = answer["r"]
    assert 200 == r.status_code, r.text
    build = r.json()["build"]
    assert build["id"] == running["id"]
    assert build["builder"] != running["builder"]
    with farm_stack.client() as c:
        after = c.get(f"/builds/{build['id']}").json()
    assert ("done", 2) == (after["state"], after["attempts"])
    with farm_stack.client(auth=False) as c:
        assert "survived" == c.get(f"/{name}").text


def test_runtime_refuses_a_tampered_signed_manifest(stack: Stack) -> None:
    """A manifest changed in the shared store after its builder signed it (done
    here from a builder container, the only one that may write the store): the
    runtime refuses to load that artifact, the rollback is 409 artifact_tampered
    and the active version keeps serving."""
    name = unique("farmtamper")
    first = deploy(stack, route_module(name, f"/{name}", "one"), "t.c")
    assert 200 == first.status_code, first.text
    second = deploy(stack, route_module(name, f"/{name}", "two"), "t.c")
    assert 200 == second.status_code, second.text
    h1 = first.json()["module_hash"]
    with stack.client() as c:
        chain = c.get(f"/artifacts/{h1}").json()["provenance"]
    assert chain["signed"] is True and chain["verified"] in (True, None), chain
    tamper = (
        "import json, os, sys; p = f'/store/artifacts/{sys.argv[1]}.json'; m = json.load(open(p)); "
        "m['provenance']['builder_id'] = 'mallory'; os.chmod(p, 0o644); json.dump(m, open(p, 'w'))"
    )
    code, out = run(stack.containers("builder")[0], "python", "-c", tamper, h1)
    assert 0 == code, out
    with stack.client() as c:
        back = c.post(f"/modules/{name}/rollback", json={"module_hash": h1})
    assert (409, "artifact_tampered") == (back.status_code, back.json()["error"]), back.text
    with stack.client(auth=False) as c:
        assert "two" == c.get(f"/{name}").text
