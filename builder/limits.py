"""Limits of a build, in one place. Overridable through BuilderSettings."""

from __future__ import annotations

import os

# Uploaded source size (bytes); larger uploads are refused with 413.
MAX_SOURCE_BYTES = 1 << 20
# Wall time of one gcc run (seconds).
COMPILE_WALL_SECONDS = 20.0
# Wall time of the SDK glue's compile: cweb's own sources, compiled once per
# SDK digest when a builder starts. On a busy machine it took over 20 s, and
# a builder without its glue refused every build with compile_timeout.
GLUE_WALL_SECONDS = 120.0
# CPU seconds of one gcc run.
COMPILE_CPU_SECONDS = 20
# Address space of the compiler (bytes).
COMPILE_MEMORY_BYTES = 1 << 30
# Largest file the compiler may write (bytes): bounds the artifact too.
COMPILE_FILE_BYTES = 64 << 20
# Processes the compile may start (gcc, cc1, as, collect2, ld).
COMPILE_PROCESSES = 64
# Compiler output kept as diagnostics (bytes); the rest is cut with a note.
DIAGNOSTICS_BYTES = 64 << 10
# Largest artifact accepted into the store (bytes).
MAX_ARTIFACT_BYTES = 64 << 20
# Builds a builder service may have waiting for a slot before 429 (the
# api's farm never sends more than a builder's slots; this bounds other callers).
MAX_WAITING_BUILDS = 8
# Compiler output beyond which the compile is killed and failed (bytes): a
# source that makes gcc print without end is an attack, not a diagnostic.
OUTPUT_FLOOD_BYTES = 4 << 20

# ---- the farm (builder/farm.py) ----
# Attempts of one build across builders when a builder dies or vanishes
# mid-compile; compile errors, timeouts and floods are never retried.
MAX_BUILD_ATTEMPTS = 3
# Builds that may wait in the queue, in all and per client, before 429.
MAX_QUEUED_BUILDS = 256
MAX_QUEUED_PER_CLIENT = 64
# Seconds a build may wait while no builder is reachable before it fails (503).
NO_BUILDER_WAIT_SECONDS = 30.0
# Finished builds kept for GET /builds.
BUILD_HISTORY = 500
# Compiler output kept per build for its live log (bytes).
BUILD_LOG_BYTES = 64 << 10

# ---- the object store (builder/objects.py) ----
# Seconds to connect to / wait for a read from the S3 endpoint, and attempts
# of one call (botocore's standard retry mode: throttling, 5xx, resets).
S3_CONNECT_TIMEOUT_S = 5.0
S3_READ_TIMEOUT_S = 30.0
S3_ATTEMPTS = 3
# Connections kept to the endpoint (calls run on worker threads).
S3_POOL_CONNECTIONS = 16
# Largest manifest, action entry or builder key read from the store (bytes):
# bounded reads of objects that anyone with write access could have swollen.
MAX_RECORD_BYTES = 1 << 20


def default_slots() -> int:
    """Build slots of one builder: one per core it may use, counting a cgroup
    CPU quota (a container with `cpus: 1.5` gets one slot, not one per host core)."""
    try:
        cores = max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        cores = max(1, os.cpu_count() or 1)
    try:
        with open("/sys/fs/cgroup/cpu.max", encoding="ascii") as f:
            return slots_for(cores, f.read())
    except OSError:
        pass
    try:  # cgroup v1: the same quota in two files
        with open("/sys/fs/cgroup/cpu/cpu.cfs_quota_us", encoding="ascii") as q, \
                open("/sys/fs/cgroup/cpu/cpu.cfs_period_us", encoding="ascii") as p:
            quota = q.read().strip()
            return slots_for(cores, f"{'max' if quota.startswith('-') else quota} {p.read().strip()}")
    except OSError:
        return cores


def slots_for(cores: int, cpu_max: str) -> int:
    """Slots for `cores` usable cores under a cgroup v2 cpu.max line ("max 100000" or "150000 100000")."""
    quota, _, period = cpu_max.strip().partition(" ")
    if quota == "max" or not quota.isdigit() or not period.isdigit() or int(period) == 0:
        return cores
    return max(1, min(cores, int(quota) // int(period)))
