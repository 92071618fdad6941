"""Anonymous clients cannot stall the event loop: while hostile requests are
processed (pathological route regexes, huge forms), a trivial route on the
same server keeps answering within a small bound."""

from __future__ import annotations

import asyncio
import time

import httpx

from tests.conftest import unique
from tests.security.conftest import OK_BODY, SENTINEL_PATH, SecServer, module

# The sentinel's worst latency while an attack runs. Generous for a shared,
# loaded 2-core machine; the stalls this guards against were 1-30 s.
STALL_BOUND_S = 0.75


async def _sentinel_latencies(url: str, stop: asyncio.Event, out: list[float]) -> None:
    async with httpx.AsyncClient(base_url=url, timeout=30) as c:
        while not stop.is_set():
            t0 = time.perf_counter()
            r = await c.get(SENTINEL_PATH)
            out.append(time.perf_counter() - t0)
            assert r.status_code == 200, r.text
            await asyncio.sleep(0.02)


def under_attack(s: SecServer, attack) -> tuple[list[float], object]:
    """Run attack(client) while timing the sentinel route; (latencies, attack's result)."""

    async def main() -> tuple[list[float], object]:
        stop = asyncio.Event()
        latencies: list[float] = []
        probe = asyncio.create_task(_sentinel_latencies(s.url, stop, latencies))
        await asyncio.sleep(0.1)
        try:
            async with httpx.AsyncClient(base_url=s.url, timeout=60, limits=httpx.Limits(max_connections=64)) as c:
                result = await attack(c)
        finally:
            stop.set()
            await probe
        return latencies, result

    return asyncio.run(main())


def test_pathological_route_regex_does_not_stall_the_server(healthy: SecServer) -> None:
    """`/r/(a+)+b` with 30-character paths (seconds each for a backtracking
    engine) hammered concurrently: every request answers 404 at once and the
    sentinel route stays fast."""
    prefix = f"/{unique('re')}"
    r = healthy.deploy(module(unique("regex"), [(prefix + "/(a+)+b", "h", OK_BODY), (prefix + "/n/[[:digit:]]+", "d", OK_BODY)]))
    assert r.status_code == 200, r.text
    evil = prefix + "/" + "a" * 30

    async def attack(c: httpx.AsyncClient) -> list[int]:
        codes: list[int] = []
        for _ in range(5):
            answers = await asyncio.gather(*(c.get(evil) for _ in range(60)))
            codes += [a.status_code for a in answers]
        return codes

    t0 = time.perf_counter()
    latencies, codes = under_attack(healthy, attack)
    elapsed = time.perf_counter() - t0
    assert codes == [404] * 300
    assert latencies and max(latencies) < STALL_BOUND_S, f"sentinel worst {max(latencies):.3f} s"
    assert elapsed < 20, f"300 pathological requests took {elapsed:.1f} s"
    with healthy.client() as c:
        assert c.get(prefix + "/aaab").text == "ok"
        assert c.get(prefix + "/n/2026").text == "ok"
        assert c.get(prefix + "/n/20x6").status_code == 404
