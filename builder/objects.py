"""The store's remote tier: one bucket of an S3-compatible object store.

Keys follow the local store's layout (builder/store.py), one object per file:

    artifacts/<module_hash>.so   artifacts/<module_hash>.json
    sources/<source_sha256>.c    actions/<build_key>.json    builders/<key_id>.json

Every key names its content by digest, so an object is written once and never
changes meaning; readers verify what they get (builder/store.py) and never
trust the store's word for it. All calls block (boto3): callers on an event
loop run them in a thread.

boto3 >= 1.36 adds CRC checksums to every upload and validates them on
download by default, which several S3-compatible stores do not speak: this
client asks for them only where S3 requires them, and addresses buckets by
path (http://host:8333/bucket/key), which every such store serves.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass

from botocore.exceptions import BotoCoreError, ClientError

from builder import limits
from builder.errors import ObjectStoreUnavailable
from runtime.env import env_secret

__all__ = ["ObjectStore", "S3Settings"]

# Error codes that mean "no such object" (GET says NoSuchKey, HEAD only 404;
# a bucket not created yet holds nothing either).
_MISSING = {"NoSuchKey", "404", "NotFound", "NoSuchBucket"}


@dataclass(frozen=True)
class S3Settings:
    """Where the object store is; empty endpoint: no object store."""

    endpoint: str = ""
    bucket: str = "cweb"
    region: str = "us-east-1"
    access_key: str = ""
    secret_key: str = ""

    @property
    def enabled(self) -> bool:
        return bool(self.endpoint)

    @classmethod
    def from_env(cls, env: dict) -> S3Settings:
        return cls(
            endpoint=env.get("CWEB_S3_ENDPOINT", "").strip(),
            bucket=env.get("CWEB_S3_BUCKET", "cweb").strip() or "cweb",
            region=env.get("CWEB_S3_REGION", "us-east-1").strip() or "us-east-1",
            access_key=env_secret(env, "CWEB_S3_ACCESS_KEY"),
            secret_key=env_secret(env, "CWEB_S3_SECRET_KEY"),
        )


class ObjectStore:
    """get/put by key in one bucket; the bucket is created on first use when missing."""

    def __init__(self, settings: S3Settings) -> None:
        # Here, not at the top: a server without an object store (the
        # default) never pays boto3's import (0.3 s), and api/settings.py
        # reads S3Settings from this module.
        import boto3
        from botocore.config import Config

        self.settings = settings
        self.bucket = settings.bucket
        self.endpoint = settings.endpoint.rstrip("/")
        config = Config(
            s3={"addressing_style": "path"},
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=limits.S3_CONNECT_TIMEOUT_S,
            read_timeout=limits.S3_READ_TIMEOUT_S,
            retries={"max_attempts": limits.S3_ATTEMPTS, "mode": "standard"},
            max_pool_connections=limits.S3_POOL_CONNECTIONS,
        )
        # A session of its own: boto3's default session is not thread-safe to
        # create clients from, and this client is shared by worker threads (clients are).
        session = boto3.session.Session()
        self._client = session.client(
            "s3",
            endpoint_url=self.endpoint,
            region_name=settings.region,
            aws_access_key_id=settings.access_key or None,
            aws_secret_access_key=settings.secret_key or None,
            config=config,
        )
        self._bucket_ready = False
        self._bucket_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"ObjectStore({self.endpoint}/{self.bucket})"

    def _fail(self, what: str, key: str, exc: Exception) -> ObjectStoreUnavailable:
        if isinstance(exc, ClientError):
            err = exc.response.get("Error", {})
            detail = f"{err.get('Code', '?')}: {err.get('Message', '')}".strip()
        else:
            detail = str(exc)
        return ObjectStoreUnavailable(f"object store {self.endpoint}/{self.bucket}: {what} {key} failed ({detail})")

    def ensure_bucket(self) -> None:
        """Create the bucket when it is missing (once per process)."""
        if self._bucket_ready:
            return
        with self._bucket_lock:
            if self._bucket_ready:
                return
            try:
                self._client.head_bucket(Bucket=self.bucket)
            except ClientError as exc:
                if exc.response.get("Error", {}).get("Code") not in _MISSING:
                    raise self._fail("checking bucket", self.bucket, exc) from exc
                try:
                    self._client.create_bucket(Bucket=self.bucket)
                except ClientError as exc2:
                    code = exc2.response.get("Error", {}).get("Code")
                    if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
                        raise self._fail("creating bucket", self.bucket, exc2) from exc2
            except BotoCoreError as exc:
                raise self._fail("checking bucket", self.bucket, exc) from exc
            self._bucket_ready = True

    def _read(self, what: str, key: str, call: Callable[..., dict]) -> dict | None:
        """call(Bucket=, Key=)'s answer, None when there is no such object."""
        try:
            return call(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in _MISSING:
                return None
            raise self._fail(what, key, exc) from exc
        except BotoCoreError as exc:
            raise self._fail(what, key, exc) from exc

    def get(self, key: str, max_bytes: int) -> bytes | None:
        """The object's bytes, None when there is none. One larger than
        max_bytes is refused (ObjectStoreUnavailable), never read whole."""
        resp = self._read("GET", key, self._client.get_object)
        if resp is None:
            return None
        body = resp["Body"]
        try:
            if int(resp.get("ContentLength") or 0) > max_bytes:
                raise ObjectStoreUnavailable(f"object {key} is {resp['ContentLength']} bytes; the limit is {max_bytes}")
            data = body.read(max_bytes + 1)
        except (BotoCoreError, OSError) as exc:
            raise self._fail("GET", key, exc) from exc
        finally:
            body.close()
        if len(data) > max_bytes:
            raise ObjectStoreUnavailable(f"object {key} is larger than {max_bytes} bytes")
        return data

    def exists(self, key: str) -> bool:
        return self._read("HEAD", key, self._client.head_object) is not None

    def put(self, key: str, data: bytes, content_type: str = "application/octet-stream") -> None:
        self.ensure_bucket()
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("PUT", key, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self._client.delete_object(Bucket=self.bucket, Key=key)
        except (ClientError, BotoCoreError) as exc:
            raise self._fail("DELETE", key, exc) from exc

    def close(self) -> None:
        self._client.close()
