"""The api's side of the runtime: the agent's control socket and the data
connections to each worker."""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import math
import os
import socket
import struct
import sys
from collections.abc import Awaitable, Callable

from runtime import agent_protocol, protocol
from runtime.agent import read_secret
from runtime.channel import Channel
from runtime.errors import RuntimeFailure
from runtime.settings import AgentSettings

log = logging.getLogger("cweb.api")

_U32 = struct.Struct("<I")


# On an events channel, frames at least this large are cut from the read
# buffer as views instead of copies (_frames).
_VIEW_FROM = 64 << 10


def _frames(data: bytes | bytearray, owner: EventsConn) -> list[bytes | memoryview]:
    """The whole length-prefixed frames in data; an incomplete tail is kept
    in owner.buf for the next read. Large frames are memoryviews (owner.buf
    is then a new buffer, so the view stays valid).

    A frame arriving in many reads is appended to owner.buf in place and only
    looked at again once owner.need bytes are there: each byte is copied a
    bounded number of times, so ingesting a frame takes time linear in its size."""
    frames: list[bytes | memoryview] = []
    off = 0
    end = len(data)
    mv = memoryview(data)
    while end - off >= 4:
        (n,) = _U32.unpack_from(mv, off)
        if end - off < 4 + n:
            break
        frame = mv[off + 4 : off + 4 + n]
        frames.append(frame if n >= _VIEW_FROM else bytes(frame))
        off += 4 + n
    owner.need = (4 + _U32.unpack_from(mv, off)[0]) if end - off >= 4 else 4
    if off == 0 and data is owner.buf:
        mv.release()  # nothing taken from it: keep growing the same buffer
    elif off < end:
        owner.buf = bytearray(mv[off:])
    elif owner.buf:
        owner.buf = bytearray()
    return frames


class WorkerGone(Exception):
    """The worker closed the connection: it crashed or was stopped."""


