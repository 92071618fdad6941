"""The api's side of the runtime: the agent's control socket and the data
connections to each worker."""

from __future__ import annotations

import asyncio
import collections
import itertools
import json
import logging
import os
import struct
import sys
from collections.abc import Awaitable, Callable

from runtime import protocol

log = logging.getLogger("cweb.api")

_U32 = struct.Struct("<I")


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


def _expire(fut: asyncio.Future) -> None:
    if not fut.done():
        fut.set_exception(TimeoutError())


class WorkerConn(asyncio.Protocol):
    """One data connection to a worker: one request in flight at a time."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.waiter: asyncio.Future | None = None
        self.closed = False
        self.sink: Callable[[bytes], None] | None = None
        # Set while a timed-out handler may still answer on this connection.
        self.late: Callable[[], None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        while len(buf) >= 4:
            (n,) = _U32.unpack_from(buf, 0)
            if len(buf) < 4 + n:
                return
            frame = bytes(buf[4 : 4 + n])
            del buf[: 4 + n]
            # Jobs stream their events on the connection before the answer.
            if self.sink is not None and frame[0] == protocol.F_JOB_EVENT:
                self.sink(frame)
                continue
            waiter, self.waiter = self.waiter, None
            if waiter is not None and not waiter.done():
                waiter.set_result(frame)
            elif self.late is not None:
                late, self.late = self.late, None
                late()

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(WorkerGone())

    def call(self, frame: bytes) -> asyncio.Future:
        if self.closed or self.transport is None:
            raise WorkerGone()
        fut = asyncio.get_running_loop().create_future()
        self.waiter = fut
        self.transport.write(frame)
        return fut

    def abort(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.abort()


class WorkerPool:
    """A fixed set of data connections to one worker process."""

    def __init__(self, socket_path: str, size: int) -> None:
        self.socket_path = socket_path
        self.size = size
        self.idle: list[WorkerConn] = []
        self.waiters: collections.deque[asyncio.Future] = collections.deque()
        self.inflight = 0
        self.drained = asyncio.Event()
        self.drained.set()
        self.dead = False
        # Called when a handler has not answered within timeout + HUNG_GRACE_S.
        self.on_hung: Callable[[], None] | None = None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        conns = await asyncio.gather(*(loop.create_unix_connection(WorkerConn, self.socket_path) for _ in range(self.size)))
        self.idle.extend(conn for _, conn in conns)

    async def request(self, frame: bytes, timeout: float | None, sink: Callable[[bytes], None] | None = None) -> bytes:
        """Send one frame and return the worker's answer frame.

        Raises WorkerGone if the worker dies, asyncio.TimeoutError if it does
        not answer in time (that connection is then dropped)."""
        if self.dead:
            raise WorkerGone()
        self.inflight += 1
        self.drained.clear()
        conn = None
        timer = None
        try:
            conn = self._take_idle() or await self._acquire()
            conn.sink = sink
            fut = conn.call(frame)
            if timeout is not None:
                # Cheaper than asyncio.wait_for, which wraps the await in a new task.
                timer = fut.get_loop().call_later(timeout, _expire, fut)
            return await fut
        except TimeoutError:
            # The handler may still answer later on this connection: park it.
            if conn is not None:
                self._park(conn)
                conn = None
            raise
        finally:
            if timer is not None:
                timer.cancel()
            if conn is not None:
                conn.sink = None
                self._release(conn)
            self.inflight -= 1
            if self.inflight == 0:
                self.drained.set()

    def _park(self, conn: WorkerConn) -> None:
        """Keep a timed-out connection aside: a late answer returns it to the
        pool; no answer within HUNG_GRACE_S means the worker is hung."""

        def answered() -> None:
            timer.cancel()
            self._release(conn)

        def hung() -> None:
            conn.late = None
            conn.abort()
            if not self.dead and self.on_hung is not None:
                self.on_hung()

        conn.late = answered
        timer = asyncio.get_running_loop().call_later(HUNG_GRACE_S, hung)

    def _take_idle(self) -> WorkerConn | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        return None

    async def _acquire(self) -> WorkerConn:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                return conn
        if self.dead:
            raise WorkerGone()
        fut = asyncio.get_running_loop().create_future()
        self.waiters.append(fut)
        return await fut

    def _release(self, conn: WorkerConn) -> None:
        if conn.closed:
            if not self.dead:
                asyncio.create_task(self._replace())
            return
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_result(conn)
                return
        self.idle.append(conn)

    async def _replace(self) -> None:
        try:
            _, conn = await asyncio.get_running_loop().create_unix_connection(WorkerConn, self.socket_path)
        except OSError:
            return
        self._release(conn)

    def kill(self) -> None:
        """The worker is gone: fail everyone waiting and drop connections."""
        self.dead = True
        for conn in self.idle:
            conn.abort()
        self.idle.clear()
        while self.waiters:
            fut = self.waiters.popleft()
            if not fut.done():
                fut.set_exception(WorkerGone())

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
        buf = self.buf
        buf += data
        # Parse by offset and trim once: a broadcast brings thousands of frames per read.
        off = 0
        end = len(buf)
        while end - off >= 4:
            (n,) = _U32.unpack_from(buf, off)
            if end - off < 4 + n:
                break
            frame = bytes(buf[off + 4 : off + 4 + n])
            off += 4 + n
            try:
                self.on_frame(frame)
            except Exception:  # noqa: BLE001 - a bad frame must not kill the channel
                log.exception("bad frame on a worker events channel")
        if off:
            del buf[:off]

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
