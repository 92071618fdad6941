"""GET /_cweb/nodes, and the calls one node makes to another during a
deploy (POST /_cweb/cluster/prepare, /_cweb/cluster/sync). Under /_cweb like
every control call: the API key is required when one is configured."""

from __future__ import annotations

import time

from fastapi import APIRouter, Request
from pydantic import BaseModel, Field

from api.errors import NotFound

router = APIRouter()


class PrepareBody(BaseModel):
    module_hash: str = Field(pattern="^[0-9a-f]{64}$")


class SyncBody(BaseModel):
    name: str = Field(min_length=1, max_length=256)


def _cluster(request: Request):  # noqa: ANN202 - api.cluster.cluster.Cluster
    cluster = getattr(request.app.state.cweb, "cluster", None)
    if cluster is None:
        raise NotFound("this node is not part of a cluster (CWEB_DATABASE_URL is not PostgreSQL)", code="not_clustered")
    return cluster


@router.get("/_cweb/nodes", tags=["observability"])
async def nodes(request: Request) -> dict:
    """Every node: its URL, start, heartbeat age, whether it counts as live,
    and the hash it serves per module (and where it forwards placement-one
    modules). Without a cluster, this node alone."""
    st = request.app.state.cweb
    cluster = getattr(st, "cluster", None)
    if cluster is not None:
        listed = await cluster.nodes.list()
        for n in listed:
            if n["self"]:  # this node's own view is current, its row up to a heartbeat old
                n["modules"], n["forwards"] = cluster.serving()
        return {"node": st.settings.node_id, "ttl_s": st.settings.node_ttl_s, "nodes": listed}
    now = time.time()
    return {"node": st.settings.node_id, "ttl_s": None, "nodes": [{
        "node": st.settings.node_id, "url": st.settings.node_url, "started": st.started_at, "last_seen": now,
        "heartbeat_age_s": 0.0, "live": True, "self": True,
        "modules": {n: v.module_hash for n, v in st.host.active.items()}, "forwards": {},
    }]}


@router.post("/_cweb/cluster/prepare", tags=["cluster"], include_in_schema=False)
async def prepare(body: PrepareBody, request: Request) -> dict:
    """Load an artifact without serving it: the first half of a deploy another node drives."""
    return await _cluster(request).prepare(body.module_hash)


@router.post("/_cweb/cluster/sync", tags=["cluster"], include_in_schema=False)
async def sync(body: SyncBody, request: Request) -> dict:
    """Serve a module as the registry says now: the swap of a deploy another node drives."""
    return await _cluster(request).sync(body.name, driven=True)
