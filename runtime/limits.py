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
import platform
import resource
import struct
from dataclasses import dataclass

# Seconds a worker may take to dlopen and describe its artifact.
LOAD_TIMEOUT_S = 20.0
# Seconds a module's onload may run before the deploy is rejected.
ONLOAD_TIMEOUT_S = 20.0
# Seconds between asking a worker to stop (unload) and killing it.
STOP_TIMEOUT_S = 10.0
# Lines of module output kept per module hash.
LOG_RING_LINES = 2000

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

# ---- seccomp ------------------------------------------------------------

_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K

RET_ALLOW = 0x7FFF0000
RET_KILL_PROCESS = 0x80000000
RET_ERRNO = 0x00050000
EAGAIN, EPERM, ENOSYS = 11, 1, 38
CLONE_THREAD = 0x00010000
X32_SYSCALL_BIT = 0x40000000

# seccomp_data: int nr; u32 arch; u64 ip; u64 args[6] (little-endian here).
_OFF_NR, _OFF_ARCH, _OFF_ARG0 = 0, 4, 16

_ARCHES = {
    # machine: (AUDIT_ARCH, syscall numbers)
    "x86_64": (
        0xC000003E,
        dict(fork=57, vfork=58, clone=56, clone3=435, kill=62, tkill=200, tgkill=234, ptrace=101,
             process_vm_readv=310, process_vm_writev=311, pidfd_send_signal=424, pidfd_getfd=438, prlimit64=302),
    ),
    "aarch64": (
        0xC00000B7,
        dict(clone=220, clone3=435, kill=129, tkill=130, tgkill=131, ptrace=117,
             process_vm_readv=270, process_vm_writev=271, pidfd_send_signal=424, pidfd_getfd=438, prlimit64=261),
    ),
}
# Filter slots holding the worker's own pid, patched in the child.
_PID_PLACEHOLDER = 0x7FFFFFFE


