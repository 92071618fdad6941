"""RFC 6455 conformance of module WebSockets on the server's own protocol
(api/ws_protocol.py), Autobahn-style: a real server, a real C module that
echoes every message with its kind, and a raw socket that sends frames
crafted byte by byte (websockets' Frame.serialize, or by hand where the
frame must be malformed). What the server sends back is parsed by the
websockets library's client protocol.

Cases: fragmentation (text, binary, empty fragments, UTF-8 split between
fragments), pings between fragments, the closing handshake with valid and
invalid codes, invalid UTF-8 (1007), unmasked or malformed frames (1002),
messages over the limit (1009), and the handshake answered by this path.
"""

from __future__ import annotations

import os
import socket
import struct
import time
from collections.abc import Iterator

import pytest
from websockets.client import ClientProtocol
from websockets.frames import Frame, Opcode
from websockets.http11 import Response
from websockets.uri import parse_uri

from tests.conftest import Server, unique

IO_S = 10.0
MAX_MESSAGE = 4096

ECHO = """
#include <cweb.h>
static void echo(struct cweb_context *ctx, websocket_t *ws, const char *msg, size_t len) {
    (void)ctx;
    if (ws->binary)
        ws->send_binary(ws, msg, len);
    else
        ws->send(ws, msg, len);
}
export module_t config = {
    .name = "NAME", .author = "tests",
    .websockets = { {"/NAME/ws", NULL, echo, NULL} }, .ws_size = 1,
};
"""


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A server of its own with 4 KiB messages, the echo module deployed."""
    s = Server(tmp_path_factory.mktemp("cweb-ws-conf") / "data", env={"CWEB_WS_MAX_MESSAGE": str(MAX_MESSAGE)})
    s.start(timeout=90)
    yield s
    s.stop()


@pytest.fixture(scope="module")
def path(limited: Server) -> str:
    name = unique("conf")
    r = limited.deploy(ECHO.replace("NAME", name))
    assert 200 == r.status_code, r.text
    return f"/{name}/ws"


class Raw:
    """A client socket after a real handshake: frames go out as given bytes."""

    def __init__(self, server: Server, path: str) -> None:
        self.proto = ClientProtocol(parse_uri(f"ws://127.0.0.1:{server.port}{path}"), max_size=None)
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=IO_S)
        self.proto.send_request(self.proto.connect())
        self.sock.sendall(b"".join(self.proto.data_to_send()))
        self.head = b""
        self.frames: list[Frame] = []
        deadline = time.monotonic() + IO_S
        while not any(isinstance(e, Response) for e in self._read()):
            assert time.monotonic() < deadline, "no handshake answer"
        assert self.proto.handshake_exc is None, self.proto.handshake_exc

    def _read(self) -> list:
        data = self.sock.recv(1 << 16)
        if not self.head:
            self.head = data.partition(b"\r\n\r\n")[0]
        if not data:
            self.proto.receive_eof()
            return []
        self.proto.receive_data(data)
        events = self.proto.events_received()
        self.frames += [e for e in events if isinstance(e, Frame)]
        return events

    def send(self, frame: Frame | bytes) -> None:
        self.sock.sendall(frame if isinstance(frame, bytes) else frame.serialize(mask=True))

    def next_frame(self) -> Frame:
        deadline = time.monotonic() + IO_S
        while not self.frames:
            assert time.monotonic() < deadline, "no frame from the server"
            if not self._read() and self.proto.reader.eof:
                raise ConnectionError("the server closed the connection")
        return self.frames.pop(0)

    def close_code(self) -> int:
        """Read until the server's close frame; its code."""
        for _ in range(100):
            frame = self.next_frame()
            if frame.opcode is Opcode.CLOSE:
                return struct.unpack("!H", frame.data[:2])[0] if len(frame.data) >= 2 else 1005
        raise AssertionError("no close frame")

    def closed_by_server(self) -> bool:
        """The server ends the TCP connection after its close frame."""
        self.sock.settimeout(IO_S)
        try:
            while self.sock.recv(1 << 16):
                pass
        except ConnectionResetError:
            pass
        return True

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(limited: Server, path: str) -> Iterator[Raw]:
    c = Raw(limited, path)
    yield c
    c.close()


