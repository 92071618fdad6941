"""JSON lines over a Unix socket, with file descriptors passed alongside.

The api <-> agent and agent <-> worker control channels are inherited
socketpairs (or, for the api in the compose layout, an authenticated
connection): nothing reaches them by a path. Data connections to a worker
are socketpairs the agent makes and hands out over these channels with
SCM_RIGHTS, one end to the worker and the other to the api, so a worker
never listens anywhere and nobody can connect to it.

A message that carries descriptors says how many in its "fds" field; they
travel with the message's first byte (Linux delivers them with the read that
returns that byte), so by the time its line is complete they are queued.
"""

from __future__ import annotations

import array
import collections
import json
import os
import socket
from collections.abc import Callable

# Longest line accepted (a describe or a logs answer can be large).
MAX_LINE = 1 << 24
# Descriptors accepted in one read (SCM_MAX_FD); the kernel never merges two
# messages that carry descriptors into one read.
MAX_FDS_PER_READ = 253


class ChannelError(Exception):
    """The peer broke the protocol (bad JSON, a line too long, fds missing)."""


class Lines:
    """Incremental parser: bytes and descriptors in, (message, fds) out."""

    def __init__(self, limit: int = MAX_LINE) -> None:
        self.buf = bytearray()
        self.fds: collections.deque[int] = collections.deque()
        self.limit = limit

    def feed(self, data: bytes, fds: list[int] = ()) -> list[tuple[dict, list[int]]]:  # type: ignore[assignment]
        self.fds.extend(fds)
        self.buf += data
        out = []
        while True:
            nl = self.buf.find(b"\n")
            if nl < 0:
                if len(self.buf) > self.limit:
                    raise ChannelError("line too long")
                return out
            line = bytes(self.buf[:nl])
            del self.buf[: nl + 1]
            try:
                msg = json.loads(line)
            except ValueError as exc:
                raise ChannelError("not JSON") from exc
            if not isinstance(msg, dict):
                raise ChannelError("not an object")
            n = msg.get("fds", 0)
            if not isinstance(n, int) or n < 0 or n > len(self.fds):
                raise ChannelError("descriptors missing")
            out.append((msg, [self.fds.popleft() for _ in range(n)]))

    def close(self) -> None:
        while self.fds:
            os.close(self.fds.popleft())


def encode(msg: dict) -> bytes:
    return json.dumps(msg, separators=(",", ":")).encode() + b"\n"


def send_blocking(sock: socket.socket, msg: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
    """For a blocking socket (the worker's side)."""
    data = encode({**msg, "fds": len(fds)} if fds else msg)
    if fds:
        sent = socket.send_fds(sock, [data], list(fds))
        data = data[sent:]
    if data:
        sock.sendall(data)


def _no_inherit(fds: list[int]) -> None:
    """Received descriptors arrive inheritable (socket.recv_fds drops its
    flags argument, so MSG_CMSG_CLOEXEC cannot be asked for), and uvloop's
    spawn keeps inheritable descriptors: without this every compiler the api
    starts would hold every worker connection, and run out of descriptors."""
    for fd in fds:
        os.set_inheritable(fd, False)


def recv_blocking(sock: socket.socket, parser: Lines, accept_fds: bool) -> list[tuple[dict, list[int]]] | None:
    """One read's worth of messages; None at end of stream."""
    while True:
        if accept_fds:
            data, fds, _flags, _ = socket.recv_fds(sock, 1 << 16, MAX_FDS_PER_READ)
            _no_inherit(fds)
        else:
            data, fds = sock.recv(1 << 16), []
        if not data:
            for fd in fds:
                os.close(fd)
            return None
        msgs = parser.feed(data, fds)
        if msgs:
            return msgs


class Channel:
    """The event-loop side: reads with loop.add_reader, writes from a queue.

    on_message(msg, fds) owns the fds it is given. Descriptors handed to
    send() are owned by the channel and closed once sent (or at close)."""

    def __init__(self, sock: socket.socket, on_message: Callable[[dict, list[int]], None],
                 on_close: Callable[[], None] | None = None, accept_fds: bool = False) -> None:
        sock.setblocking(False)
        self.sock = sock
        self.fd = sock.fileno()
        self.on_message = on_message
        self.on_close = on_close
        self.accept_fds = accept_fds
        self.parser = Lines()
        self.out: collections.deque[list] = collections.deque()  # [bytes, fds]
        self.closed = False
        # Imported here: workers use only the blocking half of this module,
        # and asyncio is a fifth of a worker's start-up imports.
        import asyncio

        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)

    def send(self, msg: dict, fds: list[int] = ()) -> None:  # type: ignore[assignment]
        if self.closed:
            for fd in fds:
                os.close(fd)
            return
        data = encode({**msg, "fds": len(fds)} if fds else msg)
        idle = not self.out
        self.out.append([data, list(fds)])
        if idle:
            self._flush()

    def _flush(self) -> None:
        while self.out:
            data, fds = self.out[0]
            try:
                if fds:
                    n = self.sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", fds))])
                else:
                    n = self.sock.send(data)
            except (BlockingIOError, InterruptedError):
                self.loop.add_writer(self.fd, self._writable)
                return
            except OSError:
                self.close()
                return
            for fd in fds:
                os.close(fd)
            self.out[0][1] = []
            if n < len(data):
                self.out[0][0] = data[n:]
                continue
            self.out.popleft()

    def _writable(self) -> None:
        self.loop.remove_writer(self.fd)
        self._flush()

    def _readable(self) -> None:
        try:
            if self.accept_fds:
                data, fds, _flags, _ = socket.recv_fds(self.sock, 1 << 16, MAX_FDS_PER_READ)
                _no_inherit(fds)
            else:
                # Descriptors a peer sends without being asked are closed by the kernel.
                data, fds = self.sock.recv(1 << 16), []
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:
            for fd in fds:
                os.close(fd)
            self.close()
            return
        try:
            msgs = self.parser.feed(data, fds)
        except ChannelError:
            self.close()
            return
        for msg, got in msgs:
            if self.closed:
                for fd in got:
                    os.close(fd)
                continue
            self.on_message(msg, got)

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.loop.remove_reader(self.fd)
        self.loop.remove_writer(self.fd)
        for _, fds in self.out:
            for fd in fds:
                os.close(fd)
        self.out.clear()
        self.parser.close()
        self.sock.close()
        if self.on_close is not None:
            self.on_close()
