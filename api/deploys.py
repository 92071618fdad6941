"""Deploys: an uploaded source built and activated (POST /mgnt, api/app.py)
and an earlier artifact activated again (POST /modules/{name}/rollback,
api/versions.py). Both end in the same activate-and-answer
(`Deployer.activate`); only what comes before it differs."""

from __future__ import annotations

import logging
import time
from typing import Any

from api.errors import ApiError, BadRequest, Conflict, NotFound, disk_full_is_507
from api.modules.host import ModuleHost
from api.modules.version import Version, declaration_warnings
from api.registry import RegistryStore
from builder.errors import BuildError
from builder.farm import BuildFarm
from builder.local import BuildResult, display_name

log = logging.getLogger("cweb.api")


class Deployer:
    def __init__(self, builder: BuildFarm, host: ModuleHost, registry: RegistryStore, metrics: Any, builds: Any,
                 cluster: Any = None) -> None:
        self.builder = builder
        self.host = host
        self.registry = registry
        # Several nodes (api/cluster/cluster.py Cluster): a deploy loads and
        # swaps on every live node, the answer says what each did. None: this node alone.
        self.cluster = cluster
        # Prometheus counters (api/metrics.py) and the build history (api/observe.py BuildHistory).
        self.metrics = metrics
        self.builds = builds

    async def activate(self, module_hash: str, *, source_sha256: str, build_key: str, action: str,
                       started: float, placement: str | None = None) -> tuple[Version, dict]:
        """Make module_hash the active version of its module (ModuleHost.activate,
        a full disk is a 507; in a cluster on every node); the version and the
        fields every deploy answer has."""
        extra: dict = {}
        with disk_full_is_507("the deploy"):
            if self.cluster is None:
                version, previous, noop = await self.host.activate(
                    module_hash, source_sha256=source_sha256, build_key=build_key, action=action)
                previous_hash = previous.module_hash if previous else None
            else:
                version, previous_hash, noop, nodes = await self.cluster.activate(
                    module_hash, source_sha256=source_sha256, build_key=build_key, action=action, placement=placement)
                row = await self.cluster.registry.placement(version.name)
                extra = {"nodes": nodes, "placement": row["placement"] if row else "all"}
        return version, {
            "noop": noop,
            "previous_hash": previous_hash,
            "phases": {} if noop else version.phases,
            "deploy_ms": round((time.perf_counter() - started) * 1000, 2),
            **extra,
        }

    async def upload(self, source: bytes, filename: str, *, check: bool, started: float, client: str = "",
                     build_id: str | None = None, reproducible: bool = False, placement: str | None = None) -> dict:
        """Build the source through the farm's queue (client: whose turn it is;
        build_id: a name the client chose, to follow the log); with
        reproducible, build it again without the cache, on another builder
        when there is one, and refuse a mismatch; then activate it, or with
        check only validate it as a deploy would (a dry run). Every build is
        recorded in the history."""
        try:
            with disk_full_is_507("the build"):
                result = await self.builder.build(source, filename, client=client, build_id=build_id)
        except BuildError as exc:
            self.metrics.builds.labels("failed").inc()
            if not check:
                self.metrics.deploys.labels("build_failed", exc.code).inc()
            self.builds.record(file=filename, outcome="failed", error=exc.code, message=exc.message,
                               diagnostics=exc.extra.get("diagnostics", []))
            raise
        joined = bool(result.build.get("joined"))
        built = "cache_hit" if result.cache_hit else "joined" if joined else "compiled"
        self.metrics.builds.labels(built).inc()
        if built == "compiled":
            self.metrics.build_seconds.observe(result.build_ms / 1000)
        record = {"file": filename, "module_hash": result.module_hash, "build_ms": round(result.build_ms, 2),
                  "build_id": result.build.get("id")}
        base = result.summary()
        if reproducible:
            base["reproducible"] = await self._reproduce(source, filename, result, client)
        try:
            if check:
                # A dry run: the server's own validation (declaration, route
                # conflicts with what is active, regexes), not only the compile.
                decl = await self.host.dry_run(result.module_hash)
            else:
                version, answer = await self.activate(result.module_hash, source_sha256=result.source_sha256,
                                                      build_key=result.build_key, action="deploy", started=started,
                                                      placement=placement)
        except ApiError as exc:
            # Compiled, then refused: recorded as a rejection, never as a green build.
            self.builds.record(**record, outcome="rejected", error=exc.code, message=exc.message,
                               diagnostics=result.warnings, check=bool(check), built=built)
            if not check:
                self.metrics.deploys.labels("rejected", exc.code).inc()
            raise
        self.builds.record(**record, outcome=built, diagnostics=result.warnings, check=bool(check))
        if check:
            return {"ok": True, **base, "name": decl["name"],
                    "routes": [{"method": r["method"], "path": r["path"]} for r in decl["routes"]],
                    "websockets": [{"path": w["path"]} for w in decl["websockets"]],
                    "jobs": [{"name": j["name"]} for j in decl["jobs"]],
                    "warnings": base["warnings"] + declaration_warnings(decl, display_name(filename))}
        self.metrics.deploys.labels("unchanged" if answer["noop"] else "activated", "").inc()
        return {
            **version.summary(),
            **base,
            "warnings": base["warnings"] + declaration_warnings(version.decl, display_name(filename)),
            **answer,
        }

    async def _reproduce(self, source: bytes, filename: str, first: BuildResult, client: str) -> dict:
        """The same build again, uncached, away from the first builder; a mismatch is loud."""
        with disk_full_is_507("the build"):
            again = await self.builder.build(source, filename, use_cache=False, client=client,
                                             avoid=first.build.get("builder"))
        report = {
            "match": again.module_hash == first.module_hash,
            "builds": [{"builder": r.manifest.get("builder_id") or r.build.get("builder"), "build_id": r.build.get("id"),
                        "module_hash": r.module_hash} for r in (first, again)],
        }
        if not report["match"]:
            log.error("build %s is NOT reproducible: %s on %s, %s on %s", first.build_key[:12],
                      first.module_hash[:12], report["builds"][0]["builder"], again.module_hash[:12], report["builds"][1]["builder"])
            raise Conflict("the two builds of this source produced different artifacts; nothing was deployed",
                           code="not_reproducible", **report)
        return report

    async def rollback(self, name: str, module_hash: str, *, started: float) -> dict:
        """Make an earlier artifact of name the active one: the same hot swap
        as a deploy (old requests finish on the old version), no compile."""
        known = {v["module_hash"] for v in await self.registry.versions(name)}
        if not known:
            raise NotFound(f"no module named {name!r} was ever deployed", code="module_not_found")
        if module_hash not in known:
            raise NotFound(f"{module_hash[:12]} was never deployed as {name!r}; see GET /modules/{name}/versions", code="version_not_found")
        art = await self.registry.artifact(module_hash)
        if art is None:
            raise NotFound(f"artifact {module_hash[:12]} has no record", code="artifact_not_found")
        if art["name"] != name:
            raise BadRequest(f"artifact {module_hash[:12]} declares module {art['name']!r}, not {name!r}", code="name_mismatch")
        version, answer = await self.activate(module_hash, source_sha256=art["source_sha256"], build_key=art["build_key"],
                                              action="rollback", started=started)
        return {**version.summary(), "action": "rollback", "cache_hit": True, **answer}
