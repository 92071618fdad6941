"""The sandbox a worker runs in, chosen once when the agent starts.

bubblewrap (the host's `bwrap`, also the compile sandbox) when it works:

- a mount namespace holding only what a worker needs, read-only: the Python
  interpreter and its standard library, this project's `runtime` package,
  the shared libraries those and the modules link against (libc, libm,
  libpthread, libdl, libssl, libcrypto, libsqlite3, libjansson and what
  they pull in, found with ldd), and the working directory (CWEB_WORKDIR);
  a private /tmp (tmpfs, bounded), a minimal /dev and its own /proc. No data
  dir, no store, no run dir, no other module, no host file;
- its own network namespace with no interface at all (no TCP, loopback
  included) unless CWEB_WORKER_NETWORK=1 keeps the host's network;
- its own PID namespace (no other process to see, signal or trace), IPC
  and UTS namespaces; it dies with the agent and has its own session;
- the seccomp filter of runtime/limits.py, loaded by bwrap right before
  the worker's exec (`--seccomp FD`).

The artifact is not in the sandbox: it arrives at load as a descriptor, so
the warm spare can be sandboxed before anyone knows which module it gets.

When bubblewrap cannot run (inside the compose runtime container, where
user namespaces and mounts are not permitted), "landlock": the worker
restricts itself with Landlock before any module code runs (read-only
access to the same paths, no TCP bind/connect, signals and abstract Unix
sockets scoped to itself) plus the same seccomp filter. When neither is
available workers are refused unless CWEB_UNSAFE_WORKERS=1 ("none").
"""

from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from dataclasses import dataclass, field

log = logging.getLogger("cweb.runtime")

PROJECT_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What modules link against (builder/compile.py LDFLAGS) and the runtime loads.
# gcc_s: glibc's backtrace() loads it for the crash report a fatal signal
# writes (builder/sdk/cweb_glue.c); inside the sandbox it must be there already.
MODULE_LIBRARIES = ("ssl", "crypto", "sqlite3", "jansson", "pthread", "m", "dl", "c", "gcc_s")
# Extension modules of the standard library a worker may import: only their
# libraries are bound (not those of, say, _tkinter or readline).
WORKER_EXTENSIONS = frozenset({
    "_ctypes", "_hashlib", "_socket", "fcntl", "_json", "_struct", "select", "math", "array", "binascii",
    "resource", "_posixsubprocess", "_random", "_bisect", "_blake2", "_sha256", "_sha512", "_sha2", "_md5",
    "_sha1", "_sha3", "_heapq", "zlib", "_contextvars", "_opcode", "unicodedata", "_datetime",
})
# Landlock ABI a worker needs: 4 brings TCP bind/connect rules; 6 (signal
# and abstract Unix socket scoping) is used where the kernel has it.
LANDLOCK_MIN_ABI = 4
# Size of a worker's private /tmp (memory, so bounded).
TMP_BYTES = 64 << 20