class _Filter:
    """A tiny classic-BPF assembler with symbolic jump targets."""

    def __init__(self) -> None:
        self.ins: list[tuple[int, object, object, int]] = []
        self.labels: dict[str, int] = {}

    def op(self, code: int, k: int, jt: object = 0, jf: object = 0) -> None:
        self.ins.append((code, jt, jf, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.ins)

    def assemble(self) -> bytes:
        out = bytearray()
        for i, (code, jt, jf, k) in enumerate(self.ins):
            def rel(target: object, i: int = i) -> int:
                if isinstance(target, str):
                    off = self.labels[target] - i - 1
                    assert 0 <= off < 256, target
                    return off
                return int(target)  # type: ignore[arg-type]

            out += struct.pack("<HBBI", code, rel(jt), rel(jf), k & 0xFFFFFFFF)
        return bytes(out)


def seccomp_program(machine: str | None = None) -> bytes | None:
    """The worker's seccomp filter as raw sock_filter bytes, with the
    worker's pid left as a placeholder; None on an unknown architecture."""
    arch = _ARCHES.get(machine or platform.machine())
    if arch is None:
        return None
    audit_arch, nr = arch
    f = _Filter()
    f.op(_LD_W_ABS, _OFF_ARCH)
    f.op(_JEQ_K, audit_arch, 0, "die")
    f.op(_LD_W_ABS, _OFF_NR)
    if audit_arch == 0xC000003E:
        f.op(_JGE_K, X32_SYSCALL_BIT, "enosys", 0)
    for name in ("fork", "vfork"):
        if name in nr:
            f.op(_JEQ_K, nr[name], "eagain", 0)
    f.op(_JEQ_K, nr["clone3"], "enosys", 0)
    f.op(_JEQ_K, nr["clone"], "clone", 0)
    for name in ("tkill", "ptrace", "process_vm_readv", "process_vm_writev", "pidfd_send_signal", "pidfd_getfd"):
        f.op(_JEQ_K, nr[name], "eperm", 0)
    f.op(_JEQ_K, nr["kill"], "kill_arg", 0)
    f.op(_JEQ_K, nr["tgkill"], "self_arg", 0)
    f.op(_JEQ_K, nr["prlimit64"], "prlimit_arg", 0)
    f.op(_RET_K, RET_ALLOW)
    # clone: threads only.
    f.label("clone")
    f.op(_LD_W_ABS, _OFF_ARG0)
    f.op(_JSET_K, CLONE_THREAD, "allow", "eagain")
    # kill(pid): itself, or its own process group (it leads a new session).
    f.label("kill_arg")
    f.op(_LD_W_ABS, _OFF_ARG0)
    f.op(_JEQ_K, 0, "allow", 0)
    f.op(_JEQ_K, (-_PID_PLACEHOLDER) & 0xFFFFFFFF, "allow", 0)
    f.op(_JEQ_K, _PID_PLACEHOLDER, "allow", "eperm")
    # tgkill(tgid, ...): its own threads.
    f.label("self_arg")
    f.op(_LD_W_ABS, _OFF_ARG0)
    f.op(_JEQ_K, _PID_PLACEHOLDER, "allow", "eperm")
    # prlimit64(pid, ...): 0 or itself.
    f.label("prlimit_arg")
    f.op(_LD_W_ABS, _OFF_ARG0)
    f.op(_JEQ_K, 0, "allow", 0)
    f.op(_JEQ_K, _PID_PLACEHOLDER, "allow", "eperm")
    f.label("allow")
    f.op(_RET_K, RET_ALLOW)
    f.label("eagain")
    f.op(_RET_K, RET_ERRNO | EAGAIN)
    f.label("eperm")
    f.op(_RET_K, RET_ERRNO | EPERM)
    f.label("enosys")
    f.op(_RET_K, RET_ERRNO | ENOSYS)
    f.label("die")
    f.op(_RET_K, RET_KILL_PROCESS)
    return f.assemble()


def _patch_pid(program: bytearray, pid: int) -> None:
    """Replace the pid placeholders in place (no allocation: runs after fork)."""
    neg = (-_PID_PLACEHOLDER) & 0xFFFFFFFF
    for off in range(0, len(program), 8):
        (k,) = struct.unpack_from("<I", program, off + 4)
        if k == _PID_PLACEHOLDER:
            struct.pack_into("<I", program, off + 4, pid)
        elif k == neg:
            struct.pack_into("<I", program, off + 4, (-pid) & 0xFFFFFFFF)


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def _int_env(env: dict, name: str, default: int) -> int:
    raw = env.get(name)
    return int(raw) if raw not in (None, "") else default


@dataclass
class WorkerLimits:
    """What a worker is allowed; `preexec` applies it in the child."""

    memory_bytes: int = WORKER_MEMORY_BYTES
    cpu_seconds: int = WORKER_CPU_SECONDS
    open_files: int = WORKER_OPEN_FILES
    file_bytes: int = WORKER_FILE_BYTES
    processes: int = WORKER_PROCESSES
    allow_fork: bool = False

    @classmethod
    def from_env(cls, env: dict | None = None) -> WorkerLimits:
        env = dict(os.environ if env is None else env)
        return cls(
            memory_bytes=_int_env(env, "CWEB_WORKER_MEMORY_BYTES", WORKER_MEMORY_BYTES),
            cpu_seconds=_int_env(env, "CWEB_WORKER_CPU_SECONDS", WORKER_CPU_SECONDS),
            open_files=_int_env(env, "CWEB_WORKER_OPEN_FILES", WORKER_OPEN_FILES),
            file_bytes=_int_env(env, "CWEB_WORKER_FILE_BYTES", WORKER_FILE_BYTES),
            processes=_int_env(env, "CWEB_WORKER_PROCESSES", WORKER_PROCESSES),
            allow_fork=env.get("CWEB_WORKER_ALLOW_FORK", "") == "1",
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
        self.sandbox = "none"
        self._drop_caps = [c for c in range(LAST_CAPABILITY + 1) if c not in KEPT_CAPABILITIES]
        program = None if self.allow_fork else seccomp_program()
        if program is None:
            self._filter = None
            self._fprog = None
        else:
            self._filter = ctypes.create_string_buffer(program, len(program))
            self._fprog = _SockFprog(len(program) // 8, ctypes.addressof(self._filter))

    @property
    def seccomp(self) -> bool:
        return self._fprog is not None

    def preexec(self) -> None:
        """Runs in the worker child between fork and exec (agent is single-threaded)."""
        os.setsid()
        for which, value in self._rlimits:
            resource.setrlimit(which, (value, value))
        if self._root:
            for cap in self._drop_caps:
                # EINVAL past the kernel's last capability: nothing to drop there.
                self._prctl(PR_CAPBSET_DROP, cap, 0, 0, 0)
        if self._prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
            raise OSError(ctypes.get_errno(), "prctl(PR_SET_NO_NEW_PRIVS) failed")
        if self._fprog is not None:
            _patch_pid(self._filter, os.getpid())  # type: ignore[arg-type]
            if self._prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(self._fprog), 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_SET_SECCOMP) failed")


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
