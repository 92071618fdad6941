"""The one place that runs gcc: fixed argv, scrubbed environment, limits, sandbox.

Embedded mode jails gcc with bubblewrap: it sees /usr read-only (toolchain
and system headers), the SDK and the prebuilt glue object read-only, a fresh
scratch directory as /build, an empty /tmp, a minimal /dev, and no network.
Inside the builder container the container itself is the sandbox, and the
operator says so with CWEB_UNSAFE_BUILDS=1.
"""

from __future__ import annotations

import asyncio
import codecs
import contextlib
import hashlib
import os
import re
import shutil
import signal
import subprocess
from collections.abc import Callable
from dataclasses import dataclass

from builder import limits
from builder.errors import BuildOutputFlood, BuildTimeout, SandboxUnavailable

SDK_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sdk")
# Headers only the glue includes (the worker wire, its encoders, the glue's
# private interface): compiled with every module but never handed to users,
# who get what they include (cweb.h and the compatibility headers).
GLUE_HEADERS = frozenset({"cweb_wire.h", "cweb_frame.h", "cweb_internal.h"})

# The fixed compile flags; paths are the in-sandbox ones.
# -Werror=incompatible-pointer-types: a handler with the wrong signature
# would otherwise build with a warning and answer 200 empty (gcc 14 makes
# it an error by default; gcc 12 does not).
CFLAGS = ["-std=gnu11", "-O2", "-fPIC", "-Wall", "-Werror=incompatible-pointer-types", "-fdiagnostics-color=never",
          "-fmax-errors=50"]
# For the module's source only (not the glue, compiled at start-up): with -g
# the linker names the line of an undefined reference; --strip-debug
# (LDFLAGS) drops the debug sections from the artifact again.
MODULE_CFLAGS = ["-g"]
# --wrap: the glue sees the module's free/realloc of the response buffer it
# handed out (builder/sdk/cweb_glue.c, "Response buffers").
LDFLAGS = ["-shared", "-Wl,-z,defs", "-Wl,--strip-debug", "-Wl,--wrap=free,--wrap=realloc", "-lssl", "-lcrypto", "-lsqlite3", "-ljansson", "-lpthread", "-lm"]
SANDBOX_SDK = "/sdk"
SANDBOX_GLUE = "/glue/glue.o"
SANDBOX_BUILD = "/build"


def sdk_digest() -> str:
    """sha256 over every SDK and glue file, by name and content."""
    h = hashlib.sha256()
    for name in sorted(os.listdir(SDK_DIR)):
        path = os.path.join(SDK_DIR, name)
        if os.path.isfile(path):
            h.update(name.encode() + b"\0")
            with open(path, "rb") as f:
                h.update(f.read())
            h.update(b"\0")
    return h.hexdigest()


def sdk_abi_version() -> int:
    """CWEB_ABI_VERSION of the SDK's cweb.h: the ABI of every module built from
    it, read from the header so the builder keeps no copy of it."""
    with open(os.path.join(SDK_DIR, "cweb.h"), encoding="utf-8") as f:
        found = re.search(r"^#define CWEB_ABI_VERSION (\d+)$", f.read(), re.MULTILINE)
    if found is None:
        raise RuntimeError("cweb.h defines no CWEB_ABI_VERSION")
    return int(found.group(1))


def compiler_identity(gcc: str = "gcc") -> str:
    """gcc's own version line and target, e.g. 'gcc (Debian 12.2.0-14) 12.2.0 x86_64-linux-gnu'."""
    version = subprocess.run([gcc, "--version"], capture_output=True, text=True, check=True).stdout
    machine = subprocess.run([gcc, "-dumpmachine"], capture_output=True, text=True, check=True).stdout
    return f"{version.splitlines()[0].strip()} {machine.strip()}"


def _bwrap_prefix(scratch: str, glue_obj: str | None) -> list[str]:
    argv = [
        "bwrap",
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--clearenv",
        "--ro-bind", "/usr", "/usr",
        "--symlink", "usr/bin", "/bin",
        "--symlink", "usr/lib", "/lib",
        "--symlink", "usr/sbin", "/sbin",
        "--proc", "/proc",
        "--dev", "/dev",
        "--tmpfs", "/tmp",
        "--ro-bind", SDK_DIR, SANDBOX_SDK,
        "--bind", scratch, SANDBOX_BUILD,
        "--chdir", SANDBOX_BUILD,
        "--setenv", "PATH", "/usr/bin",
        "--setenv", "LANG", "C",
        "--setenv", "TMPDIR", "/tmp",
    ]
    if os.path.isdir("/usr/lib64"):
        argv[argv.index("--proc"):argv.index("--proc")] = ["--symlink", "usr/lib64", "/lib64"]
    if glue_obj:
        argv += ["--ro-bind", glue_obj, SANDBOX_GLUE]
    return argv + ["--"]