def _ldconfig_paths() -> dict[str, str]:
    """soname -> path, from the dynamic linker's cache."""
    ldconfig = shutil.which("ldconfig") or "/sbin/ldconfig"
    try:
        out = subprocess.run([ldconfig, "-p"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return {}
    found: dict[str, str] = {}
    for line in out.splitlines():
        m = re.match(r"\s+(\S+) \(([^)]*)\) => (\S+)", line)
        if m and m.group(1) not in found and ("x86-64" in m.group(2) or "64" in m.group(2) or sys.maxsize < 2**32):
            found[m.group(1)] = m.group(3)
    return found


def _library_closure(roots: list[str]) -> set[str]:
    """Every shared library the roots load, with the dynamic loader, by ldd."""
    libs: set[str] = set()
    if not roots:
        return libs
    try:
        out = subprocess.run(["ldd", *roots], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return libs
    for line in out.splitlines():
        m = re.search(r"=> (/\S+)", line) or re.match(r"\s+(/\S+) \(", line)
        if m:
            libs.add(m.group(1))
    return libs


def module_library_paths() -> list[str]:
    sonames = _ldconfig_paths()
    paths = []
    for name in MODULE_LIBRARIES:
        pattern = re.compile(rf"lib{re.escape(name)}\.so\.\d+$")
        for soname, path in sonames.items():
            if pattern.match(soname):
                paths.append(path)
                break
    return paths


@dataclass
class Sandbox:
    kind: str  # "bubblewrap" | "landlock" | "none"
    network: bool = False
    workdir: str = "."
    # (source, destination) pairs bound read-only.
    binds: list[tuple[str, str]] = field(default_factory=list)
    python: str = sys.executable
    root: bool = False
    # Server directories under the working directory, hidden by an empty tmpfs.
    hidden: list[str] = field(default_factory=list)
    # Directories bound read-write at the same path (the modules' own directories).
    writable: list[str] = field(default_factory=list)
    # bwrap >= 0.7 bounds a tmpfs (--size); older ones leave /tmp unbounded.
    tmp_size: bool = True
    # Libraries modules link against, for the spare worker to map in advance.
    preload: list[str] = field(default_factory=list)

    @property
    def read_paths(self) -> list[str]:
        """What a worker may read (Landlock's allow list). Landlock cannot
        mask a directory below an allowed one: a working directory holding
        the data, store or run dir is left out altogether."""
        paths = {dest for _, dest in self.binds}
        if not self.hidden:
            paths.add(self.workdir)
        return sorted(paths)

    def command(self, argv: list[str], seccomp_fd: int | None) -> list[str]:
        """argv (starting with the worker's interpreter) as run in the sandbox."""
        if self.kind != "bubblewrap":
            return argv
        cmd = ["bwrap", "--unshare-pid", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup-try"]
        if not self.network:
            cmd.append("--unshare-net")
        if not self.root:
            cmd.append("--unshare-user")
        cmd += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
        if self.root:
            # Only to drop to the worker's own uid, first thing (runtime/worker.py).
            cmd += ["--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        if seccomp_fd is not None:
            cmd += ["--seccomp", str(seccomp_fd)]
        cmd += ["--proc", "/proc", "--dev", "/dev", "--perms", "1777"]
        if self.tmp_size:
            cmd += ["--size", str(TMP_BYTES)]
        cmd += ["--tmpfs", "/tmp"]
        if os.path.islink("/lib"):  # merged /usr: the loader may look in /lib/<triplet> too
            cmd += ["--symlink", os.readlink("/lib"), "/lib"]
        # bwrap makes missing parents of a bind 0700: a worker that dropped
        # to its own uid could not get through them.
        parents = {os.path.dirname(d) for _, d in self.binds} | {os.path.dirname(self.workdir)}
        parents |= {os.path.dirname(w) for w in self.writable if not w.startswith(self.workdir + os.sep)}
        for d in list(parents):
            while d not in ("/", ""):
                parents.add(d)
                d = os.path.dirname(d)
        for d in sorted(parents - {"/", ""}, key=lambda p: p.count("/")):
            if not (os.path.islink("/lib") and (d == "/lib" or d.startswith("/lib/"))):
                cmd += ["--perms", "0755", "--dir", d]
        for src, dest in self.binds:
            cmd += ["--ro-bind", src, dest]
        cmd += ["--ro-bind", self.workdir, self.workdir]
        for path in self.hidden:
            cmd += ["--tmpfs", path]
        for path in self.writable:
            cmd += ["--bind", path, path]
        cmd += ["--chdir", self.workdir, "--"]
        return cmd + [self.python, *argv[1:]]


def _binds() -> tuple[str, list[tuple[str, str]], list[str]]:
    """The real interpreter, the read-only binds a worker needs and the
    module libraries' paths."""
    python = os.path.realpath(sys.executable)
    stdlib = os.path.realpath(sysconfig.get_paths()["stdlib"])
    dynload = os.path.join(stdlib, "lib-dynload")
    module_libs = [os.path.join(os.path.realpath(os.path.dirname(p)), os.path.basename(p)) for p in module_library_paths()]
    extensions = [so for so in glob.glob(os.path.join(dynload, "*.so")) if os.path.basename(so).split(".")[0] in WORKER_EXTENSIONS]
    roots = [python, *sorted(extensions), *module_libs]
    binds = [(python, python), (stdlib, stdlib), (os.path.join(PROJECT_ROOT, "runtime"), os.path.join(PROJECT_ROOT, "runtime"))]
    seen = {python}
    for lib in sorted(_library_closure(roots) | set(module_libs)):
        # The loader looks a library up by directory + soname: keep the name,
        # bind the file it points to.
        dest = os.path.join(os.path.realpath(os.path.dirname(lib)), os.path.basename(lib))
        if lib.startswith("/lib64/"):
            dest = lib  # the program interpreter: its literal path is in every ELF
        if dest in seen or dest.startswith(stdlib + os.sep):
            continue
        seen.add(dest)
        binds.append((os.path.realpath(lib), dest))
    return python, binds, module_libs


def landlock_abi() -> int:
    """The kernel's Landlock ABI version, 0 without Landlock."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        # landlock_create_ruleset(NULL, 0, LANDLOCK_CREATE_RULESET_VERSION)
        abi = libc.syscall(444, None, 0, 1)
        return max(abi, 0)
    except (OSError, AttributeError):
        return 0


def choose(workdir: str, network: bool, unsafe: bool, hidden: list[str] = (),  # type: ignore[assignment]
           writable: list[str] = (), force: str = "") -> Sandbox:  # type: ignore[assignment]
    """Probe what works here: bubblewrap, else Landlock, else none (if
    allowed). force names one (CWEB_WORKER_SANDBOX): "none" still needs
    unsafe; a forced sandbox that does not work is refused, not replaced."""
    root = os.geteuid() == 0
    python, binds, module_libs = _binds()
    workdir = os.path.realpath(workdir)
    # The data dir is often below the working directory (`./data`): keep it out.
    masked = sorted({os.path.realpath(h) for h in hidden if os.path.isdir(h)
                     and (os.path.realpath(h).startswith(workdir + os.sep) or os.path.realpath(h) == workdir)})
    box = Sandbox("bubblewrap", network=network, workdir=workdir, binds=binds, python=python, root=root,
                  hidden=masked, preload=module_libs, writable=[os.path.realpath(w) for w in writable])
    if force == "none":
        box.kind = "none" if unsafe else "refused"
        return box
    if force not in ("", "bubblewrap", "landlock"):
        raise ValueError(f"CWEB_WORKER_SANDBOX={force!r}: bubblewrap, landlock or none")
    if force in ("", "bubblewrap") and shutil.which("bwrap"):
        try:
            box.tmp_size = "--size" in subprocess.run(["bwrap", "--help"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.TimeoutExpired):
            box.tmp_size = False
        probe = box.command([python, "-c", "import runtime.channel"], None)
        try:
            env = {"PYTHONPATH": PROJECT_ROOT, "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
            ok = subprocess.run(probe, capture_output=True, timeout=30, env=env)
            if ok.returncode == 0:
                return box
            log.warning("bubblewrap cannot run here: %s", ok.stderr.decode("utf-8", "replace").strip()[:300])
        except (OSError, subprocess.TimeoutExpired) as exc:
            log.warning("bubblewrap cannot run here: %s", exc)
    if force == "bubblewrap":
        box.kind = "refused"
        return box
    if force in ("", "landlock") and landlock_abi() >= LANDLOCK_MIN_ABI:
        box.kind = "landlock"
        return box
    box.kind = "none"
    if not unsafe:
        box.kind = "refused"
    return box


def confine_self(read: list[str], write: list[str], network: bool) -> int:
    """Landlock, for a worker in "landlock" mode, first thing after exec
    (before any module code; threads started later inherit it): read and
    execute only `read`, read and write only `write`, no TCP bind or
    connect unless network, and (ABI >= 6) no signal to, nor abstract Unix
    socket of, any process outside this worker. Returns the ABI used."""
    from landlockpy import AccessFS, AccessNet, Ruleset, Scope

    rx = AccessFS.EXECUTE | AccessFS.READ_FILE | AccessFS.READ_DIR
    with Ruleset(handled_net=AccessNet.NONE if network else None,
                 scoped=Scope.ABSTRACT_UNIX_SOCKET | Scope.SIGNAL) as rs:
        for path in read:
            if os.path.exists(path):
                # Directory rights on a file are EINVAL.
                rs.allow_path(path, rx if os.path.isdir(path) else AccessFS.EXECUTE | AccessFS.READ_FILE)
        for path in write:
            if os.path.exists(path):
                rs.allow_path(path, rs.handled_fs)
        for dev in ("/dev/null", "/dev/zero", "/dev/full"):
            rs.allow_path(dev, AccessFS.READ_FILE | AccessFS.WRITE_FILE)
        for dev in ("/dev/urandom", "/dev/random"):
            rs.allow_path(dev, AccessFS.READ_FILE)
        rs.restrict()
        return rs.abi_version