class AgentClient:
    """JSON-lines requests to the runtime agent, plus its event stream.

    Embedded, the channel is a socketpair: the agent inherits one end, so
    the channel has no name anything else could connect to. With
    socket_path (compose), the connection opens with the agent's secret."""

    def __init__(self, socket_path: str, on_event: Callable[[dict], Awaitable[None] | None], secret: str = "",
                 on_reconnect: Callable[[], Awaitable[None]] | None = None) -> None:
        self.socket_path = socket_path
        # CWEB_RUNTIME_SECRET, from Settings; "" = read the agent's secret file.
        self.secret = secret
        self.on_event = on_event
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.channel: Channel | None = None
        self.embedded_sock: socket.socket | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.spawn_args: tuple | None = None
        self.closing = False
        # How the agent confines workers ("bubblewrap", "landlock", "none"), from its ping.
        self.sandbox = "unknown"
        # Called after the agent came back (restarted): every worker it had is gone.
        self.on_reconnect = on_reconnect

    async def spawn_embedded(self, settings: AgentSettings) -> None:
        """Start `python -m runtime` as our child, on an inherited socketpair,
        with its settings as one JSON argument, and wait until it is up."""
        self.spawn_args = (settings,)
        project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = project_root
        for secret in ("CWEB_API_KEY",):
            env.pop(secret, None)
        ours, theirs = socket.socketpair()
        try:
            self.process = await asyncio.create_subprocess_exec(
                sys.executable, "-m", "runtime",
                "--control-fd", str(theirs.fileno()), "--settings", settings.to_json(), "--parent-pid", str(os.getpid()),
                stdout=asyncio.subprocess.PIPE, env=env, pass_fds=(theirs.fileno(),),
                # Its own process group: a Ctrl-C on the terminal stops the
                # api, which stops the agent; the agent does not die first.
                start_new_session=True,
            )
        finally:
            theirs.close()
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if b"ready" not in line:
            ours.close()
            raise RuntimeFailure("runtime_failed", "the runtime agent did not start")
        self.embedded_sock = ours

    async def connect(self, attempts: int = 100) -> None:
        if self.embedded_sock is not None:
            sock, self.embedded_sock = self.embedded_sock, None
            self._open(sock)
            return
        for _ in range(attempts):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.setblocking(False)
            try:
                await asyncio.get_running_loop().sock_connect(sock, self.socket_path)
                secret = read_secret(self.socket_path, self.secret)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                sock.close()
                await asyncio.sleep(0.1)
        else:
            raise RuntimeFailure("runtime_unreachable", f"cannot reach the runtime agent at {self.socket_path}")
        self._open(sock)
        await self.call("hello", timeout=10, secret=secret)

    def _open(self, sock: socket.socket) -> None:
        self.channel = Channel(sock, self._on_message, self._on_close, accept_fds=True)

    async def describe(self) -> None:
        """Learn how the agent confines workers (for /healthz)."""
        self.sandbox = (await self.call("ping", timeout=30)).get("sandbox", "unknown")

    def _on_message(self, msg: dict, fds: list[int]) -> None:
        if "event" in msg:
            for fd in fds:
                os.close(fd)
            res = self.on_event(msg)
            if asyncio.iscoroutine(res):
                asyncio.create_task(res)
            return
        fut = self.pending.pop(msg.get("id"), None)
        if fut is not None and not fut.done():
            fut.set_result((msg, fds))
        else:
            for fd in fds:
                os.close(fd)

    def _on_close(self) -> None:
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(RuntimeFailure("runtime_unreachable", "the runtime agent went away"))
        self.pending.clear()
        self.channel = None
        if not self.closing:
            asyncio.get_running_loop().create_task(self._come_back())

    async def _come_back(self) -> None:
        """The agent died or restarted: start it again (embedded) or wait for it (compose)."""
        log.error("lost the runtime agent; reconnecting")
        while not self.closing:
            try:
                if self.spawn_args is not None:
                    if self.process is not None and self.process.returncode is None:
                        try:
                            await asyncio.wait_for(self.process.wait(), 5)
                        except TimeoutError:
                            self.process.kill()
                            await self.process.wait()
                    await self.spawn_embedded(*self.spawn_args)
                await self.connect(attempts=50)
                await self.call("ping", timeout=10)
                break
            except (TimeoutError, RuntimeFailure, OSError):
                await asyncio.sleep(1)
        if not self.closing and self.on_reconnect is not None:
            log.info("runtime agent is back; reloading modules")
            await self.on_reconnect()

    async def call_fds(self, op: str, timeout: float = 60.0, **args: object) -> tuple[dict, list[int]]:
        """One request; its answer and the descriptors that came with it (ours to close)."""
        if self.channel is None:
            raise RuntimeFailure("runtime_unreachable", "not connected to the runtime agent")
        req_id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        self.channel.send(agent_protocol.request(req_id, op, args))
        try:
            msg, fds = await asyncio.wait_for(fut, timeout)
        except TimeoutError:
            # A late answer's descriptors are closed by _on_message.
            raise
        finally:
            self.pending.pop(req_id, None)
        if not msg.get("ok"):
            for fd in fds:
                os.close(fd)
            extra = {k: v for k, v in msg.items() if k not in ("id", "ok", "error", "message", "fds")}
            raise RuntimeFailure(msg.get("error", "runtime_error"), msg.get("message", "runtime error"), **extra)
        return msg, fds

    async def call(self, op: str, timeout: float = 60.0, **args: object) -> dict:
        msg, fds = await self.call_fds(op, timeout, **args)
        for fd in fds:
            os.close(fd)
        return msg

    async def connect_worker(self, worker_id: int, count: int) -> list[socket.socket]:
        """count new data connections to a running worker, made by the agent."""
        _, fds = await self.call_fds("connect", timeout=30, worker_id=worker_id, count=count)
        return [socket.socket(fileno=fd) for fd in fds]

    async def close(self) -> None:
        self.closing = True
        if self.channel is not None:
            self.channel.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()
        if self.process is not None:
            # Its pipe transport closed while the loop runs: left to the
            # collector it would close after the loop did, printing a
            # "RuntimeError: Event loop is closed" traceback on Ctrl-C.
            transport = getattr(self.process, "_transport", None)
            if transport is not None:
                transport.close()


