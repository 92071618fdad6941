"""The status page's change feed (api/observe.py Changes): bounded per
follower, a `resync` instead of unbounded memory; request totals per module."""

from __future__ import annotations

import asyncio

from api.metrics import Metrics
from api.observe import CHANGES_QUEUE, Changes, module_totals


def test_a_follower_that_falls_behind_is_told_to_resync_once_and_memory_stays_bounded() -> None:
    async def scenario() -> None:
        changes = Changes()
        slow, fast = changes.follow(), changes.follow()
        assert changes.wanted.is_set()
        for i in range(CHANGES_QUEUE * 3):
            changes.publish("build", {"i": i})
            if not fast.empty():
                fast.get_nowait()
        assert CHANGES_QUEUE + 1 == slow.qsize()
        items = [slow.get_nowait() for _ in range(slow.qsize())]
        assert [("resync", {})] == [x for x in items if x[0] == "resync"] and ("resync", {}) == items[-1]
        assert fast.empty()
        changes.unfollow(slow)
        changes.unfollow(fast)
        assert not changes.wanted.is_set() and not changes.followers

    asyncio.run(scenario())


def test_module_totals_sum_routes_and_count_5xx_as_errors() -> None:
    m = Metrics()
    for status, seconds in ((200, 0.001), (200, 0.003), (404, 0.002), (502, 0.010)):
        m.observe_request("a", "/a", status, seconds)
    m.observe_request("a", "/a/[0-9]+", 504, 0.5)
    m.observe_request("b", "/b", 200, 0.25)
    totals = module_totals(m)
    assert {"requests": 5, "errors": 2} == {k: totals["a"][k] for k in ("requests", "errors")}
    assert abs(totals["a"]["seconds"] - 0.516) < 1e-9
    assert {"requests": 1, "errors": 0, "seconds": 0.25} == totals["b"]
