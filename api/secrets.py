"""Per-module secrets: values a module reads through the SDK
(`cweb_secret("KEY")`), kept out of its source, the store and the logs.

    PUT    /modules/{name}/secrets/{key}   the request body is the value
    GET    /modules/{name}/secrets         the keys, never the values
    DELETE /modules/{name}/secrets/{key}

Every one needs the API key when keys are configured (api/auth.py). Values
live in <data dir>/secrets/<name>.json (directory 0700, file 0600, written
atomically), beside the registry and never in the store, which a builder
writes and a runtime reads. A worker gets its module's secrets over its
control channel when it starts (api/modules/spawner.py -> agent `start` ->
worker -> cweb_abi_secrets), before onload; a change applies to workers
started after it: the next deploy, rollback or restart. The agent never
writes them anywhere, and no log line carries them.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any

import orjson
from fastapi import APIRouter, Request

from api.errors import Invalid, NotFound, PayloadTooLarge, disk_full_is_507
from api.settings import MAX_SECRET_BYTES, MAX_SECRETS_PER_MODULE
from runtime.files import write_atomic

router = APIRouter()

SECRETS_DIR = "secrets"
_KEY = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,63}$")
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")


class SecretStore:
    """One small JSON file per module; reads are cheap enough for every worker start."""

    def __init__(self, data_dir: str) -> None:
        self.dir = os.path.join(data_dir, SECRETS_DIR)
        self.lock = threading.Lock()

    def _path(self, name: str) -> str:
        if not _NAME.match(name):
            raise Invalid(f"module name {name[:40]!r} must be 1-128 letters, digits, '_', '.', '-'", code="invalid_name")
        return os.path.join(self.dir, f"{name}.json")

    def all(self, name: str) -> dict[str, str]:
        try:
            with open(self._path(name), "rb") as f:
                return orjson.loads(f.read())
        except FileNotFoundError:
            return {}

    def put(self, name: str, key: str, value: str) -> None:
        if not _KEY.match(key):
            raise Invalid(f"secret key {key[:40]!r} must be a C-like identifier of at most 64 characters", code="invalid_key")
        if len(value.encode()) > MAX_SECRET_BYTES:
            raise PayloadTooLarge(f"a secret holds at most {MAX_SECRET_BYTES} bytes", code="secret_too_large")
        with self.lock:
            values = self.all(name)
            if key not in values and len(values) >= MAX_SECRETS_PER_MODULE:
                raise Invalid(f"module {name} already has {MAX_SECRETS_PER_MODULE} secrets", code="too_many_secrets")
            values[key] = value
            self._write(name, values)

    def delete(self, name: str, key: str) -> None:
        with self.lock:
            values = self.all(name)
            if key not in values:
                raise NotFound(f"module {name} has no secret {key!r}", code="secret_not_found")
            del values[key]
            self._write(name, values)

    def _write(self, name: str, values: dict[str, str]) -> None:
        os.makedirs(self.dir, mode=0o700, exist_ok=True)
        os.chmod(self.dir, 0o700)
        with disk_full_is_507("the secret"):
            write_atomic(self._path(name), orjson.dumps(values), 0o600)


def _store(request: Request) -> SecretStore:
    return request.app.state.cweb.secrets


@router.put("/modules/{name}/secrets/{key}", tags=["modules"])
async def put_secret(name: str, key: str, request: Request) -> dict:
    """Store a secret of module name (the body, UTF-8 text, is the value).
    Workers started after this (next deploy, rollback, restart) read it."""
    raw = await request.body()
    try:
        value = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Invalid("a secret is UTF-8 text", code="invalid_secret") from exc
    if "\0" in value:
        raise Invalid("a secret cannot contain NUL (C reads it as a string)", code="invalid_secret")
    _store(request).put(name, key, value)
    return {"name": name, "key": key, "stored": True}


@router.get("/modules/{name}/secrets", tags=["modules"])
async def list_secrets(name: str, request: Request) -> dict:
    """The keys of module name's secrets (never their values)."""
    return {"name": name, "keys": sorted(_store(request).all(name))}


@router.delete("/modules/{name}/secrets/{key}", tags=["modules"])
async def delete_secret(name: str, key: str, request: Request) -> dict:
    _store(request).delete(name, key)
    return {"name": name, "key": key, "removed": True}


def for_worker(store: Any, name: str) -> dict[str, str]:
    """What a starting worker of module name gets (empty without a store)."""
    return store.all(name) if store is not None else {}