# Seconds a handler that overran the request timeout gets to answer after all
# before its worker counts as hung and is replaced.
HUNG_GRACE_S = 2.0
# How often request deadlines are checked: the precision of timeouts.
SWEEP_S = 0.1
# A request is queued behind others on a connection only while the oldest of
# them has been out for less than this: behind a slow handler it would wait
# for that handler, so it waits for the first free connection instead.
PIPELINE_AGE_S = 0.005


class Call:
    """One request in flight on a WorkerConn: settled once, by its answer,
    its timeout or the connection's loss; a later answer is dropped."""

    __slots__ = ("pool", "conn", "seq", "sent_at", "deadline", "done", "callback")

    def __init__(self, pool: WorkerPool, conn: WorkerConn, seq: int, sent_at: float, deadline: float,
                 callback: Callable[[bytes | None, BaseException | None], None]) -> None:
        self.pool = pool
        self.conn = conn
        self.seq = seq
        self.sent_at = sent_at
        self.deadline = deadline
        self.callback = callback
        self.done = False

    def settle(self, frame: bytes | None, exc: BaseException | None) -> None:
        if self.done:
            return
        self.done = True
        self.pool._finished()
        self.callback(frame, exc)

    def expire(self) -> None:
        if not self.done:
            self.pool._watch(self.conn, self.seq)
            self.settle(None, TimeoutError())


# A WorkerConn's read buffer. A frame that cannot fit in it (a large answer
# or job event) gets a buffer of its own, of its exact size, that the kernel
# reads the rest of the frame straight into.
_READ_BYTES = 64 << 10


