"""cluster/stack.yml on a real single-node swarm, driven through the proxy's
published port: the stack comes up healthy, only the proxy publishes a port,
and every service runs hardened and isolated as promised (docs/CLUSTER.md).
What the cluster does (deploys, failover, jobs, placement) is in
test_swarm_cluster.py, on the same stack."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import BUILDERS, NODES, Cluster

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]

SERVICES = ("proxy", "node", "builder", "postgres", "s3")
# What each service's containers run as (Dockerfile.*: USER).
USERS = {"node": "10001", "builder": "10002", "postgres": "100", "s3": "10002", "proxy": "haproxy"}


def inspect_service(cluster: Cluster, name: str) -> dict:
    return cluster.engine.api.inspect_service(cluster.service(name))  # type: ignore[attr-defined]


def exec_python(container, code: str) -> tuple[int, str]:  # type: ignore[no-untyped-def]
    code_, out = container.exec_run(["python3", "-c", code])
    return code_, out.decode("utf-8", "replace")


def test_stack_is_healthy_through_the_proxy(cluster: Cluster) -> None:
    with cluster.client(auth=False) as c:
        r = c.get("/healthz")
    assert 200 == r.status_code, r.text
    assert "ok" == r.json()["status"]
    assert NODES == len(cluster.containers("node"))
    assert BUILDERS == len(cluster.containers("builder"))
    for name in ("proxy", "postgres", "s3"):
        assert 1 == len(cluster.containers(name)), name


def test_only_the_proxy_publishes_a_port_in_host_mode(cluster: Cluster) -> None:
    published = {}
    for name in SERVICES:
        endpoint = inspect_service(cluster, name)["Spec"].get("EndpointSpec", {})
        if endpoint.get("Ports"):
            published[name] = [(p["TargetPort"], p["PublishMode"]) for p in endpoint["Ports"]]
    assert {"proxy": [(8080, "host")]} == published
    # Nodes and builders are found by DNS round-robin (no ingress virtual IP).
    for name in ("node", "builder"):
        assert "dnsrr" == inspect_service(cluster, name)["Spec"]["EndpointSpec"]["Mode"], name


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_runs_hardened_and_limited(cluster: Cluster, name: str) -> None:
    for container in cluster.containers(name):
        container.reload()
        host = container.attrs["HostConfig"]
        assert host["ReadonlyRootfs"] is True, name
        assert ["ALL"] == host["CapDrop"], name
        assert host["Memory"] > 0 and host["NanoCpus"] > 0, name
        assert (host.get("PidsLimit") or 0) > 0, name
        code, out = container.exec_run(["id", "-u", "-n"] if name == "proxy" else ["id", "-u"])
        assert (0, USERS[name]) == (code, out.decode().strip()), name


def test_secrets_are_files_readable_by_the_service_user_only(cluster: Cluster) -> None:
    node = cluster.containers("node")[0]
    code, out = node.exec_run(["stat", "-c", "%a %u", "/run/secrets/api_key", "/run/secrets/database_url"])
    assert (0, ["400 10001", "400 10001"]) == (code, out.decode().split("\n")[:2])
    # The key is in no environment.
    node.reload()
    assert not [e for e in node.attrs["Config"]["Env"] if e.startswith(("CWEB_API_KEY=", "CWEB_DATABASE_URL="))]
    builder = cluster.containers("builder")[0]
    code, out = builder.exec_run(["stat", "-c", "%a %u", "/run/secrets/builder_key"])
    assert (0, "400 10002") == (code, out.decode().strip())


RESOLVE = "import socket,sys\ntry:\n    socket.getaddrinfo(sys.argv[1], 0)\n    print('resolves')\nexcept OSError:\n    print('unknown')\n"
CONNECT_OUT = (
    "import socket\ns = socket.socket()\ns.settimeout(3)\n"
    "try:\n    s.connect(('1.1.1.1', 80))\n    print('connected')\nexcept OSError as e:\n    print('refused', e.errno)\n"
)


def resolves(container, host: str) -> bool:  # type: ignore[no-untyped-def]
    code, out = container.exec_run(["python3", "-c", RESOLVE, host])
    assert 0 == code, out
    return out.decode().strip() == "resolves"


def test_networks_isolate_builders_and_data_as_compose_does(cluster: Cluster) -> None:
    builder = cluster.containers("builder")[0]
    node = cluster.containers("node")[0]
    # Builders reach the object store and are reached by nodes, nothing else.
    assert resolves(builder, "s3")
    assert not resolves(builder, "postgres")
    assert not resolves(builder, "proxy")
    assert resolves(node, "postgres") and resolves(node, "s3") and resolves(node, "tasks.builder")
    # No route out of the host from a builder (every network it is on is internal).
    code, out = builder.exec_run(["python3", "-c", CONNECT_OUT])
    assert 0 == code and out.decode().startswith("refused"), out
    for name, internal in (("edge", False), ("builds", True), ("data", True), ("objects", True)):
        net = cluster.engine.networks.get(f"{cluster.stack}_{name}")  # type: ignore[attr-defined]
        assert ("overlay", internal) == (net.attrs["Driver"], net.attrs["Internal"]), name