def unmasked_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A frame as a server would send it (no mask), or with reserved bits."""
    assert len(payload) < 126
    return bytes([(0x80 if fin else 0) | rsv | opcode, len(payload)]) + payload


def masked_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """A client frame built by hand, for frames the library refuses to build."""
    assert len(payload) < 126
    mask = os.urandom(4)
    return bytes([(0x80 if fin else 0) | rsv | opcode, 0x80 | len(payload)]) + mask + bytes(
        b ^ mask[i % 4] for i, b in enumerate(payload))


# ---- the path itself ---------------------------------------------------------


def test_handshake_is_answered_by_the_library_protocol(raw: Raw) -> None:
    """The 101 comes from websockets' ServerProtocol on the server's own
    protocol (its header spelling), not from uvicorn's ASGI WebSocket
    protocol, which lower-cases the headers it adds."""
    assert raw.head.startswith(b"HTTP/1.1 101 Switching Protocols\r\n")
    assert b"\r\nDate: " in raw.head and b"\r\nSec-WebSocket-Accept: " in raw.head


def test_handshake_without_a_key_is_refused_400(limited: Server, path: str) -> None:
    with socket.create_connection(("127.0.0.1", limited.port), timeout=IO_S) as s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  "Sec-WebSocket-Version: 13\r\n\r\n".encode())
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
    assert answer.startswith(b"HTTP/1.1 400 "), answer[:200]


# ---- fragmentation -------------------------------------------------------------


def test_fragmented_text_is_one_message(raw: Raw) -> None:
    raw.send(Frame(Opcode.TEXT, b"frag", fin=False))
    raw.send(Frame(Opcode.CONT, b"men", fin=False))
    raw.send(Frame(Opcode.CONT, b"ted", fin=True))
    frame = raw.next_frame()
    assert (Opcode.TEXT, b"fragmented", True) == (frame.opcode, frame.data, frame.fin)


def test_fragmented_binary_with_empty_fragments(raw: Raw) -> None:
    raw.send(Frame(Opcode.BINARY, b"", fin=False))
    raw.send(Frame(Opcode.CONT, b"\x00\xff", fin=False))
    raw.send(Frame(Opcode.CONT, b"", fin=False))
    raw.send(Frame(Opcode.CONT, b"\x01", fin=True))
    frame = raw.next_frame()
    assert (Opcode.BINARY, b"\x00\xff\x01") == (frame.opcode, frame.data)


def test_utf8_split_between_fragments(raw: Raw) -> None:
    """A code point cut between two fragments is valid once joined."""
    text = "ü✓".encode()
    raw.send(Frame(Opcode.TEXT, text[:1], fin=False))
    raw.send(Frame(Opcode.CONT, text[1:4], fin=False))
    raw.send(Frame(Opcode.CONT, text[4:], fin=True))
    assert text == raw.next_frame().data


def test_ping_between_fragments_is_answered_and_the_message_completes(raw: Raw) -> None:
    raw.send(Frame(Opcode.TEXT, b"one ", fin=False))
    raw.send(Frame(Opcode.PING, b"between"))
    raw.send(Frame(Opcode.CONT, b"two", fin=False))
    raw.send(Frame(Opcode.PONG, b"unsolicited"))
    raw.send(Frame(Opcode.CONT, b"", fin=True))
    pong = raw.next_frame()
    assert (Opcode.PONG, b"between") == (pong.opcode, pong.data)
    frame = raw.next_frame()
    assert (Opcode.TEXT, b"one two") == (frame.opcode, frame.data)


def test_messages_in_one_write_are_echoed_in_order(raw: Raw) -> None:
    raw.send(b"".join(Frame(Opcode.TEXT, f"m{i}".encode()).serialize(mask=True) for i in range(50)))
    assert [f"m{i}".encode() for i in range(50)] == [raw.next_frame().data for _ in range(50)]


def test_continuation_without_a_start_is_1002(raw: Raw) -> None:
    raw.send(Frame(Opcode.CONT, b"orphan", fin=True))
    assert 1002 == raw.close_code()
    assert raw.closed_by_server()


def test_new_message_inside_a_fragmented_one_is_1002(raw: Raw) -> None:
    raw.send(Frame(Opcode.TEXT, b"start", fin=False))
    raw.send(Frame(Opcode.TEXT, b"again", fin=True))
    assert 1002 == raw.close_code()


def test_fragmented_ping_is_1002(raw: Raw) -> None:
    raw.send(masked_frame(0x9, b"ping", fin=False))
    assert 1002 == raw.close_code()


def test_control_frame_over_125_bytes_is_1002(raw: Raw) -> None:
    mask = os.urandom(4)
    payload = b"p" * 126
    raw.send(bytes([0x89, 0x80 | 126]) + struct.pack("!H", 126) + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload)))
    assert 1002 == raw.close_code()


# ---- framing errors --------------------------------------------------------------


def test_unmasked_client_frame_is_1002(raw: Raw) -> None:
    raw.send(unmasked_frame(0x1, b"not masked"))
    assert 1002 == raw.close_code()
    assert raw.closed_by_server()


def test_reserved_bits_without_an_extension_are_1002(raw: Raw) -> None:
    raw.send(masked_frame(0x1, b"rsv1", rsv=0x40))
    assert 1002 == raw.close_code()


@pytest.mark.parametrize("opcode", [0x3, 0xB])
def test_reserved_opcodes_are_1002(raw: Raw, opcode: int) -> None:
    raw.send(masked_frame(opcode, b"x"))
    assert 1002 == raw.close_code()


# ---- UTF-8 ------------------------------------------------------------------------


@pytest.mark.parametrize("payload", [b"\xff", b"ok \xc3\x28", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"trunc \xe2\x82"])
def test_invalid_utf8_text_is_1007(raw: Raw, payload: bytes) -> None:
    """Bad bytes, an overlong/surrogate/out-of-range code point, a truncated one."""
    raw.send(Frame(Opcode.TEXT, payload))
    assert 1007 == raw.close_code()
    assert raw.closed_by_server()


def test_invalid_utf8_across_fragments_is_1007(raw: Raw) -> None:
    raw.send(Frame(Opcode.TEXT, b"fine so far ", fin=False))
    raw.send(Frame(Opcode.CONT, b"\xc0\xaf", fin=True))
    assert 1007 == raw.close_code()


def test_invalid_utf8_in_binary_is_just_bytes(raw: Raw) -> None:
    raw.send(Frame(Opcode.BINARY, b"\xff\xfe"))
    assert b"\xff\xfe" == raw.next_frame().data


# ---- closing -------------------------------------------------------------------------


@pytest.mark.parametrize("code", [1000, 1001, 1003, 1011, 3000, 4999])
def test_valid_close_codes_are_echoed(raw: Raw, code: int) -> None:
    raw.send(Frame(Opcode.CLOSE, struct.pack("!H", code) + b"bye"))
    assert code == raw.close_code()
    assert raw.closed_by_server()


def test_empty_close_is_answered_empty(raw: Raw) -> None:
    raw.send(Frame(Opcode.CLOSE, b""))
    assert 1005 == raw.close_code()  # no status in the answer either


@pytest.mark.parametrize("code", [0, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000])
def test_invalid_close_codes_are_1002(raw: Raw, code: int) -> None:
    raw.send(masked_frame(0x8, struct.pack("!H", code)))
    assert 1002 == raw.close_code()


def test_close_with_one_byte_payload_is_1002(raw: Raw) -> None:
    raw.send(masked_frame(0x8, b"\x03"))
    assert 1002 == raw.close_code()


def test_close_reason_not_utf8_is_1007(raw: Raw) -> None:
    raw.send(masked_frame(0x8, struct.pack("!H", 1000) + b"\xff"))
    assert 1007 == raw.close_code()


def test_close_inside_a_fragmented_message_ends_the_connection(raw: Raw) -> None:
    raw.send(Frame(Opcode.TEXT, b"half", fin=False))
    raw.send(Frame(Opcode.CLOSE, struct.pack("!H", 1000)))
    assert raw.close_code() in (1000, 1002)
    assert raw.closed_by_server()


# ---- size limit --------------------------------------------------------------------


def test_message_at_the_limit_is_echoed(raw: Raw) -> None:
    raw.send(Frame(Opcode.BINARY, b"x" * MAX_MESSAGE))
    got = b""
    while len(got) < MAX_MESSAGE:
        got += raw.next_frame().data
    assert b"x" * MAX_MESSAGE == got


def test_message_over_the_limit_is_1009(raw: Raw) -> None:
    raw.send(Frame(Opcode.TEXT, b"x" * (MAX_MESSAGE + 1)))
    assert 1009 == raw.close_code()


def test_fragments_adding_up_over_the_limit_are_1009(raw: Raw) -> None:
    for _ in range(4):
        raw.send(Frame(Opcode.BINARY if _ == 0 else Opcode.CONT, b"y" * 1024, fin=False))
    raw.send(Frame(Opcode.CONT, b"y", fin=True))
    assert 1009 == raw.close_code()


def test_the_socket_path_still_serves_after_protocol_errors(limited: Server, path: str) -> None:
    """Failed connections leave the module and the other sockets alone."""
    for bad in (unmasked_frame(0x1, b"x"), masked_frame(0x1, b"\xff")):
        c = Raw(limited, path)
        c.send(bad)
        c.close_code()
        c.close()
    c = Raw(limited, path)
    try:
        c.send(Frame(Opcode.TEXT, b"still here"))
        assert b"still here" == c.next_frame().data
    finally:
        c.close()


def test_permessage_deflate_when_the_client_offers_it(limited: Server, path: str) -> None:
    """Compressed connections are framed by their own context (not the shared
    uncompressed frame): a deflate client and a plain one get the same echoes."""
    from websockets.sync.client import connect

    url = f"ws://127.0.0.1:{limited.port}{path}"
    with connect(url, open_timeout=IO_S) as deflated, connect(url, open_timeout=IO_S, compression=None) as plain:
        assert "permessage-deflate" in (deflated.response.headers.get("Sec-WebSocket-Extensions") or "")
        assert plain.response.headers.get("Sec-WebSocket-Extensions") is None
        for ws in (deflated, plain, deflated):
            ws.send("same text " * 20)
            assert "same text " * 20 == ws.recv(timeout=IO_S)
            ws.send(b"\x00\x01" * 50)
            assert b"\x00\x01" * 50 == ws.recv(timeout=IO_S)


# ---- keepalive -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def pinging(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """A server that pings every second, the echo module deployed."""
    s = Server(tmp_path_factory.mktemp("cweb-ws-ping") / "data", env={"CWEB_WS_PING_INTERVAL": "1"})
    s.start(timeout=90)
    name = unique("ping")
    r = s.deploy(ECHO.replace("NAME", name))
    assert 200 == r.status_code, r.text
    yield s, f"/{name}/ws"
    s.stop()


def test_a_client_that_answers_pings_stays_and_one_that_does_not_is_closed_1011(pinging: tuple[Server, str]) -> None:
    server, path = pinging
    silent, polite = Raw(server, path), Raw(server, path)
    try:
        # polite answers every ping (its protocol queued the pong; it is sent);
        # silent never sends what its protocol queued.
        pings = 0
        deadline = time.monotonic() + 3.5
        while time.monotonic() < deadline:
            polite.sock.settimeout(max(0.05, deadline - time.monotonic()))
            try:
                polite._read()
            except TimeoutError:
                break
            polite.sock.sendall(b"".join(polite.proto.data_to_send()))
            pings += sum(1 for f in polite.frames if f.opcode is Opcode.PING)
            polite.frames = [f for f in polite.frames if f.opcode is not Opcode.PING]
        assert pings >= 2
        polite.sock.settimeout(IO_S)
        polite.send(Frame(Opcode.TEXT, b"still open"))
        frame = polite.next_frame()
        while frame.opcode is Opcode.PING:  # one more may come first
            frame = polite.next_frame()
        assert b"still open" == frame.data
        assert Opcode.PING is silent.next_frame().opcode
        assert 1011 == silent.close_code()
    finally:
        silent.close()
        polite.close()
