"""Limits of the runtime agent and its workers, in one place.

A worker is contained by what `WorkerLimits.preexec` applies in the child
between fork and exec (so it covers the Python worker and the module code it
loads, and cannot be undone by either):

- its own session and process group (a module's kill(0, ...) reaches only
  itself);
- rlimits: address space (a malloc bomb fails its own allocations and at
  worst kills its own worker), CPU seconds (a backstop for a spinning
  handler), open files, file size, no core dumps, and processes (RLIMIT_NPROC,
  which Linux never enforces for uid 0 — see the seccomp filter);
- no-new-privileges (PR_SET_NO_NEW_PRIVS): no setuid/file-capability gain
  through exec;
- for a root server, a smaller capability bounding set: notably without
  CAP_SYS_RESOURCE (else a module could raise its own rlimits back) and
  CAP_SYS_PTRACE (so it cannot read the non-dumpable api's memory or
  /proc/<pid>/environ);
- a seccomp filter that refuses to create processes (fork, vfork, clone
  without CLONE_THREAD; clone3 answers ENOSYS so glibc falls back to clone
  for threads) and to reach other processes (kill/tgkill of another pid,
  tkill, pidfd_send_signal, pidfd_getfd, ptrace, process_vm_readv/writev,
  prlimit64 on another pid). A fork bomb therefore gets EAGAIN on its first
  fork, as root too, where no pids cgroup is at hand. Set
  CWEB_WORKER_ALLOW_FORK=1 to let modules start processes (then only
  RLIMIT_NPROC bounds them, and only for a non-root server).

The configuration is read in the parent (the agent) by `from_env()`; the
child only makes system calls with values prepared before the fork. After
exec, the worker calls `seal_after_exec()`, which keeps modules out of each
other's memory (and out of a warm spare worker's).
"""

from __future__ import annotations

import ctypes
import os
import resource
import struct
from dataclasses import dataclass

from runtime.env import env_int

# Seconds a worker may take to dlopen and describe its artifact.
LOAD_TIMEOUT_S = 20.0
# Seconds a module's onload may run before the deploy is rejected.
ONLOAD_TIMEOUT_S = 20.0
# Seconds between asking a worker to stop (unload) and killing it.
STOP_TIMEOUT_S = 10.0
# Lines of module output kept per module hash.
LOG_RING_LINES = 2000
# Lines of a worker's last output that a failed load or onload answers with.
CRASH_OUTPUT_LINES = 100
# How long a dead worker's output pipes may take to drain before its exit is reported.
OUTPUT_DRAIN_S = 2.0

# Address space of one worker (bytes; CWEB_WORKER_MEMORY_BYTES). Counts
# virtual memory: the interpreter, thread stacks and malloc arenas included.
WORKER_MEMORY_BYTES = 2 << 30
# CPU seconds one worker process may use in its life (CWEB_WORKER_CPU_SECONDS).
# A backstop against a handler that spins forever, generous enough that a
# busy worker is not stopped: it is restarted like any crash when it hits it.
WORKER_CPU_SECONDS = 6 * 3600
# Open files of one worker (connections from the api, sqlite, module files).
WORKER_OPEN_FILES = 4096
# Largest file a worker may write (bytes).
WORKER_FILE_BYTES = 1 << 30
# Processes + threads of the worker's uid (RLIMIT_NPROC); ignored by Linux for root.
WORKER_PROCESSES = 4096

PR_SET_NO_NEW_PRIVS = 38
PR_SET_SECCOMP = 22
PR_CAPBSET_DROP = 24
SECCOMP_MODE_FILTER = 2

# Capabilities a root worker keeps: file access as root (its data and run
# dirs may belong to root) and binding low ports. Everything else is dropped
# from the bounding set before exec, so the worker never has it.
KEPT_CAPABILITIES = frozenset(
    {
        0,  # CAP_CHOWN
        1,  # CAP_DAC_OVERRIDE
        2,  # CAP_DAC_READ_SEARCH
        3,  # CAP_FOWNER
        4,  # CAP_FSETID
        10,  # CAP_NET_BIND_SERVICE (dropped again by seal_after_exec)
    }
)
LAST_CAPABILITY = 63

# ---- seccomp ----------------------------------------------------------

EAGAIN, EPERM, ENOSYS = 11, 1, 38
CLONE_THREAD = 0x00010000
# Filter constants holding the worker's own pid, patched in the child (the
# filter is built once, by libseccomp, before any fork).
_PID_PLACEHOLDER = 0x7FFFFFFE


