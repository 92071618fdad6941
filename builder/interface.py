"""What the api needs of a builder, whichever kind: `LocalBuilder`
(builder/local.py, in-process, embedded) or `RemoteBuilder`
(api/remote_builder.py, the builder service over HTTP). A new kind (a farm
of builders) implements this class; the api calls nothing else."""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from builder.local import BuildResult


class Builder(ABC):
    # Whether compiles run in the build jail (the api refuses uploads otherwise,
    # unless CWEB_UNSAFE_BUILDS=1).
    sandboxed: bool

    @property
    @abstractmethod
    def mode(self) -> str:
        """How builds run, for /healthz and the log: "bubblewrap", "unsandboxed", "remote"."""

    @abstractmethod
    async def build(self, source: bytes, filename: str | None = None, *, use_cache: bool = True) -> BuildResult:
        """Source -> artifact in the store the runtime reads. Raises a
        builder.errors.BuildError subclass on failure."""

    @abstractmethod
    async def glue_object(self) -> str | None:
        """Make sure the SDK glue is compiled (at startup, so a broken SDK shows
        at once); the path of the object, or None where another process builds it."""

    @abstractmethod
    async def manifest(self, module_hash: str) -> dict | None:
        """The artifact's build manifest, or None when there is none."""

    @abstractmethod
    async def source(self, source_sha256: str) -> bytes | None:
        """The source text an artifact was built from, or None when it is not kept where the api can read it."""

    async def aclose(self) -> None:
        """Release connections (the remote builder's HTTP client)."""
        return None
