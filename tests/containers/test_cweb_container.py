"""cweb_testing's testcontainers modules on the real images: CwebContainer
(one container, the embedded server) and CwebComposeStack (docker-compose.yml),
each driven only through the helpers module authors use."""

from __future__ import annotations

import os

# testcontainers reads these when it is imported: no Ryuk (its image cannot
# be pulled here; our classes remove what they start), and the published
# ports are reached on 127.0.0.1.
os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")

import pytest  # noqa: E402

from cweb_testing import CwebComposeStack, CwebContainer, DeployError  # noqa: E402
from tests.conftest import EXAMPLES, ROOT  # noqa: E402
from tests.integration.test_testing_plugin import SECRET_MODULE  # noqa: E402

SAMPLE_MODULES = ROOT / "tests" / "user_project" / "modules"

pytestmark = [pytest.mark.containers, pytest.mark.timeout(1800)]


def exercise(cweb) -> None:  # type: ignore[no-untyped-def]
    """What docs/TESTING.md promises of every cweb under test: route, job, socket, logs, refusal, reset."""
    assert "counter" == cweb.deploy(EXAMPLES / "counter.c")["name"]
    r = cweb.get("/counter")
    assert 200 == r.status_code and "Counter: 1" in r.text, r.text

    cweb.deploy(EXAMPLES / "job_sum.c")
    job = cweb.run_job("job_sum", "sum", {"n": 100}, timeout=60)
    assert ("done", {"n": 100, "sum": 5050}) == (job["state"], job["result"]), job

    cweb.deploy(EXAMPLES / "websocket.c")
    with cweb.websocket("/websocket") as ws:
        ws.send("ping")
        assert "You: ping" == ws.recv(timeout=10)

    cweb.deploy(SAMPLE_MODULES / "greet.c")
    assert "hello ada" == cweb.get("/greet", params={"name": "ada"}).text
    assert "greeted ada" in cweb.logs("greet", wait_for="greeted ada")

    with pytest.raises(DeployError) as refused:
        cweb.deploy(SAMPLE_MODULES / "broken.c")
    assert "broken.c:6:18: error: expected expression" in str(refused.value)

    anonymous = cweb.post("/mgnt", files={"code": ("greet.c", (SAMPLE_MODULES / "greet.c").read_bytes())})
    assert 401 == anonymous.status_code

    cweb.put_secret("secretive", "TOKEN", "s3cr3t")
    cweb.deploy(SECRET_MODULE)
    assert "s3cr3t" == cweb.get("/secretive").text

    cweb.reset()
    assert [] == cweb.modules()
    assert 404 == cweb.get("/counter").status_code
    cweb.deploy(SECRET_MODULE)
    assert "(none)" == cweb.get("/secretive").text  # the reset deleted the secrets too


def test_cweb_container_runs_the_embedded_server_built_from_the_checkout(images, docker_engine) -> None:  # type: ignore[no-untyped-def]
    """CwebContainer() with no image: cweb-builder:dev from scripts/images.sh, python -m api in it, removed on exit."""
    with CwebContainer() as cweb:
        assert cweb.get_url().startswith("http://127.0.0.1:")
        assert {"status": "ok", "builds": "unsandboxed", "workers": "landlock"} == {
            k: v for k, v in cweb.get("/healthz").json().items() if k in ("status", "builds", "workers")
        }
        exercise(cweb)
        container = cweb.get_wrapped_container()
        container.reload()
        attrs = container.attrs
        labels = attrs["Config"]["Labels"]
        assert ("container", "true") == (labels["org.cweb.testing"], labels["org.testcontainers"])
        uid = int(attrs["Config"]["User"].split(":")[0])
        assert 20000 <= uid < 60000  # not the images' 10001/10002: RLIMIT_NPROC counts per uid, host-wide
        assert attrs["HostConfig"]["ReadonlyRootfs"] and ["ALL"] == attrs["HostConfig"]["CapDrop"]
        assert "127.0.0.1" == attrs["HostConfig"]["PortBindings"]["8080/tcp"][0]["HostIp"]
        container_id = container.id
    assert [] == docker_engine.containers.list(all=True, filters={"id": container_id})


def test_cweb_compose_stack_runs_docker_compose_yml(images, docker_engine) -> None:  # type: ignore[no-untyped-def]
    """CwebComposeStack: api, builder and runtime under a project of its own; down -v on exit."""
    with CwebComposeStack() as cweb:
        assert "remote" == cweb.get("/healthz").json()["builds"]
        exercise(cweb)
        project = cweb.project
        services = {c.labels["com.docker.compose.service"]
                    for c in docker_engine.containers.list(filters={"label": f"com.docker.compose.project={project}"})}
        assert {"api", "builder", "runtime"} == services
    label = f"com.docker.compose.project={project}"
    assert [] == docker_engine.containers.list(all=True, filters={"label": label})
    assert [] == docker_engine.volumes.list(filters={"label": label})