def seccomp_program(allow_fork: bool = False, own_pid_only: bool = True) -> bytes:
    """The worker's seccomp filter as raw sock_filter bytes, built with
    libseccomp (pyseccomp). Refuses to create processes (fork, vfork, clone
    without CLONE_THREAD: EAGAIN; clone3: ENOSYS so glibc falls back to
    clone for threads) unless allow_fork, and to reach other processes
    (ptrace, process_vm_readv/writev, pidfd_getfd, tkill; with
    own_pid_only, kill/tgkill/prlimit64/pidfd_send_signal of any pid but
    its own, left as a placeholder for _patch_pid). Foreign architectures
    and x32 system calls kill the process (libseccomp's default)."""
    import pyseccomp as sc

    f = sc.SyscallFilter(sc.ALLOW)
    if not allow_fork:
        for name in ("fork", "vfork"):
            f.add_rule(sc.ERRNO(EAGAIN), name)
        f.add_rule(sc.ERRNO(EAGAIN), "clone", sc.Arg(0, sc.MASKED_EQ, CLONE_THREAD, 0))
        f.add_rule(sc.ERRNO(ENOSYS), "clone3")
    for name in ("ptrace", "process_vm_readv", "process_vm_writev", "pidfd_getfd", "tkill"):
        f.add_rule(sc.ERRNO(EPERM), name)
    if own_pid_only:
        for name in ("kill", "tgkill", "pidfd_send_signal"):
            f.add_rule(sc.ERRNO(EPERM), name, sc.Arg(0, sc.NE, _PID_PLACEHOLDER))
        f.add_rule(sc.ERRNO(EPERM), "pidfd_open", sc.Arg(0, sc.NE, _PID_PLACEHOLDER))
        f.add_rule(sc.ERRNO(EPERM), "prlimit64", sc.Arg(0, sc.NE, 0), )
    fd = os.memfd_create("cweb-seccomp", os.MFD_CLOEXEC)
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            f.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        chunks = []
        while chunk := os.read(fd, 1 << 16):
            chunks.append(chunk)
    finally:
        os.close(fd)
    return b"".join(chunks)


def _patch_pid(program: bytearray, pid: int) -> None:
    """Replace the pid placeholders in place (no allocation: runs after fork)."""
    for off in range(0, len(program), 8):
        (k,) = struct.unpack_from("<I", program, off + 4)
        if k == _PID_PLACEHOLDER:
            struct.pack_into("<I", program, off + 4, pid)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


# First uid and how many uids workers of a root server run as
# (CWEB_WORKER_UIDS=FIRST-LAST): one per live worker, never shared by two.
WORKER_UID_FIRST = 1_500_000_000
WORKER_UID_COUNT = 65536


