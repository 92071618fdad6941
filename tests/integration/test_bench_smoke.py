"""The benchmark suite's quick mode runs end to end.

A smoke test, not a performance assertion: `BENCH_QUICK=1 bench/run.py
--only trivial,deploy` starts nginx, the FastAPI baseline and cweb, drives
them with wrk and times deploys; the test checks that every expected
workload was measured and came out as a positive number, never how fast.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(
    shutil.which("wrk") is None or not (shutil.which("nginx") or Path("/usr/sbin/nginx").exists()),
    reason="needs wrk and nginx (Debian packages)",
)


@pytest.mark.timeout(240)
def test_quick_bench_measures_trivial_route_and_deploys(tmp_path: Path) -> None:
    """Quick mode writes results.json with trivial-route and deploy workloads, all positive, and no hot-swap errors."""
    out = tmp_path / "results.json"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CWEB_")}
    env["BENCH_QUICK"] = "1"
    run = subprocess.run(
        [sys.executable, "bench/run.py", "--only", "trivial,deploy", "--out", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=200,
    )
    assert 0 == run.returncode, run.stdout[-3000:] + run.stderr[-3000:]

    results = json.loads(out.read_text())
    measured = {(w["name"], w["system"]): w for w in results["workloads"]}
    expected = {("trivial_c1", s) for s in ("cweb", "baseline", "nginx")}
    expected |= {("trivial_c64", s) for s in ("cweb", "baseline", "nginx")}
    expected |= {("deploy_cold", "cweb"), ("gcc_alone", "gcc"), ("deploy_cache_hit", "cweb"), ("hot_swap_c64", "cweb")}
    assert expected <= set(measured), sorted(set(measured))
    assert ("trivial_c256", "cweb") not in measured  # quick mode skips it
    for key in expected:
        assert measured[key]["value"] > 0, measured[key]
    for name in ("trivial_c1", "trivial_c64"):
        w = measured[(name, "cweb")]
        assert 0 < w["p50_ms"] <= w["p99_ms"], w
        assert w["ratio_to_nginx"] > 0 and w["ratio_to_baseline"] > 0, w
    assert 0 == measured[("hot_swap_c64", "cweb")]["errors"], measured[("hot_swap_c64", "cweb")]
    assert measured[("deploy_cache_hit", "cweb")]["samples"] == 10
    assert results["machine"]["nproc"] > 0 and results["machine"]["python"]
    assert "| trivial_c64 | cweb |" in run.stdout
