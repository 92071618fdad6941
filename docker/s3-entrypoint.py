#!/usr/bin/env python3
"""Start SeaweedFS (`weed server -s3`) with one S3 identity from the environment.

CWEB_S3_ACCESS_KEY / CWEB_S3_SECRET_KEY, or their *_FILE variants (a swarm or
Kubernetes secret), are the only credentials the gateway accepts: the same
names the api and the builder read, so one secret serves all three. Without
them the gateway would answer anyone, so it refuses to start instead.

Env: WEED_VOLUME_SIZE_LIMIT_MB (default 1024: small volumes, because every
bucket is its own collection of volumes), WEED_VOLUME_MAX (default 0: as
many volumes as the disk holds).
"""

import json
import os
import sys

CONFIG = "/run/seaweedfs/s3.json"


def secret(name: str) -> str:
    path = os.environ.get(f"{name}_FILE", "")
    if path:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    return os.environ.get(name, "").strip()


def main() -> None:
    access, secret_key = secret("CWEB_S3_ACCESS_KEY"), secret("CWEB_S3_SECRET_KEY")
    if not access or not secret_key:
        sys.exit("s3-entrypoint: set CWEB_S3_ACCESS_KEY and CWEB_S3_SECRET_KEY (or their _FILE variants)")
    identity = {"name": "cweb", "credentials": [{"accessKey": access, "secretKey": secret_key}],
                "actions": ["Admin", "Read", "List", "Tagging", "Write"]}
    fd = os.open(CONFIG, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump({"identities": [identity]}, f)
    argv = [
        "weed", "server", "-dir=/data", "-ip=127.0.0.1", "-ip.bind=0.0.0.0",
        "-s3", "-s3.port=8333", f"-s3.config={CONFIG}",
        f"-master.volumeSizeLimitMB={os.environ.get('WEED_VOLUME_SIZE_LIMIT_MB', '1024')}",
        f"-volume.max={os.environ.get('WEED_VOLUME_MAX', '0')}",
        *sys.argv[1:],
    ]
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main()