class WorkerConn(asyncio.BufferedProtocol):
    """One data connection to a worker, served by one worker thread.

    Requests are pipelined: the thread answers them in order, so each answer
    settles the oldest call. Frames queued in one event-loop turn leave in
    one write, and the thread then finds the next request already buffered
    instead of sleeping and being woken for each.

    Reads go into buffers of ours (asyncio's BufferedProtocol): small frames
    are copied out of a fixed read buffer once; a frame larger than that
    buffer is read into a buffer of its own and handed on as a view, so a
    1 MiB answer is not copied in the api at all (only the part of it that
    came with the read that brought its length is)."""

    def __init__(self, on_lost: Callable[[WorkerConn], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.rbuf = bytearray(_READ_BYTES)
        self.rview = memoryview(self.rbuf)
        self.start = 0  # unparsed bytes are rbuf[start:end]
        self.end = 0
        # The frame being read into a buffer of its own, and how much of it is in.
        self.big: memoryview | None = None
        self.big_fill = 0
        self.waiters: collections.deque[Call] = collections.deque()
        self.out: list[bytes] = []
        self.closed = False
        self.sink: Callable[[bytes], None] | None = None
        self.on_lost = on_lost
        self.sent = 0
        self.answered = 0
        # The newest request that overran its timeout: until it is answered the
        # thread may be stuck, so no new request is queued behind it.
        self.overdue = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        # Kept: every asyncio.get_running_loop() is a getpid() system call.
        self.loop = asyncio.get_running_loop()

    @property
    def usable(self) -> bool:
        return not self.closed and self.answered >= self.overdue

    def get_buffer(self, sizehint: int) -> memoryview:
        if self.big is not None:
            return self.big[self.big_fill :]
        if self.end == 0:
            return self.rview
        return self.rview[self.end :]

    def buffer_updated(self, nbytes: int) -> None:
        big = self.big
        if big is not None:
            self.big_fill += nbytes
            if self.big_fill == len(big):
                self.big = None
                self._frame(big)
            return
        end = self.end = self.end + nbytes
        off = self.start
        rbuf, rview = self.rbuf, self.rview
        while end - off >= 4:
            (n,) = _U32.unpack_from(rbuf, off)
            if end - off - 4 >= n:
                off += 4 + n
                self._frame(bytes(rview[off - n : off]))  # a copy: the buffer is read into again
            elif n + 4 > _READ_BYTES:
                # It will not fit: a buffer of its own, the rest read straight into it.
                have = end - off - 4
                big = memoryview(bytearray(n))
                big[:have] = rview[off + 4 : end]
                self.big, self.big_fill = big, have
                off = end
                break
            else:
                break
        if off == end:
            self.start = self.end = 0
        elif end == _READ_BYTES:
            # A frame that fits the buffer but runs past its end: moved to the front.
            rbuf[: end - off] = bytes(rview[off:end])  # a copy: the two ranges may overlap
            self.start, self.end = 0, end - off
        else:
            self.start = off

    def _frame(self, frame: bytes | memoryview) -> None:
        if type(frame) is memoryview and frame[0] != protocol.F_HTTP_RESP:
            frame = bytes(frame)  # only HTTP answers are handed on as views
        # Jobs stream their events on the connection before the answer. An
        # event is never an answer, even with no job's sink to take it.
        if frame[0] == protocol.F_JOB_EVENT:
            if self.sink is not None:
                self.sink(frame)  # type: ignore[arg-type]
            return
        self.answered += 1
        if self.waiters:
            self.waiters.popleft().settle(frame, None)  # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            self.waiters.popleft().settle(None, WorkerGone())
        if self.on_lost is not None:
            self.on_lost(self)

    def queue(self, frame: bytes | list[bytes], call: Call) -> None:
        """frame: bytes, or the parts of a large one (protocol.encode_http)."""
        if self.closed or self.transport is None:
            raise WorkerGone()
        self.waiters.append(call)
        if not self.out:
            self.loop.call_soon(self._flush)
        if type(frame) is list:
            self.out += frame
        else:
            self.out.append(frame)  # type: ignore[arg-type]

    def _flush(self) -> None:
        out, self.out = self.out, []
        if self.closed or self.transport is None:
            return
        if len(out) == 1:
            self.transport.write(out[0])
        else:
            self.transport.writelines(out)

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WorkerPool:
    """A fixed set of data connections to one worker process; up to depth
    requests in flight on each."""

    def __init__(self, connector: Callable[[int], Awaitable[list[socket.socket]]], size: int, depth: int = 8,
                 on_hung: Callable[[], None] | None = None) -> None:
        # Asks the agent for n new connections to the worker (socketpairs:
        # there is no path a connection could be opened to).
        self.connector = connector
        self.size = size
        self.depth = depth
        self.conns: list[WorkerConn] = []
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.inflight = 0
        self.drain_waiters: list[asyncio.Future] = []
        # Requests waiting for room on a connection, oldest first: (frame, deadline, callback).
        self.backlog: collections.deque[tuple[bytes, float, Callable]] = collections.deque()
        self.sweeper: asyncio.TimerHandle | None = None
        self.dead = False
        # Called when a handler has not answered within timeout + HUNG_GRACE_S.
        self.on_hung = on_hung
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by open()

    def _conn(self) -> WorkerConn:
        return WorkerConn(self._lost)

    async def open(self, socks: list[socket.socket] | None = None) -> None:
        self.loop = loop = asyncio.get_running_loop()
        if socks is None:
            socks = await self.connector(self.size)
        conns = await asyncio.gather(*(loop.create_unix_connection(self._conn, sock=sock) for sock in socks))
        self.conns.extend(conn for _, conn in conns)

    def submit(self, frame: bytes | list[bytes], timeout: float | None,
               callback: Callable[[bytes | None, BaseException | None], None], conn: WorkerConn | None = None) -> bool:
        """Send frame on the least busy connection with room, or keep it in
        the backlog until one has room; callback gets (answer, None) or
        (None, WorkerGone / TimeoutError), synchronously from the read that
        settled it. False, and nothing queued, if the worker is gone."""
        loop = self.loop
        now = loop.time()
        deadline = math.inf if timeout is None else now + timeout
        if conn is None:
            if self.dead:
                return False
            conn = None if self.backlog or self._queued() else self._pick()
            if conn is None:
                # The deadline runs from now, not from when room is found: a
                # request waiting on a worker that never frees up (dead, or all
                # its connections lost) is answered by _sweep.
                self.backlog.append((frame, deadline, callback))
                if self.sweeper is None:
                    self.sweeper = loop.call_later(SWEEP_S, self._sweep)
                return True
        self._send(frame, deadline, callback, conn, now)
        return True

    def _send(self, frame: bytes | list[bytes], deadline: float, callback: Callable, conn: WorkerConn, now: float) -> None:
        conn.sent += 1
        call = Call(self, conn, conn.sent, now, deadline, callback)
        conn.queue(frame, call)
        self.inflight += 1
        if self.sweeper is None:
            self.sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    def _sweep(self) -> None:
        """Expire overdue calls: one check every SWEEP_S while any is in flight,
        cheaper than a timer armed and cancelled for every request."""
        self.sweeper = None
        now = self.loop.time()
        for conn in list(self.conns):
            # Oldest first; settled calls stay queued until their late answer.
            for call in list(conn.waiters):
                if call.done:
                    continue
                if call.deadline > now:
                    break
                call.expire()
        if self.backlog and any(item[1] <= now for item in self.backlog):
            keep: collections.deque = collections.deque()
            expired = []
            for item in self.backlog:
                (expired if item[1] <= now else keep).append(item)
            self.backlog = keep
            for _frame, _deadline, callback in expired:
                callback(None, TimeoutError())
            if not self.inflight and not self.backlog:
                self._finished_all()
        if (self.inflight or self.backlog) and not self.dead:
            self.sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    async def drain(self) -> None:
        """Return once nothing is in flight or waiting for room."""
        if self.inflight or self.backlog:
            fut = asyncio.get_running_loop().create_future()
            self.drain_waiters.append(fut)
            await fut

    async def request(self, frame: bytes | list[bytes], timeout: float | None, sink: Callable[[bytes], None] | None = None) -> bytes:
        """Send one frame and return the worker's answer frame.

        Raises WorkerGone if the worker dies, TimeoutError if it does not
        answer in time. A sink (job events) needs the connection to itself."""
        if self.dead:
            raise WorkerGone()
        fut = self.loop.create_future()

        def settled(frame: bytes | None, exc: BaseException | None) -> None:
            if fut.done():
                return
            if exc is not None:
                fut.set_exception(exc)
            else:
                fut.set_result(frame)

        if sink is None:
            if not self.submit(frame, timeout, settled):
                raise WorkerGone()
            return await fut
        conn = None if self._queued() else self._pick(True)
        if conn is None:
            # Bounded like any request: a worker whose connections are all
            # lost may never have room again.
            conn = await asyncio.wait_for(self._acquire(True), timeout)
        conn.sink = sink
        try:
            self.submit(frame, timeout, settled, conn)
            return await fut
        finally:
            # The answer's read already woke the next job, which may have taken
            # this connection (and set its own sink) before we resume here.
            if conn.sink is sink:
                conn.sink = None

    def _queued(self) -> bool:
        """Whether requests wait for room: newcomers queue behind them."""
        waiters = self.waiters
        while waiters and waiters[0].done():
            waiters.popleft()
        return bool(waiters)

    def _finished(self) -> None:
        self.inflight -= 1
        self._room()
        if self.inflight == 0 and not self.backlog:
            self._finished_all()

    def _finished_all(self) -> None:
        for fut in self.drain_waiters:
            if not fut.done():
                fut.set_result(None)
        self.drain_waiters.clear()

    def _room(self) -> None:
        """A connection may have room: send from the backlog, wake a waiter."""
        while self.backlog:
            conn = self._pick()
            if conn is None:
                break
            frame, deadline, callback = self.backlog.popleft()
            self._send(frame, deadline, callback, conn, self.loop.time())
        if self.waiters:
            self._wake()

    def _pick(self, alone: bool = False) -> WorkerConn | None:
        """An idle connection; else, unless alone, the one with the fewest
        requests queued, if it has room and is not stuck on a slow one."""
        best = None
        fewest = self.depth
        for conn in self.conns:
            if conn.closed or conn.answered < conn.overdue:  # not usable (inlined: hot path)
                continue
            n = len(conn.waiters)
            if n == 0:
                return conn
            if n < fewest:
                best, fewest = conn, n
        if best is None or alone:
            return None
        if self.loop.time() - best.waiters[0].sent_at > PIPELINE_AGE_S:
            return self._fresh_conn()
        return best

    def _fresh_conn(self) -> WorkerConn | None:
        """The connection with the fewest requests queued among those whose
        oldest went out less than PIPELINE_AGE_S ago (slower path of _pick)."""
        limit = self.loop.time() - PIPELINE_AGE_S
        best = None
        for conn in self.conns:
            if conn.usable and 0 < len(conn.waiters) < self.depth and conn.waiters[0].sent_at >= limit:
                if best is None or len(conn.waiters) < len(best.waiters):
                    best = conn
        return best

    async def _acquire(self, alone: bool) -> WorkerConn:
        loop = asyncio.get_running_loop()
        while True:
            if self.dead:
                raise WorkerGone()
            fut = loop.create_future()
            self.waiters.append(fut)
            await fut
            conn = self._pick(alone)
            if conn is not None:
                return conn

    def _wake(self) -> None:
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                return

    def _watch(self, conn: WorkerConn, seq: int) -> None:
        """A request on conn overran: if it is still unanswered HUNG_GRACE_S
        later, the worker is hung."""
        conn.overdue = max(conn.overdue, seq)

        def check() -> None:
            if conn.answered >= seq or conn.closed:
                self._room()
                return
            conn.abort()
            if not self.dead and self.on_hung is not None:
                self.on_hung()

        asyncio.get_running_loop().call_later(HUNG_GRACE_S, check)

    def _lost(self, conn: WorkerConn) -> None:
        if conn in self.conns:
            self.conns.remove(conn)
        if not self.dead:
            asyncio.get_running_loop().create_task(self._replace())

    async def _replace(self) -> None:
        if self.dead:
            return
        try:
            (sock,) = await self.connector(1)
            _, conn = await asyncio.get_running_loop().create_unix_connection(self._conn, sock=sock)
        except (OSError, RuntimeFailure, TimeoutError):
            # The worker is going away; its exit (or the deadline) answers the backlog.
            return
        if self.dead:
            conn.abort()
            return
        self.conns.append(conn)
        self._room()

    def kill(self) -> None:
        """The worker is gone: fail everyone waiting and drop connections."""
        self.dead = True
        for conn in self.conns:
            conn.abort()
        self.conns.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(WorkerGone())
        while self.backlog:
            _frame, _timeout, callback = self.backlog.popleft()
            callback(None, WorkerGone())

    def close(self) -> None:
        self.kill()


class EventsConn(asyncio.Protocol):
    """The worker's outbound channel: socket sends, close requests, jobs_create."""

    def __init__(self, on_frame: Callable[[bytes], None]) -> None:
        self.on_frame = on_frame
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need = 4  # bytes buf must hold before a frame can be complete
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(_U32.pack(1) + bytes([protocol.F_EVENTS]))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
            if len(self.buf) < self.need:
                return  # the frame is still incomplete
            data = self.buf  # type: ignore[assignment]
        # A broadcast brings thousands of frames per read.
        for frame in _frames(data, self):
            try:
                self.on_frame(bytes(frame) if type(frame) is memoryview else frame)
            except Exception:  # noqa: BLE001 - a bad frame must not kill the channel
                log.exception("bad frame on a worker events channel")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, frame: bytes) -> None:
        if not self.closed and self.transport is not None:
            self.transport.write(frame)

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


async def open_events(socks: list[socket.socket], on_frame: Callable[[bytes], None]) -> EventsConn:
    (sock,) = socks
    _, conn = await asyncio.get_running_loop().create_unix_connection(lambda: EventsConn(on_frame), sock=sock)
    return conn
