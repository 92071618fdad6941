"""One worker process: hosts exactly one module artifact.

Started by the agent (spawned, never forked from the api) and driven over
an inherited socket (fd number in CWEB_CONTROL_FD) with JSON lines
(runtime/channel.py), descriptors passed alongside:

    agent -> worker   {"op": "load", "hash", "data_dir", ..., "fds": 1}   + the artifact
    worker -> agent   {"op": "loaded", "describe": {...}} | {"op": "error", ...}
    agent -> worker   {"op": "start"}     runs onload
    worker -> agent   {"op": "ready"}
    agent -> worker   {"op": "attach", "fds": n}   + n data connections (no answer)
    agent -> worker   {"op": "stop"}      runs unload, exits 0

The worker listens nowhere: its data connections are socketpairs the agent
made. Each gets a thread that calls cweb_abi_serve(fd): the request loop is
C, entered once per connection through ctypes, which drops the GIL for the
whole call.
"""

from __future__ import annotations

import ctypes
import fcntl
import hashlib
import json
import os
import socket
import sys
import threading

from runtime import abi, limits
from runtime.channel import ChannelError, Lines, recv_blocking, send_blocking
from runtime.errors import RuntimeFailure


def load_artifact(fd: int, expected_hash: str) -> ctypes.CDLL:
    """Re-verify the artifact's hash, then dlopen exactly the bytes hashed.

    fd is the artifact the agent opened. Its bytes are copied into a sealed
    memfd first: what is loaded cannot change after the check, whoever can
    write the store."""
    with os.fdopen(fd, "rb") as f:
        data = f.read()
    if hashlib.sha256(data).hexdigest() != expected_hash:
        raise RuntimeFailure("artifact_corrupt", f"artifact {expected_hash[:12]} does not match its hash")
    mem = os.memfd_create("cweb-module", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        view = memoryview(data)
        written = 0
        while written < len(view):
            written += os.write(mem, view[written:])
        fcntl.fcntl(mem, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE | fcntl.F_SEAL_SEAL)
        try:
            lib = ctypes.CDLL(f"/proc/self/fd/{mem}", mode=os.RTLD_NOW | os.RTLD_LOCAL)
        except OSError as exc:
            raise RuntimeFailure("load_failed", f"cannot load module: {exc}") from exc
    finally:
        # The mapping keeps the code; the descriptor is no longer needed.
        os.close(mem)
    abi.bind(lib)
    version = lib.cweb_abi_version()
    if version != abi.ABI_VERSION:
        raise RuntimeFailure("abi_mismatch", f"module ABI {version}, runtime expects {abi.ABI_VERSION}")
    return lib


def describe(lib: ctypes.CDLL) -> dict:
    """The module's declaration as the glue reports it."""
    cap = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(cap)
        n = lib.cweb_abi_describe(buf, cap)
        if n == -1:
            raise RuntimeFailure("missing_config", "the module defines no `module_t config` symbol")
        if n < 0:
            raise RuntimeFailure("describe_failed", "the module declaration could not be read")
        if n < cap:
            return json.loads(buf.value.decode("utf-8", "replace"))
        cap = n + 1


class Worker:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.parser = Lines()
        self.lib: ctypes.CDLL | None = None
        self.started = False
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()

    def send(self, msg: dict) -> None:
        send_blocking(self.control, msg)

    def run(self) -> None:
        while True:
            try:
                batch = recv_blocking(self.control, self.parser, accept_fds=True)
            except (ChannelError, OSError):
                batch = None
            if batch is None:
                # The agent went away: nobody can drive us any more.
                os._exit(0)
            for msg, fds in batch:
                self.handle(msg, fds)

    def handle(self, msg: dict, fds: list[int]) -> None:
        op = msg.get("op")
        try:
            if op == "load":
                self.load(msg, fds)
            elif op == "start":
                self.start(msg, fds)
            elif op == "attach":
                self.attach(fds)
            elif op == "stop":
                self.stop()
                # Threads may still sit in C; skip interpreter teardown.
                os._exit(0)
            else:
                for fd in fds:
                    os.close(fd)
        except RuntimeFailure as exc:
            self.send({"op": "error", "error": exc.code, "message": exc.message})

    def load(self, msg: dict, fds: list[int]) -> None:
        if len(fds) != 1 or self.lib is not None:
            for fd in fds:
                os.close(fd)
            raise RuntimeFailure("load_failed", "a load needs exactly one artifact, once")
        self.lib = load_artifact(fds[0], msg["hash"])
        # No data dir: a worker reaches shared services through the broker only.
        self.lib.cweb_abi_init(b"", int(msg.get("max_response", 0)))
        self.send({"op": "loaded", "describe": describe(self.lib)})

    def start(self, msg: dict, fds: list[int]) -> None:
        assert self.lib is not None
        for fd in fds:
            os.close(fd)
        # The module's own directory (its database), before onload can use it.
        set_dir = getattr(self.lib, "cweb_abi_module_dir", None)
        if set_dir is not None and msg.get("module_dir"):
            set_dir.argtypes = [ctypes.c_char_p]
            set_dir.restype = ctypes.c_int
            set_dir(str(msg["module_dir"]).encode())
        # The module's secrets, for cweb_secret(), before onload can ask;
        # the C side keeps its own copy, this process keeps none.
        values = msg.pop("secrets", None)
        if values:
            set_secrets = self.lib.cweb_abi_secrets
            set_secrets.argtypes = [ctypes.c_char_p]
            set_secrets.restype = ctypes.c_int
            set_secrets(json.dumps(values).encode())
            del values
        # A crash here kills the process; the agent reports it as an onload failure.
        self.lib.cweb_abi_onload()
        self.started = True
        self.send({"op": "ready"})

    def attach(self, fds: list[int]) -> None:
        for fd in fds:
            conn = socket.socket(fileno=fd)
            if not self.started:
                conn.close()
                continue
            with self.lock:
                self.conns.add(conn)
            threading.Thread(target=self.serve, args=(conn,), daemon=True).start()

    def serve(self, conn: socket.socket) -> None:
        assert self.lib is not None
        try:
            self.lib.cweb_abi_serve(conn.fileno())
        finally:
            with self.lock:
                self.conns.discard(conn)
            conn.close()

    def stop(self) -> None:
        if self.lib is not None:
            self.lib.cweb_abi_unload()
        sys.stdout.flush()
        self.send({"op": "stopped"})


def preload_libraries() -> None:
    """Map the libraries every module links while this worker is still a spare,
    so that loading an artifact later only relocates the module itself. The
    agent names them (CWEB_PRELOAD): inside the sandbox nothing can be
    looked up (ctypes.util.find_library runs programs)."""
    for path in filter(None, os.environ.get("CWEB_PRELOAD", "").split(":")):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_LOCAL)
        except OSError:
            continue
        if os.path.basename(path).startswith("libssl."):
            warm_openssl(lib)


