"""The baseline a Python user would write instead of cweb.

A plain FastAPI app on uvicorn (uvloop, httptools, one process) that loads
the benchmark kernels of bench/modules/baseline.c in-process with ctypes —
no isolation, no hot swap — and serves the same routes as the cweb module
bench/modules/workloads.c:

    GET /b/trivial, /b/sha256, /b/compute, /b/big; POST /b/upload

Endpoints whose C call does real work (sha256, compute, big) are plain
`def`, so FastAPI runs them on its thread pool and ctypes releases the GIL
during the call, as FastAPI's documentation advises for blocking code; the
trivial route and the upload (which must await the body) are `async def`.

Run as a module from the repository root (bench/ must not be on sys.path,
or bench/http.py would shadow the standard library's `http`):

    python -m bench.baseline_app --port 8001 --lib /tmp/baseline.so --compute-iters 1000000

`compile_library()` and `calibrate()` are the helpers run.py uses to build
that library and to find the loop count that takes ~1 ms.
"""


import argparse
import ctypes
import subprocess
import time
from pathlib import Path

SOURCE = Path(__file__).resolve().parent / "modules" / "baseline.c"
GCC_ARGV = ["gcc", "-std=gnu11", "-O2", "-shared", "-fPIC"]


def compile_library(out_dir: Path) -> Path:
    """gcc -O2 -shared -fPIC baseline.c -lcrypto into out_dir/baseline.so."""
    out = out_dir / "baseline.so"
    subprocess.run([*GCC_ARGV, "-o", str(out), str(SOURCE), "-lcrypto"], check=True, capture_output=True, timeout=120)
    return out


def load(lib_path: str | Path) -> ctypes.CDLL:
    """The library with every function's signature declared."""
    lib = ctypes.CDLL(str(lib_path))
    lib.bl_spin.argtypes = [ctypes.c_uint64]
    lib.bl_spin.restype = ctypes.c_uint64
    lib.bl_configure.argtypes = [ctypes.c_uint64]
    lib.bl_configure.restype = None
    for name in ("bl_trivial", "bl_sha256", "bl_compute", "bl_big"):
        fn = getattr(lib, name)
        fn.argtypes = [ctypes.c_char_p, ctypes.c_int]
        fn.restype = ctypes.c_int
    lib.bl_big_size.argtypes = []
    lib.bl_big_size.restype = ctypes.c_int
    lib.bl_upload.argtypes = [ctypes.c_char_p, ctypes.c_long]
    lib.bl_upload.restype = ctypes.c_long
    return lib


def calibrate(lib_path: str | Path, target_ms: float = 1.0, rounds: int = 15) -> int:
    """Loop iterations that take target_ms on this machine (best of rounds,
    so other load on the machine inflates the estimate as little as possible)."""
    lib = load(lib_path)
    probe = 2_000_000
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        lib.bl_spin(probe)
        best = min(best, time.perf_counter() - t0)
    return max(1, round(probe * (target_ms / 1000) / best))


def create_app(lib_path: str | Path, compute_iters: int):  # noqa: ANN201 - FastAPI imported lazily
    from fastapi import FastAPI, Request, Response

    lib = load(lib_path)
    lib.bl_configure(compute_iters)
    big_size = lib.bl_big_size()
    app = FastAPI(title="cweb bench baseline", docs_url=None, redoc_url=None, openapi_url=None)

    @app.get("/b/trivial")
    async def trivial() -> Response:
        buf = ctypes.create_string_buffer(16)
        n = lib.bl_trivial(buf, len(buf))
        return Response(buf.raw[:n], media_type="text/plain")

    @app.get("/b/sha256")
    def sha256() -> Response:
        buf = ctypes.create_string_buffer(160)
        n = lib.bl_sha256(buf, len(buf))
        return Response(buf.raw[:n], media_type="text/plain")

    @app.get("/b/compute")
    def compute() -> Response:
        buf = ctypes.create_string_buffer(64)
        n = lib.bl_compute(buf, len(buf))
        return Response(buf.raw[:n], media_type="text/plain")

    @app.get("/b/big")
    def big() -> Response:
        buf = ctypes.create_string_buffer(big_size)
        n = lib.bl_big(buf, big_size)
        return Response(buf.raw[:n], media_type="application/octet-stream")

    @app.post("/b/upload")
    async def upload(request: Request) -> Response:
        body = await request.body()
        return Response(str(lib.bl_upload(body, len(body))), media_type="text/plain")

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lib", required=True, help="path of the compiled baseline.so")
    parser.add_argument("--compute-iters", type=int, default=1_000_000)
    args = parser.parse_args()

    import uvicorn

    uvicorn.run(
        create_app(args.lib, args.compute_iters),
        host=args.host,
        port=args.port,
        loop="uvloop",
        http="httptools",
        log_level="warning",
        access_log=False,
    )


if __name__ == "__main__":
    main()
