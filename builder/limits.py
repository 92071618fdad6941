"""Limits of a build, in one place. Overridable through BuilderSettings."""

from __future__ import annotations

# Uploaded source size (bytes); larger uploads are refused with 413.
MAX_SOURCE_BYTES = 1 << 20
# Wall time of one gcc run (seconds).
COMPILE_WALL_SECONDS = 20.0
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
# Builds that may run at once, and how many more may wait before 429.
MAX_CONCURRENT_BUILDS = 2
MAX_WAITING_BUILDS = 8
