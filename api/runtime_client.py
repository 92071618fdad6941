"""The api's side of the runtime: the agent's control socket and the data
connections to each worker."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import math
import os
import struct
import sys
from collections.abc import Awaitable, Callable

from runtime import protocol

log = logging.getLogger("cweb.api")

_U32 = struct.Struct("<I")


# Frames at least this large are handed on as views of the read buffer
# instead of copies (a 1 MiB response body is then copied once in the api).
_VIEW_FROM = 64 << 10


def _frames(data: bytes | bytearray, owner: WorkerConn | EventsConn) -> list[bytes | memoryview]:
    """The whole length-prefixed frames in data; an incomplete tail is kept
    in owner.buf for the next read. Large frames are memoryviews (owner.buf
    is then a new buffer, so the view stays valid)."""
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
    rest = bytes(mv[off:]) if off < end else b""
    if rest or owner.buf:
        owner.buf = bytearray(rest)
    return frames


class RuntimeError_(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class WorkerGone(Exception):
    """The worker closed the connection: it crashed or was stopped."""


class AgentClient:
    """JSON-lines requests to the runtime agent, plus its event stream."""

    def __init__(self, socket_path: str, on_event: Callable[[dict], Awaitable[None] | None]) -> None:
        self.socket_path = socket_path
        self.on_event = on_event
        self.ids = itertools.count(1)
        self.pending: dict[int, asyncio.Future] = {}
        self.writer: asyncio.StreamWriter | None = None
        self.reader_task: asyncio.Task | None = None
        self.process: asyncio.subprocess.Process | None = None
        self.spawn_args: tuple | None = None
        self.closing = False
        # Called after the agent came back (restarted): every worker it had is gone.
        self.on_reconnect: Callable[[], Awaitable[None]] | None = None

    async def spawn_embedded(self, store: str, run_dir: str, data_dir: str, workdir: str) -> None:
        """Start `python -m runtime` as our child and wait until it listens."""
        self.spawn_args = (store, run_dir, data_dir, workdir)
        project_root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = project_root
        for secret in ("CWEB_API_KEY",):
            env.pop(secret, None)
        self.process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "runtime",
            "--socket", self.socket_path, "--store", store, "--run-dir", run_dir,
            "--data-dir", data_dir, "--workdir", workdir, "--parent-pid", str(os.getpid()),
            stdout=asyncio.subprocess.PIPE, env=env,
        )
        assert self.process.stdout is not None
        line = await asyncio.wait_for(self.process.stdout.readline(), 30)
        if b"ready" not in line:
            raise RuntimeError_("runtime_failed", "the runtime agent did not start")

    async def connect(self, attempts: int = 100) -> None:
        for _ in range(attempts):
            try:
                reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 24)
                break
            except (FileNotFoundError, ConnectionRefusedError):
                await asyncio.sleep(0.1)
        else:
            raise RuntimeError_("runtime_unreachable", f"cannot reach the runtime agent at {self.socket_path}")
        self.writer = writer
        self.reader_task = asyncio.create_task(self._read(reader))

    async def _read(self, reader: asyncio.StreamReader) -> None:
        while line := await reader.readline():
            msg = json.loads(line)
            if "event" in msg:
                res = self.on_event(msg)
                if asyncio.iscoroutine(res):
                    asyncio.create_task(res)
                continue
            fut = self.pending.pop(msg.get("id"), None)
            if fut is not None and not fut.done():
                fut.set_result(msg)
        for fut in self.pending.values():
            if not fut.done():
                fut.set_exception(RuntimeError_("runtime_unreachable", "the runtime agent went away"))
        self.pending.clear()
        self.writer = None
        if not self.closing:
            asyncio.create_task(self._come_back())

    async def _come_back(self) -> None:
        """The agent died or restarted: start it again (embedded) or wait for it (compose)."""
        log.error("lost the runtime agent; reconnecting")
        while not self.closing:
            try:
                if self.spawn_args is not None:
                    if self.process is not None and self.process.returncode is None:
                        # A child forked by the dying agent may hold its listening socket
                        # for a moment: only a reaped agent is really gone.
                        try:
                            await asyncio.wait_for(self.process.wait(), 5)
                        except TimeoutError:
                            self.process.kill()
                            await self.process.wait()
                    await self.spawn_embedded(*self.spawn_args)
                await self.connect(attempts=50)
                await self.call("ping", timeout=10)
                break
            except (TimeoutError, RuntimeError_, OSError):
                await asyncio.sleep(1)
        if not self.closing and self.on_reconnect is not None:
            log.info("runtime agent is back; reloading modules")
            await self.on_reconnect()

    async def call(self, op: str, timeout: float = 60.0, **args: object) -> dict:
        if self.writer is None:
            raise RuntimeError_("runtime_unreachable", "not connected to the runtime agent")
        req_id = next(self.ids)
        fut = asyncio.get_running_loop().create_future()
        self.pending[req_id] = fut
        self.writer.write(json.dumps({"id": req_id, "op": op, **args}).encode() + b"\n")
        try:
            msg = await asyncio.wait_for(fut, timeout)
        finally:
            self.pending.pop(req_id, None)
        if not msg.get("ok"):
            raise RuntimeError_(msg.get("error", "runtime_error"), msg.get("message", "runtime error"))
        return msg

    async def close(self) -> None:
        self.closing = True
        if self.writer is not None:
            self.writer.close()
        if self.process is not None and self.process.returncode is None:
            self.process.terminate()
            try:
                await asyncio.wait_for(self.process.wait(), 5)
            except TimeoutError:
                self.process.kill()


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


class WorkerConn(asyncio.Protocol):
    """One data connection to a worker, served by one worker thread.

    Requests are pipelined: the thread answers them in order, so each answer
    settles the oldest call. Frames queued in one event-loop turn leave in
    one write, and the thread then finds the next request already buffered
    instead of sleeping and being woken for each."""

    def __init__(self, on_lost: Callable[[WorkerConn], None] | None = None) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
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

    def data_received(self, data: bytes) -> None:
        # Frames are cut straight from data when nothing was left over (the
        # usual case), each copied once.
        if self.buf:
            self.buf += data
            data = self.buf  # type: ignore[assignment]
        for frame in _frames(data, self):
            if type(frame) is memoryview and frame[0] != protocol.F_HTTP_RESP:
                frame = bytes(frame)  # only HTTP answers are read as views
            # Jobs stream their events on the connection before the answer.
            if self.sink is not None and frame[0] == protocol.F_JOB_EVENT:
                self.sink(frame)
                continue
            self.answered += 1
            if self.waiters:
                self.waiters.popleft().settle(frame, None)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        while self.waiters:
            self.waiters.popleft().settle(None, WorkerGone())
        if self.on_lost is not None:
            self.on_lost(self)

    def queue(self, frame: bytes, call: Call) -> None:
        if self.closed or self.transport is None:
            raise WorkerGone()
        self.waiters.append(call)
        if not self.out:
            self.loop.call_soon(self._flush)
        self.out.append(frame)

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

    def __init__(self, socket_path: str, size: int, depth: int = 8) -> None:
        self.socket_path = socket_path
        self.size = size
        self.depth = depth
        self.conns: list[WorkerConn] = []
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.inflight = 0
        self.drain_waiters: list[asyncio.Future] = []
        # Requests waiting for room on a connection, oldest first.
        self.backlog: collections.deque[tuple[bytes, float | None, Callable]] = collections.deque()
        self.sweeper: asyncio.TimerHandle | None = None
        self.dead = False
        # Called when a handler has not answered within timeout + HUNG_GRACE_S.
        self.on_hung: Callable[[], None] | None = None
        self.loop: asyncio.AbstractEventLoop = None  # type: ignore[assignment]  # set by open()

    def _conn(self) -> WorkerConn:
        return WorkerConn(self._lost)

    async def open(self) -> None:
        self.loop = loop = asyncio.get_running_loop()
        conns = await asyncio.gather(*(loop.create_unix_connection(self._conn, self.socket_path) for _ in range(self.size)))
        self.conns.extend(conn for _, conn in conns)

    def submit(self, frame: bytes, timeout: float | None,
               callback: Callable[[bytes | None, BaseException | None], None], conn: WorkerConn | None = None) -> bool:
        """Send frame on the least busy connection with room, or keep it in
        the backlog until one has room; callback gets (answer, None) or
        (None, WorkerGone / TimeoutError), synchronously from the read that
        settled it. False, and nothing queued, if the worker is gone."""
        if conn is None:
            if self.dead:
                return False
            conn = None if self.backlog or self._queued() else self._pick()
            if conn is None:
                self.backlog.append((frame, timeout, callback))
                return True
        conn.sent += 1
        loop = self.loop
        now = loop.time()
        call = Call(self, conn, conn.sent, now, math.inf if timeout is None else now + timeout, callback)
        conn.queue(frame, call)
        self.inflight += 1
        if self.sweeper is None:
            self.sweeper = loop.call_later(SWEEP_S, self._sweep)
        return True

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
        if self.inflight and not self.dead:
            self.sweeper = self.loop.call_later(SWEEP_S, self._sweep)

    async def drain(self) -> None:
        """Return once nothing is in flight or waiting for room."""
        if self.inflight or self.backlog:
            fut = asyncio.get_running_loop().create_future()
            self.drain_waiters.append(fut)
            await fut

    async def request(self, frame: bytes, timeout: float | None, sink: Callable[[bytes], None] | None = None) -> bytes:
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
            conn = await self._acquire(True)
        conn.sink = sink
        try:
            self.submit(frame, timeout, settled, conn)
            return await fut
        finally:
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
        if self.inflight == 0 and self.drain_waiters and not self.backlog:
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
            self.submit(*self.backlog.popleft(), conn)
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
        try:
            _, conn = await asyncio.get_running_loop().create_unix_connection(self._conn, self.socket_path)
        except OSError:
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
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(_U32.pack(1) + bytes([protocol.F_EVENTS]))  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.buf:
            self.buf += data
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


async def open_events(socket_path: str, on_frame: Callable[[bytes], None]) -> EventsConn:
    _, conn = await asyncio.get_running_loop().create_unix_connection(lambda: EventsConn(on_frame), socket_path)
    return conn
