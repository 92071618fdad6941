"""The runtime agent: starts, supervises and stops one worker per module hash.

The api talks to it over a Unix socket with JSON lines. Requests carry an
`id` and get exactly one answer with the same `id`; unsolicited events
(`exited`, `log`) carry an `event` key instead:

    {"id": 1, "op": "load", "hash": H}      -> {"id": 1, "ok": true, "worker_id": 7, "socket": P, "describe": {...}}
    {"id": 2, "op": "start", "worker_id": 7} -> {"id": 2, "ok": true}          (onload ran, socket listening)
    {"id": 3, "op": "stop", "worker_id": 7}  -> {"id": 3, "ok": true}          (unload ran, process gone)
    {"id": 4, "op": "kill", "worker_id": 7}  -> {"id": 4, "ok": true}
    {"id": 5, "op": "logs", "hash": H, "tail": 100} -> {"id": 5, "ok": true, "lines": [...]}
    {"event": "exited", "worker_id": 7, "hash": H, "returncode": -11, "expected": false}

A spare worker is kept warm (interpreter up, imports done) so that a deploy
only pays for loading the artifact, not for starting Python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime import limits

log = logging.getLogger("cweb.runtime")

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)


class AgentError(Exception):
    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass
class WorkerProc:
    proc: asyncio.subprocess.Process
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    worker_id: int = 0
    hash: str = ""
    socket_path: str = ""
    state: str = "spare"
    expected_exit: bool = False
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)
    exited: asyncio.Event = field(default_factory=asyncio.Event)


def _signal_name(returncode: int | None) -> str:
    if returncode is None or returncode >= 0:
        return f"exit status {returncode}"
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class Agent:
    def __init__(self, store_dir: str, run_dir: str, data_dir: str, workdir: str) -> None:
        self.store_dir = store_dir
        self.run_dir = run_dir
        self.data_dir = data_dir
        self.workdir = workdir
        self.workers: dict[int, WorkerProc] = {}
        self.spare: WorkerProc | None = None
        self.spare_task: asyncio.Task | None = None
        self.next_id = 1
        self.clients: set[asyncio.StreamWriter] = set()
        self.logs: dict[str, collections.deque] = {}
        # Read once here, in the parent: the preexec hook only makes system calls.
        self.worker_limits = limits.WorkerLimits.from_env()

    # ---- worker processes -------------------------------------------

    async def spawn(self) -> WorkerProc:
        parent, child = socket.socketpair()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": PROJECT_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "CWEB_CONTROL_FD": str(child.fileno()),
        }
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runtime.worker",
            pass_fds=(child.fileno(),),
            env=env,
            cwd=self.workdir,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            preexec_fn=self.worker_limits.preexec,
        )
        child.close()
        reader, writer = await asyncio.open_unix_connection(sock=parent)
        w = WorkerProc(proc=proc, reader=reader, writer=writer)
        asyncio.create_task(self._read_control(w))
        asyncio.create_task(self._read_output(w, proc.stdout, "stdout"))
        asyncio.create_task(self._read_output(w, proc.stderr, "stderr"))
        asyncio.create_task(self._wait_exit(w))
        return w

    async def _read_control(self, w: WorkerProc) -> None:
        while line := await w.reader.readline():
            await w.replies.put(json.loads(line))

    async def _read_output(self, w: WorkerProc, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while line := await stream.readline():
            if not w.hash:
                continue
            entry = {
                "ts": time.time(),
                "stream": name,
                "module_hash": w.hash,
                "line": line.decode("utf-8", "replace").rstrip("\n")[:4096],
            }
            self.logs.setdefault(w.hash, collections.deque(maxlen=limits.LOG_RING_LINES)).append(entry)
            self.broadcast({"event": "log", **entry})

    async def _wait_exit(self, w: WorkerProc) -> None:
        rc = await w.proc.wait()
        w.exited.set()
        await w.replies.put({"op": "exited", "returncode": rc})
        if w is self.spare:
            self.spare = None
        if w.worker_id in self.workers:
            del self.workers[w.worker_id]
            if w.socket_path:
                try:
                    os.unlink(w.socket_path)
                except OSError:
                    pass
            self.broadcast(
                {
                    "event": "exited",
                    "worker_id": w.worker_id,
                    "hash": w.hash,
                    "returncode": rc,
                    "reason": _signal_name(rc),
                    "expected": w.expected_exit,
                }
            )

    def _ensure_spare(self) -> None:
        if self.spare is None and (self.spare_task is None or self.spare_task.done()):
            self.spare_task = asyncio.create_task(self._make_spare())

    async def _make_spare(self) -> None:
        self.spare = await self.spawn()

    async def _take_worker(self) -> WorkerProc:
        if self.spare_task is not None and not self.spare_task.done():
            await self.spare_task
        w = self.spare
        self.spare = None
        if w is None or w.exited.is_set():
            w = await self.spawn()
        return w

    async def _command(self, w: WorkerProc, msg: dict, timeout: float) -> dict:
        w.writer.write(json.dumps(msg).encode() + b"\n")
        try:
            await w.writer.drain()
            return await asyncio.wait_for(w.replies.get(), timeout)
        except (ConnectionError, OSError):
            await w.exited.wait()
            return await w.replies.get()
        except TimeoutError as exc:
            w.proc.kill()
            raise AgentError("worker_timeout", f"worker did not answer {msg['op']} within {timeout:g}s") from exc

    # ---- operations -----------------------------------------------------

    async def op_load(self, req: dict) -> dict:
        module_hash = req["hash"]
        path = os.path.join(self.store_dir, "artifacts", f"{module_hash}.so")
        if not os.path.exists(path):
            raise AgentError("artifact_missing", f"artifact {module_hash[:12]} is not in the store")
        w = await self._take_worker()
        try:
            return await self._load_into(w, module_hash, path, req)
        except BaseException:
            self._ensure_spare()
            raise

    async def _load_into(self, w: WorkerProc, module_hash: str, path: str, req: dict) -> dict:
        w.worker_id = self.next_id
        self.next_id += 1
        w.hash = module_hash
        w.socket_path = os.path.join(self.run_dir, f"w{w.worker_id}.sock")
        w.state = "loading"
        self.workers[w.worker_id] = w
        w.expected_exit = True  # until it is running, an exit is a load failure, not a crash
        reply = await self._command(
            w,
            {
                "op": "load",
                "hash": module_hash,
                "path": path,
                "socket": w.socket_path,
                "data_dir": self.data_dir,
                "max_response": req.get("max_response", 0),
            },
            limits.LOAD_TIMEOUT_S,
        )
        if reply["op"] == "exited":
            raise AgentError("load_crashed", f"the module crashed while loading ({_signal_name(reply['returncode'])})")
        if reply["op"] == "error":
            await self._discard(w)
            raise AgentError(reply["error"], reply["message"])
        return {"worker_id": w.worker_id, "socket": w.socket_path, "describe": reply["describe"]}

    async def op_start(self, req: dict) -> dict:
        try:
            return await self._start(req)
        finally:
            # The next spare starts once this deploy's worker is up, not during
            # its load and onload: they would compete for the same cores.
            self._ensure_spare()

    async def _start(self, req: dict) -> dict:
        w = self._worker(req)
        reply = await self._command(w, {"op": "start"}, limits.ONLOAD_TIMEOUT_S)
        if reply["op"] == "exited":
            raise AgentError("onload_crashed", f"onload crashed ({_signal_name(reply['returncode'])})")
        if reply["op"] == "error":
            await self._discard(w)
            raise AgentError(reply["error"], reply["message"])
        w.state = "running"
        w.expected_exit = False
        return {}

    async def op_stop(self, req: dict) -> dict:
        w = self._worker(req)
        w.expected_exit = True
        try:
            await self._command(w, {"op": "stop"}, float(req.get("timeout", limits.STOP_TIMEOUT_S)))
        except AgentError:
            pass
        try:
            await asyncio.wait_for(w.exited.wait(), limits.STOP_TIMEOUT_S)
        except TimeoutError:
            w.proc.kill()
            await w.exited.wait()
        return {}

    async def op_kill(self, req: dict) -> dict:
        w = self._worker(req)
        w.expected_exit = bool(req.get("expected", False))
        if not w.exited.is_set():
            w.proc.kill()
        await w.exited.wait()
        return {}

    async def op_logs(self, req: dict) -> dict:
        lines: list[dict] = []
        for h in req.get("hashes") or [req.get("hash", "")]:
            lines.extend(self.logs.get(h, ()))
        lines.sort(key=lambda e: e["ts"])
        tail = int(req.get("tail", 200))
        return {"lines": lines[-tail:] if tail else []}

    async def op_ping(self, req: dict) -> dict:
        return {"workers": [{"worker_id": w.worker_id, "hash": w.hash, "state": w.state, "pid": w.proc.pid} for w in self.workers.values()]}

    def _worker(self, req: dict) -> WorkerProc:
        w = self.workers.get(int(req["worker_id"]))
        if w is None:
            raise AgentError("no_such_worker", f"worker {req['worker_id']} is not running")
        return w

    async def _discard(self, w: WorkerProc) -> None:
        w.expected_exit = True
        if not w.exited.is_set():
            w.proc.kill()
            await w.exited.wait()

    # ---- the api connection -----------------------------------------

    def broadcast(self, msg: dict) -> None:
        data = json.dumps(msg).encode() + b"\n"
        for writer in list(self.clients):
            if writer.is_closing():
                self.clients.discard(writer)
            else:
                writer.write(data)

    async def handle_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.clients.add(writer)
        try:
            while line := await reader.readline():
                req = json.loads(line)
                asyncio.create_task(self._answer(req, writer))
        finally:
            self.clients.discard(writer)
            writer.close()

    async def _answer(self, req: dict, writer: asyncio.StreamWriter) -> None:
        handler = getattr(self, f"op_{req.get('op')}", None)
        try:
            if handler is None:
                raise AgentError("bad_op", f"unknown op {req.get('op')!r}")
            resp = {"id": req.get("id"), "ok": True, **(await handler(req))}
        except AgentError as exc:
            resp = {"id": req.get("id"), "ok": False, "error": exc.code, "message": exc.message}
        except Exception as exc:  # noqa: BLE001 - the api must always get an answer
            log.exception("agent op failed")
            resp = {"id": req.get("id"), "ok": False, "error": "agent_error", "message": str(exc)}
        if not writer.is_closing():
            writer.write(json.dumps(resp).encode() + b"\n")

    async def shutdown(self) -> None:
        for w in list(self.workers.values()) + ([self.spare] if self.spare else []):
            w.expected_exit = True
            if not w.exited.is_set():
                w.proc.terminate()
        for w in list(self.workers.values()):
            try:
                await asyncio.wait_for(w.exited.wait(), 2)
            except TimeoutError:
                w.proc.kill()


async def serve(args: argparse.Namespace) -> None:
    os.makedirs(args.run_dir, exist_ok=True)
    limits.make_undumpable()
    agent = Agent(args.store, args.run_dir, args.data_dir, args.workdir)
    try:
        os.unlink(args.socket)
    except FileNotFoundError:
        pass
    server = await asyncio.start_unix_server(agent.handle_client, path=args.socket, limit=1 << 24)
    agent._ensure_spare()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    # Embedded mode: the api is our parent; if it dies, so do we.
    if args.parent_pid:
        asyncio.create_task(_watch_parent(args.parent_pid, stop))
    print("cweb-runtime ready", flush=True)
    await stop.wait()
    server.close()
    await agent.shutdown()


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == pid:
        await asyncio.sleep(0.5)
    stop.set()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime", description="cweb runtime agent")
    p.add_argument("--socket", default=os.environ.get("CWEB_RUNTIME_SOCKET", "/run/cweb/agent.sock"))
    p.add_argument("--store", default=os.environ.get("CWEB_STORE_DIR", "./data/store"))
    p.add_argument("--run-dir", default=os.environ.get("CWEB_RUN_DIR", "/run/cweb"))
    p.add_argument("--data-dir", default=os.environ.get("CWEB_DATA_DIR", "./data"))
    p.add_argument("--workdir", default=os.environ.get("CWEB_WORKDIR", os.getcwd()))
    p.add_argument("--parent-pid", type=int, default=0)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    asyncio.run(serve(args))