def warm_openssl(libssl: ctypes.CDLL) -> None:
    """Every module's glue makes an SSL_CTX at load (ctx->crypto). OpenSSL's
    first one reads its configuration and fills its algorithm caches (about
    2 ms, ten times a later one): a spare pays that before a deploy waits."""
    try:
        libssl.TLS_server_method.restype = ctypes.c_void_p
        libssl.SSL_CTX_new.restype = ctypes.c_void_p
        libssl.SSL_CTX_new.argtypes = [ctypes.c_void_p]
        libssl.SSL_CTX_free.argtypes = [ctypes.c_void_p]
        libssl.SSL_CTX_free(libssl.SSL_CTX_new(libssl.TLS_server_method()))
    except AttributeError:
        pass


def main() -> None:
    uid = os.environ.get("CWEB_WORKER_UID")
    if uid:
        # bwrap ran as root (to mount) and left us CAP_SETUID/CAP_SETGID only
        # for this: the worker's own uid, and no capability after it. No
        # other process has that uid or shares the PID namespace, so the
        # worker stays dumpable (a module may read its own /proc/self/mem).
        limits.drop_to_uid(int(uid))
    else:
        limits.seal_after_exec()
    preload_libraries()
    if os.environ.get("CWEB_SANDBOX") == "landlock":
        from runtime import sandbox

        sandbox.confine_self(json.loads(os.environ["CWEB_LANDLOCK_READ"]), json.loads(os.environ["CWEB_LANDLOCK_WRITE"]),
                             os.environ.get("CWEB_LANDLOCK_NETWORK") == "1")
    control = socket.socket(fileno=int(os.environ["CWEB_CONTROL_FD"]))
    # Module printf output must reach the agent's log pipe promptly.
    sys.stdout.reconfigure(line_buffering=True)
    Worker(control).run()


if __name__ == "__main__":
    main()
