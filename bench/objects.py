"""How long a cold node takes to get an artifact from the object store.

    .venv/bin/python bench/objects.py [--size 1048576] [--rounds 20]

Needs an S3 endpoint in CWEB_S3_ENDPOINT / CWEB_S3_ACCESS_KEY /
CWEB_S3_SECRET_KEY (e.g. `docker run -d -p 127.0.0.1:19210:8333 -e
CWEB_S3_ACCESS_KEY=k -e CWEB_S3_SECRET_KEY=s cweb-s3:dev`). One builder's
store writes a signed artifact of --size random bytes (as builder/local.py
does after a compile); then, each round, an empty store directory (a node
that never saw it) runs Store.fetch_artifact, the work of
`artifacts.ensure()`: manifest and builder key fetched and verified, the
artifact fetched, hashed and written atomically. Prints a JSON line of
milliseconds: publish, then fetch min / median / p95 / max.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
import uuid

# The repository instead of bench/ (whose http.py would shadow the standard library's).
sys.path[0] = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

from builder.objects import ObjectStore, S3Settings  # noqa: E402
from builder.store import Store  # noqa: E402
from runtime import provenance  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--size", type=int, default=1 << 20)
    p.add_argument("--rounds", type=int, default=20)
    args = p.parse_args()
    base = S3Settings.from_env(dict(os.environ))
    if not base.enabled:
        sys.exit("set CWEB_S3_ENDPOINT, CWEB_S3_ACCESS_KEY and CWEB_S3_SECRET_KEY")
    settings = S3Settings(base.endpoint, f"bench-{uuid.uuid4().hex[:12]}", base.region, base.access_key, base.secret_key)
    objects = ObjectStore(settings)
    with tempfile.TemporaryDirectory(prefix="cweb-bench-s3-") as tmp:
        builder = Store(os.path.join(tmp, "builder"), objects)
        signer = provenance.Signer.load_or_create("bench", None)
        signer.register(builder.root)
        data = os.urandom(args.size)
        module_hash = hashlib.sha256(data).hexdigest()
        source_sha, key = hashlib.sha256(b"bench").hexdigest(), hashlib.sha256(b"key").hexdigest()
        manifest = {"module_hash": module_hash, "source_sha256": source_sha, "build_key": key,
                    "provenance": signer.sign(build_key=key, toolchain={}, source_sha256=source_sha, module_hash=module_hash)}
        t = time.perf_counter()
        builder.put_artifact(module_hash, data, manifest)
        publish_ms = (time.perf_counter() - t) * 1000
        samples = []
        for i in range(args.rounds):
            node = Store(os.path.join(tmp, f"node-{i}"), ObjectStore(settings))
            t = time.perf_counter()
            assert node.fetch_artifact(module_hash) is True
            samples.append((time.perf_counter() - t) * 1000)
            assert node.artifact_intact(module_hash)
        for o in objects._client.list_objects_v2(Bucket=settings.bucket).get("Contents", []):
            objects.delete(o["Key"])
        objects._client.delete_bucket(Bucket=settings.bucket)
    samples.sort()
    print(json.dumps({"size": args.size, "rounds": args.rounds, "publish_ms": round(publish_ms, 1),
                      "fetch_ms": {"min": round(samples[0], 1), "median": round(statistics.median(samples), 1),
                                   "p95": round(samples[max(0, int(len(samples) * 0.95) - 1)], 1),
                                   "max": round(samples[-1], 1)}}))


if __name__ == "__main__":
    main()