def _uid_tasks() -> int:
    """Processes and threads of this process's real uid on the machine:
    what RLIMIT_NPROC counts against a fork."""
    uid, n = str(os.getuid()), 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/status") as f:
                fields = dict(line.split(":", 1) for line in f if line.startswith(("Uid:", "Threads:")))
        except OSError:
            continue
        if fields.get("Uid", "").split()[:1] == [uid]:
            n += int(fields.get("Threads", "1"))
    return n


def _prlimit_prefix() -> list[str]:
    # RLIMIT_NPROC counts every task of the uid, not only the compile's: where
    # the builder shares its uid with the server and its workers (one
    # container, or a user's own `make run`), a bare 64 would refuse gcc's
    # first vfork once the workers' threads pass it.
    return [
        "prlimit",
        f"--as={limits.COMPILE_MEMORY_BYTES}",
        f"--cpu={limits.COMPILE_CPU_SECONDS}",
        f"--fsize={limits.COMPILE_FILE_BYTES}",
        "--core=0",
        "--nofile=256",
        f"--nproc={_uid_tasks() + limits.COMPILE_PROCESSES}",
        "--",
    ]


def sandbox_works() -> bool:
    """Whether bubblewrap can start a jail on this machine."""
    if not shutil.which("bwrap"):
        return False
    probe = _bwrap_prefix("/tmp", None) + ["/usr/bin/true"]
    try:
        return subprocess.run(probe, capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


@dataclass
class Run:
    returncode: int
    output: str
    truncated: bool


class Compiler:
    """Runs gcc jailed (or, with unsafe builds allowed, merely limited)."""

    def __init__(self, sandboxed: bool, gcc: str = "gcc") -> None:
        self.sandboxed = sandboxed
        self.gcc = gcc

    def argv(self, scratch: str, glue_obj: str, out: str, sources: list[str], link: bool) -> list[str]:
        if self.sandboxed:
            prefix = _prlimit_prefix() + _bwrap_prefix(scratch, glue_obj)
            sdk, glue = SANDBOX_SDK, SANDBOX_GLUE
        else:
            prefix = _prlimit_prefix()
            sdk, glue = SDK_DIR, glue_obj
        cmd = [self.gcc, *CFLAGS, "-I", sdk, "-o", out]
        if link:
            return prefix + cmd + MODULE_CFLAGS + sources + [glue] + LDFLAGS
        # One relocatable object from every glue source, linked into each module.
        return prefix + cmd + ["-r", "-nostdlib"] + sources

    async def run(self, argv: list[str], cwd: str, on_output: Callable[[str], None] | None = None,
                  wall_s: float = limits.COMPILE_WALL_SECONDS) -> Run:
        """Run argv with a scrubbed environment, a wall-time limit (wall_s) and an output cap.

        on_output sees the output as it comes (a build's live log); past
        limits.OUTPUT_FLOOD_BYTES the compiler is killed and BuildOutputFlood raised."""
        env = {"PATH": "/usr/bin:/bin", "LANG": "C", "TMPDIR": cwd}
        proc = await asyncio.create_subprocess_exec(
            *argv,
            cwd=cwd,
            env=env,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        chunks: list[bytes] = []
        size = total = 0
        truncated = False
        decoder = codecs.getincrementaldecoder("utf-8")("replace")

        async def pump() -> None:
            nonlocal size, total, truncated
            assert proc.stdout is not None
            while chunk := await proc.stdout.read(65536):
                total += len(chunk)
                if total > limits.OUTPUT_FLOOD_BYTES:
                    raise BuildOutputFlood(f"the compiler printed more than {limits.OUTPUT_FLOOD_BYTES} bytes and was stopped")
                if on_output is not None:
                    on_output(decoder.decode(chunk))
                if size < limits.DIAGNOSTICS_BYTES:
                    chunks.append(chunk[: limits.DIAGNOSTICS_BYTES - size])
                    size += len(chunks[-1])
                else:
                    truncated = True
            await proc.wait()

        try:
            await asyncio.wait_for(pump(), wall_s)
        except (TimeoutError, BuildOutputFlood, asyncio.CancelledError) as exc:
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            # Read to the end: a pipe left full keeps its transport paused,
            # it never sees EOF, and wait() (which waits for the pipes) hangs.
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(5):
                    while await proc.stdout.read(1 << 16):
                        pass
            await proc.wait()
            if isinstance(exc, TimeoutError):
                raise BuildTimeout(f"the compiler ran longer than {wall_s:g} s and was stopped") from exc
            raise
        output = b"".join(chunks).decode("utf-8", "replace")
        if truncated:
            output += f"\n[output truncated at {limits.DIAGNOSTICS_BYTES} bytes]\n"
        assert proc.returncode is not None
        return Run(proc.returncode, output, truncated)


def require_sandbox(sandboxed: bool, unsafe_allowed: bool) -> None:
    if not sandboxed and not unsafe_allowed:
        raise SandboxUnavailable(
            "bubblewrap cannot run on this machine, so uploads are refused; "
            "install bubblewrap or set CWEB_UNSAFE_BUILDS=1 to compile without a sandbox"
        )
