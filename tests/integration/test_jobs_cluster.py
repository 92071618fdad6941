"""Jobs across nodes: two real `python -m api` processes on one real
PostgreSQL database (tests/databases.py) and one shared store directory, as
two nodes of a cluster (docs/CLUSTER.md, "Jobs across nodes").

The module is deployed through node A. Node B learns of every job from the
database (NOTIFY cweb_jobs, and a periodic resync) and runs any of them on
the exact artifact it is pinned to, loaded from the shared store. Where a job
ran is in its `started` event ({"attempt": n, "node": id}).
"""

from __future__ import annotations

import concurrent.futures
import signal
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from tests.conftest import SPIN_JOB, WORKER_TOKEN_C, Server, unique
from tests.integration.test_jobs import deploy_ok, events, submit, types, wait_job, ws_read_all, ws_url

# Two nodes start per test (20-40 s each under load).
pytestmark = pytest.mark.timeout(600)

# Seconds a lease lasts without renewal here: a killed node's jobs move on after this.
LEASE_S = 3

CLUSTER = r"""
#include <cweb.h>
#include <unistd.h>
""" + WORKER_TOKEN_C + r"""
static long long runs;

static long long int_field(const job_payload_t *p, const char *key, long long fallback) {
    json_error_t err;
    json_t *root = json_loadb(p->json, p->json_len, 0, &err);
    json_t *v = root ? json_object_get(root, key) : NULL;
    long long out = json_is_integer(v) ? json_integer_value(v) : fallback;
    json_decref(root);
    return out;
}

/* count {"ms": M}: sleeps M ms; the result numbers this run among the runs
   of this worker process, so a job run twice leaves a gap in the numbers. */
static int run_count(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx;
    usleep((useconds_t)(int_field(p, "ms", 0) * 1000));
    long long n = __atomic_add_fetch(&runs, 1, __ATOMIC_SEQ_CST);
    char out[96];
    snprintf(out, sizeof(out), "{\"n\": %lld, \"worker\": \"%lld\"}", n, worker_token);
    job->set_result(job, out);
    return 0;
}

/* hold: waits, quietly, until canceled (at most 60 s). */
static int run_hold(struct cweb_context *ctx, const job_payload_t *p, job_ctx_t *job) {
    (void)ctx; (void)p;
    for (int i = 0; i < 3000; i++) {
        if (job->is_canceled(job)) {
            job->set_error(job, "canceled");
            return -1;
        }
        usleep(20 * 1000);
    }
    job->set_result(job, "{}");
    return 0;
}
""" + SPIN_JOB + r"""
export module_t config = {
    .name = "@NAME@", .author = "tests",
    .jobs = { {"count", run_count, NULL}, {"spin", run_spin, NULL}, {"hold", run_hold, NULL} }, .job_size = 3,
};
"""


def start_node(make_server, tmp_path: Path, postgres_url: str, name: str, **env: str) -> Server:
    (tmp_path / name).mkdir()
    return make_server(data_dir=tmp_path / name / "data", env={
        "CWEB_DATABASE_URL": postgres_url,
        "CWEB_STORE_DIR": str(tmp_path / "store"),
        "CWEB_NODE_ID": name,
        "CWEB_JOB_LEASE_S": str(LEASE_S),
        **env,
    })


def deploy_cluster_module(node: Server) -> str:
    name = unique("cluster")
    deploy_ok(node, CLUSTER.replace("@NAME@", name))
    return name


def all_events(node: Server, job_uuid: str) -> list[dict]:
    """Every stored event of the job, page after page."""
    out: list[dict] = []
    while page := events(node, job_uuid, out[-1]["event_id"] if out else 0):
        out += page
    return out


def ran_on(node: Server, job_uuid: str) -> list[str]:
    """The node of every attempt of the job, in order."""
    return [e["data"]["node"] for e in all_events(node, job_uuid) if e["type"] == "started"]


