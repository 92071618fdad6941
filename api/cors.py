"""CORS on module routes, as c-web-modules answers it.

The original adds `Access-Control-Allow-Origin` to every answer that does
not set it already, and answers every OPTIONS request itself with 200, an
empty body and the allow headers (methods, headers, max age). cweb does the
same on module paths; the control plane keeps its own rules (no CORS: a
browser page on another origin cannot drive deploys).

Origins (CWEB_CORS_ORIGINS):
    "*"             any origin (the default, as the original)
    "a, b"          only these origins: the request's Origin is echoed back
                    when listed, with `Vary: Origin`; nothing otherwise
    ""              CORS off: no headers, OPTIONS goes to the module routes

Everything that does not depend on the request is rendered once, so the
common case ("*") costs one bytes concatenation per answer, cached per
response header set by the dispatcher.
"""

from __future__ import annotations

ACAO = b"access-control-allow-origin"
_ORIGIN = b"origin"
_REQUEST_METHOD = b"access-control-request-method"


def _lines(pairs: list[tuple[bytes, bytes]]) -> bytes:
    return b"".join(b"%b: %b\r\n" % kv for kv in pairs)


class Cors:
    """CORS headers for module answers and preflights, from settings."""

    def __init__(self, origins: str, methods: str, headers: str, max_age: int, credentials: bool) -> None:
        listed = [o.strip() for o in origins.split(",") if o.strip()]
        self.enabled = bool(listed)
        self.any_origin = "*" in listed
        self.allowed = frozenset(o.encode("latin-1") for o in listed if o != "*")
        self.credentials = credentials
        extra: list[tuple[bytes, bytes]] = []
        if credentials:
            extra.append((b"access-control-allow-credentials", b"true"))
        self._extra = extra
        pre: list[tuple[bytes, bytes]] = []
        if methods.strip():
            pre.append((b"access-control-allow-methods", methods.strip().encode("latin-1")))
        if headers.strip():
            pre.append((b"access-control-allow-headers", headers.strip().encode("latin-1")))
        if max_age > 0:
            pre.append((b"access-control-max-age", str(max_age).encode()))
        self._preflight = pre
        # "*" without credentials: the same headers on every answer.
        self.constant: list[tuple[bytes, bytes]] | None = None
        if self.any_origin and not credentials:
            self.constant = [(ACAO, b"*")]
        self.constant_lines = _lines(self.constant) if self.constant else b""
        self._preflight_constant = _lines((self.constant or []) + pre)

    @classmethod
    def from_settings(cls, settings: object) -> Cors:
        return cls(
            settings.cors_origins, settings.cors_methods, settings.cors_headers,  # type: ignore[attr-defined]
            settings.cors_max_age, settings.cors_credentials,  # type: ignore[attr-defined]
        )

    def for_request(self, request_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """The CORS headers an answer to this request carries ([] for none)."""
        if self.constant is not None:
            return self.constant
        if not self.enabled:
            return []
        origin = None
        for k, v in request_headers:
            if k == _ORIGIN:
                origin = v
                break
        if not origin:
            # Credentials with "*" need an Origin to echo (browsers refuse "*" then).
            return [(ACAO, b"*")] if self.any_origin and not self.credentials else []
        if self.any_origin or origin in self.allowed:
            return [(ACAO, origin), (b"vary", b"Origin"), *self._extra]
        return []

    def lines_for(self, request_headers: list[tuple[bytes, bytes]]) -> bytes:
        if self.constant is not None:
            return self.constant_lines
        return _lines(self.for_request(request_headers))

    def is_preflight(self, request_headers: list[tuple[bytes, bytes]]) -> bool:
        return any(k == _REQUEST_METHOD for k, _ in request_headers)

    def preflight(self, request_headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Headers of the server's answer to an OPTIONS request (200, empty body)."""
        allow = self.for_request(request_headers)
        if not allow:
            return []
        return [*allow, *self._preflight]
