"""Run a module's handlers under AddressSanitizer and UndefinedBehaviorSanitizer, locally.

    .venv/bin/python scripts/sanitize.py module.c "GET /items/42" "POST /items body=..."

Compiles module.c together with the SDK's glue sources (builder/sdk, the same
code the server links into every artifact) with -fsanitize=address,undefined,
loads it the way a worker does (runtime/worker.py: cweb_abi_init, describe,
onload), sends each request as the server would (runtime/protocol.py frames
over a socketpair to cweb_abi_serve) and prints the status and body. A memory
error or undefined behaviour stops the run with the sanitizer's report, its
stack naming module.c lines; the exit status is then non-zero.

No sandbox: this runs your code as you, like any local test build. The
module's sqlite database goes to a temporary directory; the cross-module
cache and the signing services (the broker) are not there, so their calls
fail as they do when the broker is unreachable.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import threading

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SDK = os.path.join(ROOT, "builder", "sdk")
SANITIZE = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=undefined"]
# What builder/compile.py uses, minus -O2 (clearer stacks) and the strip.
CFLAGS = ["-std=gnu11", "-O1", "-g", "-fPIC", "-Wall", "-Werror=incompatible-pointer-types"]
LDFLAGS = ["-shared", "-Wl,--wrap=free,--wrap=realloc", "-lssl", "-lcrypto", "-lsqlite3", "-ljansson", "-lpthread", "-lm"]
MARK = "CWEB_SANITIZE_CHILD"


def build(source: str, out: str) -> None:
    glue = sorted(os.path.join(SDK, n) for n in os.listdir(SDK) if n.endswith(".c"))
    argv = ["gcc", *CFLAGS, *SANITIZE, "-I", SDK, *glue, source, "-o", out, *LDFLAGS]
    run = subprocess.run(argv, capture_output=True, text=True)
    if run.returncode != 0:
        sys.stderr.write(run.stderr)
        raise SystemExit(f"{source}: does not compile (gcc exit {run.returncode})")


def parse_request(text: str) -> tuple[str, str, str, bytes]:
    """'METHOD /path?query [body]' -> method, path, query, body."""
    parts = text.split(" ", 2)
    if len(parts) < 2 or not parts[1].startswith("/"):
        raise SystemExit(f"{text!r}: write a request as 'GET /path?query' or 'POST /path BODY'")
    path, _, query = parts[1].partition("?")
    return parts[0].upper(), path, query, parts[2].encode() if len(parts) > 2 else b""


def serve_one(lib: ctypes.CDLL, frame: bytes | list[bytes]) -> tuple[int, bytes]:
    from runtime import protocol

    ours, theirs = socket.socketpair()
    t = threading.Thread(target=lib.cweb_abi_serve, args=(theirs.fileno(),), daemon=True)
    t.start()
    ours.sendall(frame if isinstance(frame, bytes) else b"".join(frame))
    head = ours.recv(4, socket.MSG_WAITALL)
    if len(head) < 4:
        raise SystemExit("the module closed the connection without answering")
    (n,) = struct.unpack("<I", head)
    reply = b""
    while len(reply) < n:
        chunk = ours.recv(n - len(reply))
        if not chunk:
            break
        reply += chunk
    ours.shutdown(socket.SHUT_WR)
    t.join(5)
    ours.close()
    theirs.close()
    status, _block, body = protocol.split_http_response(reply)
    return status, bytes(body)


def child(so: str, requests: list[str]) -> int:
    sys.path.insert(0, ROOT)
    from api.route_regex import RoutePattern
    from runtime import abi, protocol
    from runtime.worker import describe

    lib = ctypes.CDLL(so, mode=os.RTLD_NOW)
    abi.bind(lib)
    lib.cweb_abi_init(b"", 0)
    decl = describe(lib)
    set_dir = getattr(lib, "cweb_abi_module_dir", None)
    if set_dir is not None:
        set_dir.argtypes = [ctypes.c_char_p]
        set_dir.restype = ctypes.c_int
        set_dir(tempfile.mkdtemp(prefix="cweb-sanitize-").encode())
    lib.cweb_abi_onload()
    routes = [(i, r) for i, r in enumerate(decl.get("routes", [])) if r.get("path") and r.get("method")]
    for text in requests:
        method, path, query, body = parse_request(text)
        index = next((i for i, r in routes if r["method"].upper() == method
                      and (r["path"] == path or RoutePattern(r["path"]).fullmatch(path))), None)
        if index is None:
            print(f"{method} {path}: no route of module {decl.get('name')!r} matches", flush=True)
            continue
        frame = protocol.encode_http(protocol.METHOD_CODES[method], index, path.encode(), query.encode(), body,
                                     [(b"host", b"localhost")] + ([(b"content-length", str(len(body)).encode())] if body else []))
        status, answer = serve_one(lib, frame)
        print(f"{method} {path} -> {status} {answer.decode('utf-8', 'replace')}", flush=True)
    lib.cweb_abi_unload()
    return 0


def main() -> int:
    if os.environ.get(MARK):
        return child(sys.argv[1], sys.argv[2:])
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("source", help="the module's C file")
    p.add_argument("requests", nargs="*", help="requests to send, e.g. 'GET /items/42'")
    args = p.parse_args()
    out = os.path.join(tempfile.mkdtemp(prefix="cweb-sanitize-"), "module.asan.so")
    build(args.source, out)
    libasan = subprocess.run(["gcc", "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    env = dict(os.environ, **{MARK: "1"})
    # The sanitizer runtime must come first in the process; Python itself leaks by design.
    env["LD_PRELOAD"] = libasan
    env.setdefault("ASAN_OPTIONS", "detect_leaks=0:abort_on_error=0")
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    print("running under ASan+UBSan:", shlex.join([sys.executable, __file__, out, *args.requests]), file=sys.stderr, flush=True)
    return subprocess.run([sys.executable, os.path.abspath(__file__), out, *args.requests], env=env).returncode


if __name__ == "__main__":
    raise SystemExit(main())