def wait_started(node: Server, job_uuid: str, timeout: float = 30.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        where = ran_on(node, job_uuid)
        if where:
            return where[-1]
        time.sleep(0.05)
    raise AssertionError(f"job {job_uuid} did not start in {timeout} s")


@pytest.fixture
def cluster(postgres_url: str, make_server, tmp_path: Path):
    """start(name, **env) starts a node of the cluster (a `python -m api` on the test's database)."""
    return lambda name, **env: start_node(make_server, tmp_path, postgres_url, name, **env)


def test_a_job_submitted_on_one_node_runs_on_another(cluster) -> None:
    """Node A has one job thread: of two waiting jobs submitted on A, one
    starts on B; both nodes answer its state and events, and a cancel sent
    to either node stops either job, wherever it runs."""
    a = cluster("a", CWEB_JOB_THREADS="1")
    b = cluster("b")
    module = deploy_cluster_module(a)
    holding = [submit(a, module, "hold", {}) for _ in range(2)]
    where = [wait_started(a, u) for u in holding]
    assert "b" in where, where
    on_b = holding[where.index("b")]
    assert ["b"] == ran_on(a, on_b) == ran_on(b, on_b)
    assert ["created", "started"] == types(events(b, on_b))[:2]
    for node, job_uuid in zip((a, b), holding, strict=True):
        with node.client() as c:
            assert {"job_uuid": job_uuid, "state": "canceled"} == c.post(f"/jobs/{job_uuid}/cancel").json()
    for job_uuid in holding:
        job = wait_job(b, job_uuid)
        assert ("canceled", 1) == (job["state"], job["attempts"])
        assert "canceled" == types(all_events(a, job_uuid))[-1]
    job_uuid = submit(a, module, "count", {})
    assert "done" == wait_job(b, job_uuid)["state"]


def test_two_hundred_jobs_over_two_nodes_each_run_exactly_once(cluster) -> None:
    """200 jobs submitted concurrently: all done, each with one attempt and
    one `started` event, the work spread over both nodes, and within each
    worker the runs are numbered 1..k with no gap and no repeat (a job run
    a second time, its result dropped by the fence, would leave a gap)."""
    a = cluster("a", CWEB_JOB_THREADS="1")
    b = cluster("b")
    module = deploy_cluster_module(a)
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        uuids = list(pool.map(lambda i: submit(a, module, "count", {"ms": 20, "i": i}), range(200)))
    assert 200 == len(set(uuids))
    jobs = [wait_job(b, u, timeout=120) for u in uuids]
    assert {"done": 200} == Counter(j["state"] for j in jobs)
    assert {1} == {j["attempts"] for j in jobs}
    where: Counter = Counter()
    for u in uuids:
        evs = events(b, u)
        assert ["created", "started", "done"] == types(evs), evs
        where[evs[1]["data"]["node"]] += 1
    assert {"a", "b"} == set(where), where
    per_worker: dict[str, list[int]] = {}
    for j in jobs:
        per_worker.setdefault(j["result"]["worker"], []).append(j["result"]["n"])
    for worker, numbers in per_worker.items():
        assert list(range(1, len(numbers) + 1)) == sorted(numbers), f"worker {worker} ran {sorted(numbers)}"


def test_a_killed_nodes_jobs_finish_on_the_other_after_the_lease(cluster) -> None:
    """SIGKILL of node A while a job runs there and others wait: the running
    job is re-run on B once A's lease ran out (a second attempt, within a few
    leases, not the job's timeout), and every job A acknowledged ends done:
    none is lost."""
    a = cluster("a", CWEB_JOB_THREADS="1")
    module = deploy_cluster_module(a)
    on_a = submit(a, module, "hold", {}, max_attempts=2)
    assert "a" == wait_started(a, on_a)
    b = cluster("b")
    # Two attempts: one A may have started when it died is run again (at
    # least once), not failed as `interrupted`.
    acknowledged = [submit(a, module, "count", {"ms": 10}, max_attempts=2) for _ in range(20)]
    killed_at = time.time()
    a.stop(signal.SIGKILL)
    jobs = [wait_job(b, u, timeout=60) for u in acknowledged]
    assert ["done"] * 20 == [j["state"] for j in jobs], [(j["state"], j["error"]) for j in jobs if j["state"] != "done"]
    deadline = time.monotonic() + 60
    while ran_on(b, on_a) != ["a", "b"]:
        assert time.monotonic() < deadline, ran_on(b, on_a)
        time.sleep(0.1)
    moved_after = [e for e in all_events(b, on_a) if e["type"] == "started"][-1]["ts_ms"] / 1000 - killed_at
    assert moved_after < 10 * LEASE_S, f"the job moved to B {moved_after:.1f} s after the kill"
    retry = [e for e in all_events(b, on_a) if e["type"] == "retry"]
    assert 1 == len(retry) and "lease" in retry[0]["data"]["reason"]
    with b.client() as c:
        assert "canceled" == c.post(f"/jobs/{on_a}/cancel").json()["state"]
    job = wait_job(b, on_a)
    assert ("canceled", 2) == (job["state"], job["attempts"])


def test_events_of_a_job_running_on_one_node_stream_to_a_subscriber_on_another(cluster) -> None:
    """A job spins on A, emitting progress; a WebSocket on B gets its events
    live (created, started on A, progress ...) and, after a cancel sent to B,
    the terminal event: in order, each once, the same as A stored."""
    a = cluster("a")
    module = deploy_cluster_module(a)
    job_uuid = submit(a, module, "spin", {})
    assert "a" == wait_started(a, job_uuid)
    b = cluster("b")

    def cancel_when_streaming() -> None:
        time.sleep(1.5)
        with b.client() as c:
            c.post(f"/jobs/{job_uuid}/cancel")

    canceller = threading.Thread(target=cancel_when_streaming)
    got, _ = ws_read_all(ws_url(b, job_uuid), timeout=60, on_open=canceller.start)
    canceller.join()
    kinds = [m["type"] for m in got]
    assert kinds[:2] == ["created", "started"] and kinds[-1] == "canceled", kinds
    assert got[1]["data"]["node"] == "a"
    assert kinds.count("progress") >= 10, kinds
    ids = [m["event_id"] for m in got]
    assert ids == sorted(set(ids))
    assert [e["event_id"] for e in all_events(a, job_uuid)] == ids
