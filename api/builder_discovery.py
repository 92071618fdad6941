"""Finding the builders behind CWEB_BUILDER_URL and keeping the farm's list current.

CWEB_BUILDER_URL is one URL or a comma-separated list. Each host name is
resolved to every address it has, each address is one builder: with
`docker-compose up --scale builder=3` the service name `builder` resolves to
the three replicas (Docker's DNS), so replicas come and go without any
registration. Every DISCOVERY_INTERVAL_S the names are resolved again and
each builder's /healthz is read (its id, slots and toolchain); one that does
not answer leaves the farm until it does.

Builders whose toolchain (compiler, SDK, flags, ABI) differs from the farm's
are left out, with an error in the log: a build key names one toolchain, so
builders that disagree would break the shared action cache and the join of
identical builds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from api.remote_builder import RemoteBuilder
from builder import cache
from builder.errors import BuildError
from builder.farm import BuildFarm
from builder.local import BuildResult, LocalBuilder
from builder.objects import ObjectStore
from builder.store import Store

log = logging.getLogger("cweb.api.builders")

DISCOVERY_INTERVAL_S = 2.0
# Health checks a resolvable builder may miss (busy, a slow scrape) before it leaves the farm.
MISSES_ALLOWED = 2


def _with_host(url: str, host: str) -> str:
    parts = urlsplit(url)
    netloc = f"[{host}]" if ":" in host else host
    if parts.port:
        netloc += f":{parts.port}"
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


class BuilderDiscovery:
    def __init__(self, urls: str, farm: BuildFarm) -> None:
        self.urls = [u.strip().rstrip("/") for u in urls.split(",") if u.strip()]
        self.farm = farm
        self.toolchain: dict | None = None
        self._by_url: dict[str, RemoteBuilder] = {}
        self._task: asyncio.Task | None = None
        self._refused: set[str] = set()
        self._misses: dict[str, int] = {}
        self._healthy: set[str] = set()

    async def _addresses(self, url: str) -> list[str]:
        host = urlsplit(url).hostname or ""
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
        except OSError:
            return []
        seen: list[str] = []
        for info in infos:
            addr = str(info[4][0])
            if addr not in seen:
                seen.append(addr)
        return [_with_host(url, a) for a in seen]

    async def refresh(self) -> int:
        """Resolve, probe, hand the healthy builders to the farm; how many there are."""
        wanted: list[str] = []
        for url in self.urls:
            wanted.extend(await self._addresses(url))
        for url in list(self._by_url):
            if url not in wanted:
                await self._by_url.pop(url).aclose()
        for url in wanted:
            self._by_url.setdefault(url, RemoteBuilder(url))
        builders = list(self._by_url.values())
        health = await asyncio.gather(*(b.refresh() for b in builders))
        healthy: list[RemoteBuilder] = []
        for b, ok in zip(builders, health, strict=True):
            if ok is None or b.toolchain is None:
                self._misses[b.url] = self._misses.get(b.url, 0) + 1
                if b.url in self._healthy and self._misses[b.url] <= MISSES_ALLOWED:
                    healthy.append(b)
                continue
            self._misses[b.url] = 0
            if self.toolchain is None:
                self.toolchain = b.toolchain
            if b.toolchain != self.toolchain:
                if b.url not in self._refused:
                    log.error("builder %s at %s has another toolchain than the farm's: left out", b.name, b.url)
                    self._refused.add(b.url)
                continue
            healthy.append(b)
        self.farm.set_executors(healthy)
        self._healthy = {b.url for b in healthy}
        for b in healthy:
            if self._misses.get(b.url) == 0:
                self.farm.mark_up(b.name)
        return len(healthy)

    def key_for(self, source_sha: str) -> str | None:
        """The build key every builder of this farm computes for a source (None before any answered)."""
        if self.toolchain is None:
            return None
        return cache.build_key(source_sha256=source_sha, **self.toolchain)

    def cached(self, store: Store, source_sha: str) -> BuildResult | None:
        """The shared action cache's answer, read from the api's (read-only) view
        of the store; None on a miss or when the store cannot be read."""
        key = self.key_for(source_sha)
        if key is None:
            return None
        try:
            hit = store.lookup_action(key)
        except OSError:  # a read-only mount cannot evict a corrupt artifact: let a builder do it
            return None
        except BuildError as exc:  # the object store is away: a builder builds (and tries it again)
            log.warning("action cache lookup failed: %s", exc.message)
            return None
        if hit is None:
            return None
        manifest = store.manifest(hit) or {}
        if "provenance" not in manifest:
            return None  # unsigned, from before signing: a builder rebuilds and signs it
        return BuildResult(hit, source_sha, key, True, 0.0, list(manifest.get("warnings", [])), manifest)

    async def start(self, wait_s: float = 60.0) -> None:
        """First discovery (waiting up to wait_s for a builder), then the refresh loop."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait_s
        while await self.refresh() == 0 and loop.time() < deadline:
            await asyncio.sleep(0.5)
        if not self.farm.builders:
            log.error("no builder answered at %s: builds wait for one", ", ".join(self.urls))
        self._task = loop.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(DISCOVERY_INTERVAL_S)
            try:
                await self.refresh()
            except Exception:  # noqa: BLE001 - discovery must outlive one bad round
                log.exception("builder discovery failed")

    async def aclose(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for b in self._by_url.values():
            await b.aclose()


@dataclass
class FarmSetup:
    """What the api builds with: the farm (its Builder), the builder it reads
    manifests and sources through (farm.reader), and the discovery of remote
    builders (None embedded)."""

    farm: BuildFarm
    builder: Any
    discovery: BuilderDiscovery | None

    async def aclose(self) -> None:
        await self.farm.aclose()
        if self.discovery is not None:
            await self.discovery.aclose()


async def make_farm(builder_url: str, store_dir: str, *, unsafe_builds: bool, max_source_bytes: int, slots: int = 0,
                    key_path: str = "", objects: ObjectStore | None = None) -> FarmSetup:
    """The embedded pool (no builder_url: one LocalBuilder with `slots` slots)
    or the farm of the builders behind builder_url, discovered and watched.
    With an object store (objects) the store_dir is this node's cache of it:
    the embedded builder writes through to it, and with remote builders the
    manifests, sources and action cache are read from it, not from one
    builder's disk."""
    if not builder_url:
        local = LocalBuilder(store_dir, unsafe_builds=unsafe_builds, max_source_bytes=max_source_bytes, slots=slots,
                             key_path=key_path or None, objects=objects)
        farm = BuildFarm([local], key_for=local.key_for, max_source_bytes=max_source_bytes,
                         cached=lambda sha: asyncio.to_thread(local.cached, sha), reader=local)
        return FarmSetup(farm, local, None)
    shared_dir = store_dir if objects is not None or os.path.isdir(os.path.join(store_dir, "artifacts")) else None
    # Reads (manifests, artifacts) go to any builder: they share the store.
    reader = RemoteBuilder(builder_url.split(",")[0].strip(), store_dir=shared_dir, objects=objects)
    farm = BuildFarm(max_source_bytes=max_source_bytes, reader=reader)
    discovery = BuilderDiscovery(builder_url, farm)
    farm.key_for = discovery.key_for
    if reader.store is not None:
        shared = reader.store
        farm.cached = lambda sha: asyncio.to_thread(discovery.cached, shared, sha)
    await discovery.start()
    return FarmSetup(farm, reader, discovery)
