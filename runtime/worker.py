"""One worker process: hosts exactly one module artifact.

Started by the agent (spawned, never forked from the api) and driven over a
socket (fd number in CWEB_CONTROL_FD) with JSON lines:

    agent -> worker   {"op": "load", "hash", "path", "socket", "data_dir", ...}
    worker -> agent   {"op": "loaded", "describe": {...}} | {"op": "error", ...}
    agent -> worker   {"op": "start"}     runs onload, then accepts connections
    worker -> agent   {"op": "ready"}
    agent -> worker   {"op": "stop"}      runs unload, exits 0

Each accepted connection gets a thread that calls cweb_abi_serve(fd): the
request loop is C, entered once per connection through ctypes, which drops
the GIL for the whole call.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import hashlib
import json
import os
import socket
import sys
import threading

from runtime import abi, limits


class WorkerError(Exception):
    """A load step failed; `code` is the stable error code sent to the api."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def load_artifact(path: str, expected_hash: str) -> ctypes.CDLL:
    """Re-verify the artifact's hash, then dlopen it privately."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != expected_hash:
        raise WorkerError("artifact_corrupt", f"artifact {expected_hash[:12]} does not match its hash")
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_NOW | os.RTLD_LOCAL)
    except OSError as exc:
        raise WorkerError("load_failed", f"cannot load module: {exc}") from exc
    abi.bind(lib)
    version = lib.cweb_abi_version()
    if version != abi.ABI_VERSION:
        raise WorkerError("abi_mismatch", f"module ABI {version}, runtime expects {abi.ABI_VERSION}")
    return lib


def describe(lib: ctypes.CDLL) -> dict:
    """The module's declaration as the glue reports it."""
    cap = 1 << 16
    while True:
        buf = ctypes.create_string_buffer(cap)
        n = lib.cweb_abi_describe(buf, cap)
        if n == -1:
            raise WorkerError("missing_config", "the module defines no `module_t config` symbol")
        if n < 0:
            raise WorkerError("describe_failed", "the module declaration could not be read")
        if n < cap:
            return json.loads(buf.value.decode("utf-8", "replace"))
        cap = n + 1


class Worker:
    def __init__(self, control: socket.socket) -> None:
        self.control = control
        self.rfile = control.makefile("r", encoding="utf-8")
        self.lib: ctypes.CDLL | None = None
        self.listener: socket.socket | None = None
        self.conns: set[socket.socket] = set()
        self.lock = threading.Lock()

    def send(self, msg: dict) -> None:
        self.control.sendall(json.dumps(msg).encode() + b"\n")

    def run(self) -> None:
        for line in self.rfile:
            msg = json.loads(line)
            op = msg.get("op")
            try:
                if op == "load":
                    self.load(msg)
                elif op == "start":
                    self.start()
                elif op == "stop":
                    self.stop()
                    # Threads may still sit in C; skip interpreter teardown.
                    os._exit(0)
            except WorkerError as exc:
                self.send({"op": "error", "error": exc.code, "message": exc.message})
        # The agent went away: nobody can drive us any more.
        os._exit(0)

    def load(self, msg: dict) -> None:
        self.lib = load_artifact(msg["path"], msg["hash"])
        self.lib.cweb_abi_init(msg.get("data_dir", "").encode(), int(msg.get("max_response", 0)))
        self.socket_path = msg["socket"]
        self.send({"op": "loaded", "describe": describe(self.lib)})

    def start(self) -> None:
        assert self.lib is not None
        # A crash here kills the process; the agent reports it as an onload failure.
        self.lib.cweb_abi_onload()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(self.socket_path)
        except FileNotFoundError:
            pass
        listener.bind(self.socket_path)
        listener.listen(256)
        self.listener = listener
        threading.Thread(target=self.accept_loop, daemon=True).start()
        self.send({"op": "ready"})

    def accept_loop(self) -> None:
        assert self.listener is not None
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
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
        if self.listener is not None:
            self.listener.close()
            try:
                os.unlink(self.socket_path)
            except OSError:
                pass
        if self.lib is not None:
            self.lib.cweb_abi_unload()
        sys.stdout.flush()
        self.send({"op": "stopped"})


def preload_libraries() -> None:
    """Map the libraries every module links while this worker is still a spare,
    so that loading an artifact later only relocates the module itself."""
    for name in ("ssl", "crypto", "sqlite3", "jansson"):
        path = ctypes.util.find_library(name)
        if path:
            try:
                ctypes.CDLL(path, mode=os.RTLD_LOCAL)
            except OSError:
                pass


def main() -> None:
    limits.seal_after_exec()
    preload_libraries()
    control = socket.socket(fileno=int(os.environ["CWEB_CONTROL_FD"]))
    # Module printf output must reach the agent's log pipe promptly.
    sys.stdout.reconfigure(line_buffering=True)
    Worker(control).run()


if __name__ == "__main__":
    main()
