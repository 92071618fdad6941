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

import pytest

from tests.conftest import route_module, unique
from tests.containers.conftest import COMPOSE_FILE, Stack
from tests.integration.test_builders import SLOW_BODY

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

REPLICAS = 3


def scale(stack: Stack, compose_bin: str, replicas: int) -> subprocess.CompletedProcess:
    """`up --scale builder=N` on the session's own project (stack.project: this
    module's import of the conftest would make a project name of its own)."""
    return subprocess.run(
        [compose_bin, "-p", stack.project, "-f", str(COMPOSE_FILE), "up", "-d", "--no-build", "--no-recreate",
         "--scale", f"builder={replicas}"],
        cwd=str(COMPOSE_FILE.parent), env=stack.env, capture_output=True, text=True, timeout=300,
    )


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
        answers = list(pool.map(lambda n: farm_stack.deploy(route_module(n, f"/{n}", n), f"{n}.c"), names))
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
        answers = list(pool.map(lambda _: farm_stack.deploy(source, "join.c"), range(5)))
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

    def deploy() -> None:
        answer["r"] = farm_stack.deploy(source, "slow.c")

    t = threading.Thread(target=deploy)
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
