"""Errors of the builder.

    BuildError                 anything that stops a build
    ├── CompileFailed          gcc rejected the source (422, with diagnostics)
    ├── SourceRejected         the upload is not buildable source (413/422)
    ├── BuildBusy              too many builds at once (429)
    ├── BuildTimeout           gcc exceeded its wall time (422)
    ├── ArtifactInvalid        gcc produced something that is not a shared object
    ├── SandboxUnavailable     no sandbox and unsafe builds not allowed (503)
    ├── BuildOutputFlood       gcc printed without end (422, killed, never cached)
    ├── BuilderLost            the builder died mid-compile (503; the farm retries)
    ├── ObjectStoreUnavailable the S3 object store failed or refused a call (503)
    ├── ArtifactCorrupt        an object in the store does not match its digest (502)
    └── ArtifactMissing        an artifact neither in the local store nor in the object store (404)

`retryable` marks what the farm (builder/farm.py) may run again on another
builder; everything else is the source's fault and final.
"""

from __future__ import annotations


class BuildError(Exception):
    code = "build_failed"
    status = 500
    retryable = False

    def __init__(self, message: str, **extra: object) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class CompileFailed(BuildError):
    code = "compile_failed"
    status = 422


class SourceRejected(BuildError):
    code = "bad_source"
    status = 422


class SourceTooLarge(SourceRejected):
    code = "source_too_large"
    status = 413


class BuildBusy(BuildError):
    code = "builder_busy"
    status = 429
    # From one builder of a farm: another may have room.
    retryable = True


class BuildTimeout(BuildError):
    code = "compile_timeout"
    status = 422


class ArtifactInvalid(BuildError):
    code = "artifact_invalid"
    status = 422


class SandboxUnavailable(BuildError):
    code = "sandbox_unavailable"
    status = 503


class BuildOutputFlood(BuildError):
    """gcc printed more than limits.OUTPUT_FLOOD_BYTES: killed, failed, not cached."""

    code = "compile_output_flood"
    status = 422


class BuilderLost(BuildError):
    """The builder running a build died or dropped it mid-compile. The farm
    retries the build elsewhere; a user sees this only after the retry budget."""

    code = "builder_lost"
    status = 503
    retryable = True


class ObjectStoreUnavailable(BuildError):
    """The S3 object store did not answer, refused the credentials or failed
    a call (builder/objects.py); nothing was cached from it."""

    code = "object_store_unavailable"
    status = 503


class ArtifactCorrupt(BuildError):
    """An object fetched from the object store does not match its digest
    (artifact bytes, manifest, builder key): refused and never cached."""

    code = "artifact_corrupt"
    status = 502


class ArtifactMissing(BuildError):
    """An artifact that is neither in this machine's store nor in the object store."""

    code = "artifact_missing"
    status = 404
