"""Who may deploy: API keys on the control plane's mutating endpoints.

The Dispatcher calls the guard with the raw ASGI scope of every HTTP request
under a reserved prefix, before FastAPI sees it. What needs a key:

- every request on the control plane whose method is not GET, HEAD or
  OPTIONS (POST /mgnt, DELETE /modules/x, POST /modules/x/rollback,
  POST /jobs, POST /jobs/x/cancel, and any mutating endpoint added later:
  deny by default);
- reads of what modules and their callers produced, private by default
  when a key is set: module output (GET /modules/<name>/logs), build history
  (/_cweb/builds: diagnostics quote source lines), workers (/_cweb/workers)
  and anything else under /_cweb, and artifacts (/artifacts/<hash>: manifest,
  deploy history, job runs; /artifacts/<hash>/source: uploaded source may
  hold secrets), and builds (/builds: their logs quote the source).
- everything under /jobs, WebSocket /jobs/ws included (job payloads,
  results and events are the callers' data).

Everything else on the control plane (the module listing, docs, health,
metrics, the /ui page itself — its data needs the key) and every module
route and socket stay public: see SECURITY.md for why.

A key is read from `Authorization: Bearer KEY` or `X-API-Key: KEY`, never
from the query string, compared in constant time against every configured
key (CWEB_API_KEY is a comma-separated list, for rotation) and never logged.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
from collections.abc import Callable
from urllib.parse import parse_qsl

from api.errors import Unauthorized, error_body
from api.settings import Settings

# The methods that read and never change anything.
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
# First path segments whose reads need a key too (deny by default below them).
PRIVATE_PREFIXES = frozenset({"_cweb", "artifacts", "builds", "jobs"})
# Query parameters that look like someone trying to pass a key in the URL.
QUERY_KEY_NAMES = frozenset({"api_key", "apikey", "key", "token", "access_token", "x-api-key", "auth"})
CHALLENGE = (b"www-authenticate", b'Bearer realm="cweb"')

Refusal = tuple[int, bytes, list[tuple[bytes, bytes]]]
Guard = Callable[[dict], "Refusal | None"]


def is_loopback(host: str) -> bool:
    """Whether listening on host is reachable from this machine only."""
    if host in ("localhost", "localhost.localdomain"):
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def startup_problem(settings: Settings) -> str | None:
    """Why the server must not start with these settings, or None."""
    if settings.api_keys or settings.insecure_no_auth or is_loopback(settings.host):
        return None
    return (
        f"refusing to listen on {settings.host} without an API key: anyone who can reach this "
        "address could upload and run C code. Set CWEB_API_KEY (comma-separated for rotation), "
        "or listen on 127.0.0.1, or pass --insecure-no-auth if you really mean it."
    )


def needs_key(method: str, path: str) -> bool:
    """Whether a control-plane request must carry a valid key."""
    if method not in SAFE_METHODS:
        return True
    parts = [p for p in path.split("/") if p]
    if not parts:
        return False
    if parts[0] in PRIVATE_PREFIXES:
        return True
    # A module's output and the names of its secrets are the operator's.
    return len(parts) >= 3 and parts[0] == "modules" and parts[2] in ("logs", "secrets")


def _digest(value: bytes) -> bytes:
    # Hashing first makes every comparison the same length: no length leak.
    return hashlib.sha256(value).digest()


def presented_keys(headers: list[tuple[bytes, bytes]]) -> list[bytes]:
    found: list[bytes] = []
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.strip().partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                found.append(token.strip())
        elif name == b"x-api-key" and value.strip():
            found.append(value.strip())
    return found


def _refuse(message: str) -> Refusal:
    status, body = error_body(Unauthorized(message))
    return status, body, [CHALLENGE]


def make_guard(settings: Settings) -> Guard | None:
    """A check run on every control-plane request: None to let it through,
    or (status, JSON body, extra headers) to refuse it. None when no key is
    configured (the server then only starts on loopback, or with
    --insecure-no-auth)."""
    if not settings.api_keys:
        return None
    keys = [_digest(k.encode("utf-8")) for k in settings.api_keys]

    def valid(candidate: bytes) -> bool:
        d = _digest(candidate)
        ok = False
        for k in keys:  # no early exit: the time does not say which key matched
            ok |= hmac.compare_digest(d, k)
        return ok

    def guard(scope: dict) -> Refusal | None:
        if not needs_key(scope.get("method", "GET"), scope.get("path", "")):
            return None
        presented = presented_keys(scope.get("headers") or [])
        if presented and any(valid(c) for c in presented):
            return None
        if presented:
            return _refuse("the API key is not valid")
        query = scope.get("query_string") or b""
        if query and any(k.lower() in QUERY_KEY_NAMES for k, _ in parse_qsl(query.decode("latin-1"), keep_blank_values=True)):
            return _refuse(
                "API keys are not accepted in the query string (URLs end up in logs); "
                "send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'"
            )
        return _refuse("this endpoint needs an API key: send 'Authorization: Bearer KEY' or 'X-API-Key: KEY'")

    return guard
