"""Requests and WebSockets of a placement-one module, forwarded from the node
the client reached to the node that serves the module (its owner).

HTTP goes through httpx, sockets through the `websockets` client; the owner
answers on its own URL (the nodes table) as it would any client. A request
carries `X-Cweb-Forwarded-From: <node>`, so an owner that has just lost the
module answers 503 instead of forwarding it on (no loops). The answer the
client gets says who answered: `X-Cweb-Node` is the node it reached,
`X-Cweb-Forwarded-To` the owner whose worker ran the handler.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets
from websockets.asyncio.client import connect as ws_connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from api.errors import ApiError, BadGateway, GatewayTimeout, Unavailable, error_body
from api.modules.version import VersionState

log = logging.getLogger("cweb.cluster")

FORWARDED_FROM = b"x-cweb-forwarded-from"
FORWARDED_TO = b"x-cweb-forwarded-to"
# Never passed on: they describe one hop, not the request (RFC 9110 7.6.1),
# or are set again by the next hop.
_HOP = frozenset({b"connection", b"keep-alive", b"proxy-connection", b"transfer-encoding", b"te", b"trailer",
                  b"upgrade", b"host", b"content-length", b"proxy-authorization", b"proxy-authenticate",
                  b"x-cweb-node", b"date", b"server", FORWARDED_FROM})
# Close codes that may not be sent in a close frame (RFC 6455 7.4.1).
_RESERVED_CLOSE = frozenset({1005, 1006, 1015})


def _error(exc: ApiError) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    status, body = error_body(exc)
    return status, [(b"content-length", str(len(body)).encode()), (b"content-type", b"application/json")], body


class Forwarder:
    """The client side of forwarding, shared by every forwarded module of this node."""

    def __init__(self, node_id: str, url_of: Callable[[str], str | None], *, timeout: float,
                 max_response: int, ws_max_message: int, header: bool, tls: ssl.SSLContext | None = None) -> None:
        self.node_id = node_id
        self.node_id_b = node_id.encode()
        # The URL of a live node by its id (api/cluster/nodes.py), None if unknown or gone.
        self.url_of = url_of
        self.timeout = timeout
        self.max_response = max_response
        self.ws_max_message = ws_max_message
        self.header = header
        # Trust for https/wss node URLs (the nodes' own certificate), else the system's.
        self.tls = tls
        # trust_env=False: node-to-node traffic never goes through a proxy named in the environment.
        self.http = httpx.AsyncClient(timeout=httpx.Timeout(timeout + 5, connect=5), follow_redirects=False, trust_env=False,
                                      verify=tls if tls is not None else True,
                                      limits=httpx.Limits(max_connections=256, max_keepalive_connections=64))

    async def aclose(self) -> None:
        await self.http.aclose()

    def _target(self, owner: str, headers: list[tuple[bytes, bytes]]) -> str:
        if any(k == FORWARDED_FROM for k, _ in headers):
            # Forwarded to us as the owner, and we are not (any more): never a second hop.
            raise Unavailable("this module is moving to another node; retry", code="module_moving")
        url = self.url_of(owner)
        if url is None:
            raise Unavailable(f"the node serving this module ({owner}) is not reachable; another node takes it "
                              "over when its heartbeat expires", code="owner_unreachable", node=owner)
        return url

    async def http_request(self, owner: str, method: str, path: str, query: bytes,
                           headers: list[tuple[bytes, bytes]], body: bytes | list[bytes]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        try:
            base = self._target(owner, headers)
        except ApiError as exc:
            return _error(exc)
        out = [(k, v) for k, v in headers if k not in _HOP]
        out.append((FORWARDED_FROM, self.node_id_b))
        url = base + path + ("?" + query.decode("latin-1") if query else "")
        content = body if isinstance(body, bytes) else b"".join(body)
        try:
            req = self.http.build_request(method, url, headers=out, content=content)
            resp = await self.http.send(req, stream=True)
            try:
                chunks, size = [], 0
                async for chunk in resp.aiter_raw():  # as the owner sent it: no decoding
                    size += len(chunk)
                    if size > self.max_response:
                        return _error(BadGateway(f"the owner's answer exceeds {self.max_response} bytes",
                                                 code="response_too_large"))
                    chunks.append(chunk)
            finally:
                await resp.aclose()
        except httpx.TimeoutException:
            return _error(GatewayTimeout(f"the node serving this module ({owner}) did not answer in time",
                                         code="owner_timeout", node=owner))
        except httpx.HTTPError as exc:
            return _error(Unavailable(f"the node serving this module ({owner}) is not reachable: {exc}",
                                      code="owner_unreachable", node=owner))
        data = b"".join(chunks)
        rheaders = [(b"content-length", str(len(data)).encode())]
        rheaders += [(k, v) for k, v in resp.headers.raw if k.lower() not in _HOP]
        if self.header:
            rheaders.append((FORWARDED_TO, owner.encode()))
        return resp.status_code, rheaders, data

    async def websocket(self, owner: str, scope: dict, receive: Callable, send: Callable) -> None:
        """Relay one client's socket (ASGI) to the owner's, message by message,
        both ways, until either side closes; the close code goes through."""
        if (await receive())["type"] != "websocket.connect":
            return
        try:
            base = self._target(owner, scope["headers"])
        except ApiError as exc:
            await _refuse(scope, send, exc)
            return
        url = "ws" + base[len("http"):] + scope["path"]
        if scope.get("query_string"):
            url += "?" + scope["query_string"].decode("latin-1")
        extra = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                 if k in (b"cookie", b"authorization", b"origin", b"user-agent") or k.startswith(b"x-")]
        extra = [(k, v) for k, v in extra if k not in ("x-cweb-node", FORWARDED_FROM.decode())]
        extra.append((FORWARDED_FROM.decode(), self.node_id))
        try:
            upstream = await ws_connect(url, additional_headers=extra, max_size=self.ws_max_message,
                                        open_timeout=10, ping_interval=None, compression=None, proxy=None,
                                        ssl=self.tls if url.startswith("wss:") and self.tls is not None else None)
        except InvalidStatus as exc:
            await _refuse(scope, send, Unavailable(f"the node serving this module ({owner}) refused the socket "
                                                   f"({exc.response.status_code})", code="owner_refused", node=owner))
            return
        except (OSError, TimeoutError, websockets.exceptions.WebSocketException) as exc:
            await _refuse(scope, send, Unavailable(f"the node serving this module ({owner}) is not reachable: {exc}",
                                                   code="owner_unreachable", node=owner))
            return
        await send({"type": "websocket.accept", "headers": [(FORWARDED_TO, owner.encode())] if self.header else []})
        async with upstream:
            down = asyncio.create_task(_owner_to_client(upstream, send))
            try:
                while True:
                    msg = await receive()
                    if msg["type"] == "websocket.receive":
                        text = msg.get("text")
                        await upstream.send(text if text is not None else msg.get("bytes") or b"")
                    elif msg["type"] == "websocket.disconnect":
                        code = msg.get("code", 1000)
                        await upstream.close(code if code not in _RESERVED_CLOSE else 1000)
                        break
            except ConnectionClosed:
                pass  # the owner closed: down relays its close to the client
            finally:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await asyncio.wait_for(down, 5)
                down.cancel()


async def _owner_to_client(upstream: Any, send: Callable) -> None:
    code, reason = 1000, ""
    try:
        async for message in upstream:
            if isinstance(message, str):
                await send({"type": "websocket.send", "text": message})
            else:
                await send({"type": "websocket.send", "bytes": message})
    except ConnectionClosed:
        pass
    finally:
        if upstream.close_code is not None and upstream.close_code not in _RESERVED_CLOSE:
            code, reason = upstream.close_code, upstream.close_reason or ""
        elif upstream.close_code is None or upstream.close_code == 1006:
            code = 1001  # the owner went away
        with contextlib.suppress(Exception):
            await send({"type": "websocket.close", "code": code, "reason": reason})


async def _refuse(scope: dict, send: Callable, exc: ApiError) -> None:
    """Before accept: the JSON error where the server can send one, else a 403."""
    status, body = error_body(exc)
    if "websocket.http.response" in (scope.get("extensions") or {}):
        await send({"type": "websocket.http.response.start", "status": status,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "websocket.http.response.body", "body": body})
    else:
        await send({"type": "websocket.close", "code": 1013})


@dataclass(eq=False)
class RemoteModule:
    """A module another node serves, in this node's route table: its routes
    match here and are forwarded to the owner (api/dispatch.py, api/ws_protocol.py)."""

    name: str
    module_hash: str
    decl: dict
    deployed_at: float
    owner: str
    forwarder: Forwarder
    state: VersionState = VersionState.FORWARDED
    phases: dict = field(default_factory=dict)

    def summary(self) -> dict:
        decl = self.decl
        return {
            "name": self.name, "author": decl.get("author", ""), "module_hash": self.module_hash,
            "source_sha256": "", "build_key": "",
            "routes": [{"method": r["method"], "path": r["path"]} for r in decl["routes"]],
            "websockets": [{"path": w["path"]} for w in decl["websockets"]],
            "jobs": [{"name": j["name"]} for j in decl["jobs"]],
            "deployed_at": self.deployed_at, "state": self.state, "node": self.owner,
        }

    def forward(self, method: str, path: str, query: bytes, headers: list[tuple[bytes, bytes]],
                body: bytes | list[bytes]) -> Any:
        return self.forwarder.http_request(self.owner, method, path, query, headers, body)

    def forward_socket(self, scope: dict, receive: Callable, send: Callable) -> Any:
        return self.forwarder.websocket(self.owner, scope, receive, send)