@dataclass
class WorkerLimits:
    """What a worker is allowed; `preexec` applies it in the child.

    With a bubblewrap sandbox (`in_bwrap`), bwrap itself still has to make
    namespaces and mounts: preexec then keeps the capabilities (bwrap drops
    them all for the worker) and leaves the seccomp filter to bwrap
    (`--seccomp`, `bwrap_filter()`), which loads it right before the
    worker's exec."""

    memory_bytes: int = WORKER_MEMORY_BYTES
    cpu_seconds: int = WORKER_CPU_SECONDS
    open_files: int = WORKER_OPEN_FILES
    file_bytes: int = WORKER_FILE_BYTES
    processes: int = WORKER_PROCESSES
    allow_fork: bool = False
    # CWEB_WORKER_NETWORK=1: workers keep the host's network (TCP to anywhere).
    network: bool = False
    # CWEB_UNSAFE_WORKERS=1: run workers even where no sandbox works.
    unsafe: bool = False
    uid_first: int = WORKER_UID_FIRST
    uid_count: int = WORKER_UID_COUNT
    # CWEB_WORKER_SANDBOX: "" probes (bubblewrap, else landlock); a name forces it.
    sandbox: str = ""
    in_bwrap: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None) -> WorkerLimits:
        env = dict(os.environ if env is None else env)
        first, count = WORKER_UID_FIRST, WORKER_UID_COUNT
        if env.get("CWEB_WORKER_UIDS"):
            lo, _, hi = env["CWEB_WORKER_UIDS"].partition("-")
            first, count = int(lo), int(hi) - int(lo) + 1
            if first <= 0 or count < 1:
                raise ValueError("CWEB_WORKER_UIDS must be FIRST-LAST with 0 < FIRST <= LAST")
        return cls(
            memory_bytes=env_int(env, "CWEB_WORKER_MEMORY_BYTES", WORKER_MEMORY_BYTES),
            cpu_seconds=env_int(env, "CWEB_WORKER_CPU_SECONDS", WORKER_CPU_SECONDS),
            open_files=env_int(env, "CWEB_WORKER_OPEN_FILES", WORKER_OPEN_FILES),
            file_bytes=env_int(env, "CWEB_WORKER_FILE_BYTES", WORKER_FILE_BYTES),
            processes=env_int(env, "CWEB_WORKER_PROCESSES", WORKER_PROCESSES),
            allow_fork=env.get("CWEB_WORKER_ALLOW_FORK", "") == "1",
            network=env.get("CWEB_WORKER_NETWORK", "") == "1",
            unsafe=env.get("CWEB_UNSAFE_WORKERS", "") == "1",
            uid_first=first,
            uid_count=count,
            sandbox=env.get("CWEB_WORKER_SANDBOX", ""),
        )

    def __post_init__(self) -> None:
        # Everything the child needs is prepared here, in the parent.
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._prctl = self._libc.prctl
        self._prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
        self._prctl.restype = ctypes.c_int
        wanted = [
            (resource.RLIMIT_CORE, 0),
            (resource.RLIMIT_AS, self.memory_bytes),
            (resource.RLIMIT_CPU, self.cpu_seconds),
            (resource.RLIMIT_NOFILE, self.open_files),
            (resource.RLIMIT_FSIZE, self.file_bytes),
            (resource.RLIMIT_NPROC, self.processes),
        ]
        # Never above the current hard limit: a non-root agent could not raise it.
        self._rlimits = []
        for which, value in wanted:
            hard = resource.getrlimit(which)[1]
            self._rlimits.append((which, value if hard == resource.RLIM_INFINITY else min(value, hard)))
        self._root = os.geteuid() == 0
        self._drop_caps = [c for c in range(LAST_CAPABILITY + 1) if c not in KEPT_CAPABILITIES]
        self.use_bwrap(self.in_bwrap)

    def use_bwrap(self, on: bool) -> None:
        """Switch between applying the filter here (off) and leaving it to bwrap (on)."""
        self.in_bwrap = on
        self._filter = None
        self._fprog = None
        if not on:
            program = seccomp_program(self.allow_fork, own_pid_only=True)
            self._filter = ctypes.create_string_buffer(program, len(program))
            self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._filter))
        else:
            # In its own PID namespace a worker sees no other process to signal.
            self._bwrap_program = seccomp_program(self.allow_fork, own_pid_only=False)

    @property
    def seccomp(self) -> bool:
        return self._fprog is not None or self.in_bwrap

    def bwrap_filter(self) -> int:
        """A fresh descriptor holding the filter for bwrap --seccomp (caller closes it)."""
        fd = os.memfd_create("cweb-seccomp", 0)
        os.write(fd, self._bwrap_program)
        os.lseek(fd, 0, os.SEEK_SET)
        return fd

    def preexec(self) -> None:
        """Runs in the worker child between fork and exec: system calls only."""
        os.setsid()
        for which, value in self._rlimits:
            resource.setrlimit(which, (value, value))
        if self._root and not self.in_bwrap:
            for cap in self._drop_caps:
                # EINVAL past the kernel's last capability: nothing to drop there.
                self._prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self._fprog is not None:
            _patch_pid(self._filter, os.getpid())  # type: ignore[arg-type]
            if self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog), 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


def drop_to_uid(uid: int) -> None:
    """For a worker of a root server, first thing after exec: its own uid
    and gid, no supplementary groups, and with them every capability."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    # Changing uid made the process non-dumpable (fs.suid_dumpable): nothing
    # else runs as this uid, so it may be dumpable again, for its own /proc.
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 1, 0, 0, 0)


PR_SET_DUMPABLE = 4
CAP_NET_BIND_SERVICE = 10
_CAP_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def make_undumpable() -> None:
    """Not dumpable (exec resets it): a same-uid process without
    CAP_SYS_PTRACE — a module's worker — cannot open this process's
    /proc/<pid>/mem, environ or fds. For the agent, first thing in its main."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_DUMPABLE, 0, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def seal_after_exec() -> None:
    """For a worker, first thing after exec, before any module code runs.

    - Not dumpable (make_undumpable): other workers cannot read or write it.
    - For a root worker, CAP_NET_BIND_SERVICE leaves its permitted set. A
      worker just exec'd (the warm spare, before it gets here) then holds a
      capability that running workers lack, and Linux refuses ptrace-style
      access to a process whose capabilities are not a subset of the
      caller's: no module can write into a spare while it is still dumpable
      and later have its code run there. (The agent must not call this: with
      no-new-privileges its children could then not regain the capability,
      and the window would open again.)"""
    make_undumpable()
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        header = _CapHeader(_CAP_VERSION_3, 0)
        data = (_CapData * 2)()
        if libc.capget(ctypes.byref(header), data) == 0 and data[0].permitted & (1 << CAP_NET_BIND_SERVICE):
            for name in ("effective", "permitted", "inheritable"):
                setattr(data[0], name, getattr(data[0], name) & ~(1 << CAP_NET_BIND_SERVICE))
            libc.capset(ctypes.byref(header), data)
    except (OSError, AttributeError):
        pass
