"""The runtime agent: starts, supervises and stops one worker per module hash.

The api drives it with JSON lines (runtime/channel.py); every operation and
event, with its fields, is in runtime/agent_protocol.py. For example:

    {"id": 1, "op": "load", "hash": H}      -> {"id": 1, "ok": true, "worker_id": 7, "describe": {...}}
    {"id": 3, "op": "connect", "worker_id": 7, "count": 8}
                                             -> {"id": 3, "ok": true} + 8 descriptors
    {"event": "exited", "worker_id": 7, "hash": H, "returncode": -11, "reason": ..., "expected": false}

Only the api can send these. Embedded (the api starts the agent), the
channel is a socketpair the agent inherits (--control-fd): it has no name,
so no other process can reach it. In the compose layout (--socket PATH, the
api in another container) the first line of a connection must be
{"op": "hello", "secret": S} with the secret the agent wrote to
<run dir>/agent.secret (mode 0600) or was given in CWEB_RUNTIME_SECRET;
anything else is dropped. Workers never see the run dir, so they can read
neither the secret nor, embedded, anything at all.

Data connections are socketpairs made here per `connect`: one end goes to
the worker over its own inherited control socket, the other to the api. A
worker listens nowhere, so no module can connect to another's worker, take
over its path or announce itself as its events channel.

A spare worker is kept warm (interpreter up, imports done, sandbox entered)
so that a deploy only pays for loading the artifact, not for starting Python.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import hmac
import json
import logging
import os
import re
import secrets
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from runtime import agent_protocol, limits, provenance, sandbox, services
from runtime.channel import Channel, Lines, recv_blocking, send_blocking
from runtime.errors import RuntimeFailure
from runtime.files import write_atomic
from runtime.settings import AgentSettings

log = logging.getLogger("cweb.runtime")

PROJECT_ROOT = str(Path(__file__).resolve().parent.parent)
# Descriptors one `connect` may ask for (one sendmsg carries at most 253).
MAX_CONNECT = 200
# Seconds after a start with no connect before the next spare starts anyway.
SPARE_FALLBACK_S = 1.0
SECRET_FILE = "agent.secret"
MODULES_DIR = "modules-data"


@dataclass
class WorkerProc:
    proc: asyncio.subprocess.Process
    control: Channel
    worker_id: int = 0
    hash: str = ""
    state: str = "spare"
    # Set by the agent only (a stop, a discard, a kill the api asked for as
    # expected): nothing a worker sends can change it.
    expected_exit: bool = False
    connections: int = 0
    uid: int | None = None
    replies: asyncio.Queue = field(default_factory=asyncio.Queue)
    exited: asyncio.Event = field(default_factory=asyncio.Event)
    # The stdout/stderr readers: a dead worker's last lines are in once they end.
    readers: list = field(default_factory=list)
    # When the artifact was handed to it: its output since then is this worker's.
    loaded_at: float = 0.0
    # Why the agent itself ended the worker, if it did (stop, discard, kill).
    ended_by: str = ""


def _crash_signal(returncode: int | None, output: list[str]) -> str:
    """The signal a worker died of: the one the module's crash handler
    named in its output (exact even when bubblewrap or our kill of a
    half-dead process stands between), else its return code (bubblewrap
    reports a signalled child as 128 + N)."""
    for line in reversed(output):
        m = _FATAL_LINE.search(line)
        if m:
            return m.group(1)
    if returncode is not None and 128 < returncode < 128 + 65:
        returncode = 128 - returncode
    return _signal_name(returncode)


# The first line of the crash report builder/sdk/cweb_glue.c writes.
_FATAL_LINE = re.compile(r"cweb: fatal signal (SIG[A-Z0-9]+)")


def _signal_name(returncode: int | None) -> str:
    if returncode is None or returncode >= 0:
        return f"exit status {returncode}"
    try:
        return signal.Signals(-returncode).name
    except ValueError:
        return f"signal {-returncode}"


class Agent:
    def __init__(self, settings: AgentSettings) -> None:
        store_dir, run_dir, data_dir, workdir = settings.store_dir, settings.run_dir, settings.data_dir, settings.workdir
        self.store_dir = store_dir
        self.require_signed = settings.require_signed
        self.trusted = provenance.TrustedKeys(store_dir, settings.trusted_builder_keys)
        self.run_dir = run_dir
        self.data_dir = data_dir
        self.workdir = workdir
        self.workers: dict[int, WorkerProc] = {}
        self.spare: WorkerProc | None = None
        self.spare_task: asyncio.Task | None = None
        self.next_id = 1
        self.clients: set[Channel] = set()
        self.logs: dict[str, collections.deque] = {}
        # Prepared here, in the parent: the preexec hook only makes system calls.
        self.worker_limits = settings.workers
        self.services = services.Broker(data_dir, settings.services)
        # Modules' own directories (their databases): the one place a worker may write.
        self.modules_dir = os.path.join(os.path.abspath(data_dir), MODULES_DIR)
        os.makedirs(self.modules_dir, exist_ok=True)
        os.chmod(self.modules_dir, 0o711)
        self.sandbox = sandbox.choose(workdir, self.worker_limits.network, self.worker_limits.unsafe,
                                      hidden=[store_dir, run_dir, data_dir], writable=[self.modules_dir],
                                      force=self.worker_limits.sandbox)
        self.worker_limits.use_bwrap(self.sandbox.kind == "bubblewrap")
        # uids of live workers (root server, bubblewrap): never two alike.
        self.uids_in_use: set[int] = set()
        self.next_uid = 0

    # ---- worker processes -------------------------------------------

    def _allocate_uid(self) -> int | None:
        """A uid no live worker has (root server in bubblewrap), else None."""
        if not (self.sandbox.root and self.sandbox.kind == "bubblewrap"):
            return None
        lim = self.worker_limits
        for _ in range(lim.uid_count):
            uid = lim.uid_first + self.next_uid
            self.next_uid = (self.next_uid + 1) % lim.uid_count
            if uid not in self.uids_in_use:
                self.uids_in_use.add(uid)
                return uid
        raise RuntimeFailure("no_uid", "every worker uid of CWEB_WORKER_UIDS is in use")

    async def spawn(self) -> WorkerProc:
        if self.sandbox.kind == "refused":
            raise RuntimeFailure("no_sandbox", "no worker sandbox works here (bubblewrap or Landlock); "
                             "set CWEB_UNSAFE_WORKERS=1 to run modules unconfined")
        uid = self._allocate_uid()
        parent, child = socket.socketpair()
        # The worker's channel to the services broker (cache, signing).
        svc, svc_child = services.Broker.channel()
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONPATH": PROJECT_ROOT,
            "PYTHONDONTWRITEBYTECODE": "1",
            "CWEB_CONTROL_FD": str(child.fileno()),
            "CWEB_SERVICES_FD": str(svc_child.fileno()),
            "CWEB_PRELOAD": ":".join(self.sandbox.preload),
            "CWEB_SANDBOX": self.sandbox.kind,
        }
        if uid is not None:
            env["CWEB_WORKER_UID"] = str(uid)
        if self.sandbox.kind == "landlock":
            env["CWEB_LANDLOCK_READ"] = json.dumps(self.sandbox.read_paths)
            env["CWEB_LANDLOCK_WRITE"] = json.dumps(self.sandbox.writable)
            env["CWEB_LANDLOCK_NETWORK"] = "1" if self.sandbox.network else "0"
        fds = [child.fileno(), svc_child.fileno()]
        seccomp_fd = None
        if self.worker_limits.in_bwrap:
            seccomp_fd = self.worker_limits.bwrap_filter()
            fds.append(seccomp_fd)
        # A worker needs the standard library and runtime/ only: without
        # site (-S -s) it skips every .pth file of the installation, which
        # on some machines import whole packages at each interpreter start.
        # Landlock confines from inside the worker, with landlockpy.
        flags = [] if self.sandbox.kind == "landlock" else ["-s", "-S"]
        argv = self.sandbox.command([sys.executable, *flags, "-m", "runtime.worker"], seccomp_fd)
        try:
            proc = await asyncio.create_subprocess_exec(
                *argv,
                pass_fds=fds,
                env=env,
                cwd=self.workdir,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                preexec_fn=self.worker_limits.preexec,
            )
        except BaseException:
            if uid is not None:
                self.uids_in_use.discard(uid)
            raise
        finally:
            child.close()
            svc_child.close()
            if seccomp_fd is not None:
                os.close(seccomp_fd)
        self.services.attach(svc, f"pid {proc.pid}")
        box: list[WorkerProc] = []

        def on_message(msg: dict, fds: list[int]) -> None:
            for fd in fds:  # never asked for: a worker passes nothing to the agent
                os.close(fd)
            box[0].replies.put_nowait(msg)

        def on_close() -> None:
            # The worker closed its control socket or broke the protocol: it
            # cannot be driven any more.
            if box and not box[0].exited.is_set():
                asyncio.create_task(self._kill_unless_exiting(box[0]))

        w = WorkerProc(proc=proc, control=Channel(parent, on_message, on_close), uid=uid)
        box.append(w)
        w.readers = [asyncio.create_task(self._read_output(w, proc.stdout, "stdout")),
                     asyncio.create_task(self._read_output(w, proc.stderr, "stderr"))]
        asyncio.create_task(self._wait_exit(w))
        return w

    async def _kill_unless_exiting(self, w: WorkerProc) -> None:
        # A dying worker closes its control socket first: let it finish
        # dying of its own signal, so that is what gets reported.
        try:
            await asyncio.wait_for(asyncio.shield(w.exited.wait()), limits.OUTPUT_DRAIN_S)
        except TimeoutError:
            w.proc.kill()

    async def _read_output(self, w: WorkerProc, stream: asyncio.StreamReader | None, name: str) -> None:
        assert stream is not None
        while True:
            try:
                line = await stream.readline()
            except ValueError:  # a line past the stream limit: drop what was buffered
                continue
            if not line:
                return
            if not w.hash:
                continue
            self._log(w, name, line.decode("utf-8", "replace").rstrip("\n")[:4096])

    def _log(self, w: WorkerProc, stream: str, line: str) -> None:
        entry = {"ts": time.time(), "stream": stream, "module_hash": w.hash, "line": line}
        self.logs.setdefault(w.hash, collections.deque(maxlen=limits.LOG_RING_LINES)).append(entry)
        self.broadcast(agent_protocol.event("log", **entry))

    async def _last_output(self, w: WorkerProc) -> list[str]:
        """What a worker that just died printed since its load (once its
        readers have drained the pipes)."""
        if w.readers:
            await asyncio.wait(w.readers, timeout=limits.OUTPUT_DRAIN_S)
        return [f"{e['stream']}: {e['line']}" for e in self.logs.get(w.hash, ()) if e["ts"] >= w.loaded_at
                and e["stream"] != "cweb"][-limits.CRASH_OUTPUT_LINES:]

    async def _wait_exit(self, w: WorkerProc) -> None:
        rc = await w.proc.wait()
        reason = _signal_name(rc)
        if w.hash and w.ended_by != "asked":
            # Where the module's author looks (cweb logs): how the worker ended,
            # after what it printed last (its crash report among it).
            reason = _crash_signal(rc, await self._last_output(w))
            number = getattr(signal.Signals, reason, None) if reason.startswith("SIG") else None
            how = f"worker exited: {reason}" + (f" (signal {int(number)})" if number else "")
            self._log(w, "cweb", how + (f", killed by the runtime: {w.ended_by}" if w.ended_by else ""))
        w.exited.set()
        if w.uid is not None:
            # bwrap --die-with-parent: nothing of this worker outlives it.
            self.uids_in_use.discard(w.uid)
        w.control.close()
        await w.replies.put({"op": "exited", "returncode": rc})
        if w is self.spare:
            self.spare = None
        if w.worker_id in self.workers:
            del self.workers[w.worker_id]
            self.broadcast(
                agent_protocol.event(
                    "exited",
                    worker_id=w.worker_id,
                    hash=w.hash,
                    returncode=rc,
                    reason=reason,
                    expected=w.expected_exit,
                )
            )

    def _ensure_spare(self) -> None:
        if self.spare is None and (self.spare_task is None or self.spare_task.done()):
            self.spare_task = asyncio.create_task(self._make_spare())

    async def _make_spare(self) -> None:
        if self.sandbox.kind != "refused":
            self.spare = await self.spawn()

    async def _take_worker(self) -> WorkerProc:
        if self.spare_task is not None and not self.spare_task.done():
            await self.spare_task
        w = self.spare
        self.spare = None
        if w is None or w.exited.is_set():
            w = await self.spawn()
        return w

    async def _command(self, w: WorkerProc, msg: dict, timeout: float, fds: list[int] = ()) -> dict:  # type: ignore[assignment]
        # Replies left over from before (a module may write junk on its
        # control socket) must not answer this command.
        while not w.replies.empty():
            stale = w.replies.get_nowait()
            if stale.get("op") == "exited":
                w.replies.put_nowait(stale)
                break
        w.control.send(msg, fds)
        try:
            return await asyncio.wait_for(w.replies.get(), timeout)
        except TimeoutError as exc:
            w.ended_by = w.ended_by or f"no answer to {msg['op']} within {timeout:g}s"
            w.proc.kill()
            raise RuntimeFailure("worker_timeout", f"worker did not answer {msg['op']} within {timeout:g}s") from exc

    # ---- operations -----------------------------------------------------

    async def op_load(self, req: dict) -> dict:
        module_hash = str(req["hash"])
        if len(module_hash) != 64 or any(c not in "0123456789abcdef" for c in module_hash):
            raise RuntimeFailure("bad_hash", "not a module hash")
        path = os.path.join(self.store_dir, "artifacts", f"{module_hash}.so")
        try:
            artifact = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as exc:
            raise RuntimeFailure("artifact_missing", f"artifact {module_hash[:12]} is not in the store") from exc
        if self.require_signed:
            # Before any worker sees it: the signed statement must name this
            # hash (the worker then checks the bytes against the hash).
            try:
                await asyncio.to_thread(self._check_provenance, module_hash)
            except BaseException:
                os.close(artifact)
                raise
        try:
            w = await self._take_worker()
        except BaseException:
            os.close(artifact)
            raise
        try:
            return await self._load_into(w, module_hash, artifact, req)
        except BaseException:
            self._ensure_spare()
            raise

    def _check_provenance(self, module_hash: str) -> None:
        try:
            with open(os.path.join(self.store_dir, "artifacts", f"{module_hash}.json"), "rb") as f:
                manifest = json.loads(f.read())
        except FileNotFoundError:
            manifest = None
        except ValueError as exc:
            raise provenance.ProvenanceError("artifact_tampered", f"artifact {module_hash[:12]}: its manifest is not JSON") from exc
        provenance.verify(manifest, module_hash, self.trusted)

    async def _load_into(self, w: WorkerProc, module_hash: str, artifact: int, req: dict) -> dict:
        w.worker_id = self.next_id
        self.next_id += 1
        w.hash = module_hash
        w.loaded_at = time.time()
        w.state = "loading"
        self.workers[w.worker_id] = w
        w.expected_exit = True  # until it is running, an exit is a load failure, not a crash
        # The artifact travels as a descriptor: the worker hashes and loads
        # exactly what the agent opened, and never needs the store's path.
        reply = await self._command(
            w,
            {
                "op": "load",
                "hash": module_hash,
                "max_response": int(req.get("max_response", 0)),
            },
            limits.LOAD_TIMEOUT_S,
            [artifact],
        )
        if reply.get("op") == "exited":
            output = await self._last_output(w)
            sig = _crash_signal(reply["returncode"], output)
            raise RuntimeFailure("load_crashed", f"the module crashed while loading ({sig})", signal=sig, output=output)
        if reply.get("op") == "error":
            await self._discard(w)
            raise RuntimeFailure(str(reply.get("error", "load_failed")), str(reply.get("message", "load failed")))
        if reply.get("op") != "loaded" or not isinstance(reply.get("describe"), dict):
            await self._discard(w)
            raise RuntimeFailure("load_failed", "the worker answered the load out of protocol")
        return {"worker_id": w.worker_id, "describe": reply["describe"]}

    async def op_start(self, req: dict) -> dict:
        # The next spare starts once this deploy's worker is connected
        # (op_connect), not during its load, onload or connect: forking the
        # agent stalls its loop for milliseconds, and the new interpreter's
        # start competes for the same cores (a cache-hit deploy took 7 ms
        # longer). A second later at the latest, should no connect come.
        try:
            reply = await self._start(req)
        except BaseException:
            self._ensure_spare()
            raise
        asyncio.get_running_loop().call_later(SPARE_FALLBACK_S, self._ensure_spare)
        return reply

    async def _start(self, req: dict) -> dict:
        w = self._worker(req)
        if w.state != "loading":
            raise RuntimeFailure("bad_state", f"worker {w.worker_id} is {w.state}")
        w.state = "starting"
        msg = {"op": "start"}
        if req.get("name"):
            # Every sandbox binds the modules-data directory (0711: no listing);
            # on a root server the module's own directory (0700) belongs to
            # this worker's uid alone. (A descriptor would not do: SQLite
            # resolves /proc/self/fd/N to a path outside the sandbox.)
            path = self._module_dir(str(req["name"]))
            if w.uid is not None:
                # The module decides how many files its directory holds: the
                # walk runs off the agent's loop, so only this start waits.
                await asyncio.to_thread(_chown_tree, path, w.uid)
            msg["module_dir"] = path
        if req.get("secrets"):
            # Passed through on the worker's own channel, never kept here.
            msg["secrets"] = {str(k): str(v) for k, v in dict(req["secrets"]).items()}
        reply = await self._command(w, msg, limits.ONLOAD_TIMEOUT_S)
        if reply.get("op") == "exited":
            output = await self._last_output(w)
            sig = _crash_signal(reply["returncode"], output)
            raise RuntimeFailure("onload_crashed", f"onload crashed ({sig})", signal=sig, output=output)
        if reply.get("op") != "ready":
            await self._discard(w)
            raise RuntimeFailure(str(reply.get("error", "onload_failed")), str(reply.get("message", "onload failed")))
        w.state = "running"
        w.expected_exit = False
        return {}

    async def op_connect(self, req: dict) -> dict | tuple[dict, list[int]]:
        """Socketpairs to a running worker: one end each to it and to the api."""
        w = self._worker(req)
        count = int(req.get("count", 1))
        if not 1 <= count <= MAX_CONNECT:
            raise RuntimeFailure("bad_count", f"count must be 1..{MAX_CONNECT}")
        if w.state != "running" or w.exited.is_set():
            raise RuntimeFailure("no_such_worker", f"worker {w.worker_id} is not running")
        if w.connections + count > self.worker_limits.open_files // 2:
            raise RuntimeFailure("too_many_connections", f"worker {w.worker_id} has {w.connections} connections")
        ours, theirs = [], []
        for _ in range(count):
            a, b = socket.socketpair()
            ours.append(a.detach())
            theirs.append(b.detach())
        # The channel owns and closes the worker's ends once sent.
        w.control.send({"op": "attach"}, theirs)
        w.connections += count
        # Runs after this answer is written (see op_start).
        self._ensure_spare()
        return {}, ours

    async def op_stop(self, req: dict) -> dict:
        w = self._worker(req)
        w.expected_exit = True
        w.ended_by = "asked"
        w.state = "stopping"
        try:
            await self._command(w, {"op": "stop"}, float(req.get("timeout", limits.STOP_TIMEOUT_S)))
        except RuntimeFailure:
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
        # An unexpected kill is the api replacing a worker that does not return.
        w.ended_by = "asked" if w.expected_exit else "a handler or job did not return in time"
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
        return {
            "sandbox": self.sandbox.kind,
            "workers": [{"worker_id": w.worker_id, "hash": w.hash, "state": w.state, "pid": w.proc.pid}
                        for w in self.workers.values()],
        }

    def _module_dir(self, name: str) -> str:
        """<data_dir>/modules-data/<name>/: the module's own files (its
        database), kept across its versions and never shared with another."""
        if not services.valid_module_name(name):
            raise RuntimeFailure("bad_name", f"module name {name[:40]!r} cannot name a directory")
        path = os.path.join(self.modules_dir, name)
        os.makedirs(path, mode=0o700, exist_ok=True)
        return path

    def _worker(self, req: dict) -> WorkerProc:
        w = self.workers.get(int(req["worker_id"]))
        if w is None:
            raise RuntimeFailure("no_such_worker", f"worker {req['worker_id']} is not running")
        return w

    async def _discard(self, w: WorkerProc) -> None:
        w.expected_exit = True
        w.ended_by = w.ended_by or "asked"
        if not w.exited.is_set():
            w.proc.kill()
            await w.exited.wait()

    # ---- the api connection -----------------------------------------

    def broadcast(self, msg: dict) -> None:
        for client in list(self.clients):
            client.send(msg)

    def attach_client(self, sock: socket.socket, secret: bytes | None, on_close=None) -> None:
        """Serve the api on sock. With a secret, the first line must prove it."""
        state = {"authed": secret is None}
        box: list[Channel] = []

        def on_message(msg: dict, fds: list[int]) -> None:
            ch = box[0]
            if not state["authed"]:
                given = msg.get("secret")
                if msg.get("op") == "hello" and isinstance(given, str) and hmac.compare_digest(given.encode(), secret):
                    state["authed"] = True
                    self.clients.add(ch)
                    ch.send({"id": msg.get("id"), "ok": True})
                else:
                    log.warning("refused a connection to the agent socket: no valid hello")
                    ch.close()
                return
            asyncio.create_task(self._answer(msg, ch))

        def closed() -> None:
            if box:
                self.clients.discard(box[0])
            if on_close is not None:
                on_close()

        ch = Channel(sock, on_message, closed)
        box.append(ch)
        if state["authed"]:
            self.clients.add(ch)

    async def _answer(self, req: dict, ch: Channel) -> None:
        spec = agent_protocol.dispatched(req.get("op"))
        fds: list[int] = []
        try:
            if spec is None:
                raise RuntimeFailure("bad_op", f"unknown op {req.get('op')!r}")
            result = await getattr(self, f"op_{spec.name}")(req)
            if isinstance(result, tuple):
                result, fds = result
            resp = {"id": req.get("id"), "ok": True, **result}
        except RuntimeFailure as exc:
            resp = {**exc.extra, "id": req.get("id"), "ok": False, "error": exc.code, "message": exc.message}
        except Exception as exc:  # noqa: BLE001 - the api must always get an answer
            log.exception("agent op failed")
            resp = {"id": req.get("id"), "ok": False, "error": "agent_error", "message": str(exc)}
        ch.send(resp, fds)

    async def shutdown(self) -> None:
        for w in list(self.workers.values()) + ([self.spare] if self.spare else []):
            w.expected_exit = True
            w.ended_by = "asked"
            if not w.exited.is_set():
                w.proc.terminate()
        for w in list(self.workers.values()):
            try:
                await asyncio.wait_for(w.exited.wait(), 2)
            except TimeoutError:
                w.proc.kill()


def _chown_tree(path: str, uid: int) -> None:
    """Give a module's directory and its files to the worker's uid (never following links)."""
    os.chown(path, uid, uid, follow_symlinks=False)
    for root, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(root, name), uid, uid, follow_symlinks=False)


def _load_secret(run_dir: str, given: str) -> bytes:
    """CWEB_RUNTIME_SECRET, else a fresh one written to <run dir>/agent.secret (0600)."""
    if given:
        return given.encode()
    value = secrets.token_hex(32)
    path = os.path.join(run_dir, SECRET_FILE)
    write_atomic(path, value.encode(), 0o600)
    return value.encode()


def read_secret(socket_path: str, given: str) -> str:
    """The api's side: the secret given (CWEB_RUNTIME_SECRET), else the one next to the agent's socket."""
    if given:
        return given
    with open(os.path.join(os.path.dirname(socket_path), SECRET_FILE)) as f:
        return f.read().strip()


async def serve(settings: AgentSettings, control_fd: int = -1, parent_pid: int = 0) -> None:
    os.makedirs(settings.run_dir, exist_ok=True)
    limits.make_undumpable()
    agent = Agent(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    listener: socket.socket | None = None
    if control_fd >= 0:
        # Embedded: the api is our parent and our only client; if it goes, so do we.
        agent.attach_client(socket.socket(fileno=control_fd), None, on_close=stop.set)
    else:
        secret = _load_secret(settings.run_dir, settings.secret)
        try:
            os.unlink(settings.socket)
        except FileNotFoundError:
            pass
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(settings.socket)
        listener.listen(16)
        listener.setblocking(False)

        def accept() -> None:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            agent.attach_client(conn, secret)

        loop.add_reader(listener.fileno(), accept)
    log.info("worker sandbox: %s%s", agent.sandbox.kind, " (host network)" if agent.sandbox.network else "")
    if agent.sandbox.kind == "none":
        log.warning("no worker sandbox works here: modules run UNCONFINED (CWEB_UNSAFE_WORKERS=1)")
    elif agent.sandbox.kind == "refused":
        log.error("no worker sandbox works here (bubblewrap or Landlock): deploys will be refused "
                  "(set CWEB_UNSAFE_WORKERS=1 to run modules unconfined)")
    agent._ensure_spare()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if parent_pid:
        asyncio.create_task(_watch_parent(parent_pid, stop))
    print("cweb-runtime ready", flush=True)
    await stop.wait()
    if listener is not None:
        loop.remove_reader(listener.fileno())
        listener.close()
    await agent.shutdown()


async def _watch_parent(pid: int, stop: asyncio.Event) -> None:
    while os.getppid() == pid:
        await asyncio.sleep(0.5)
    stop.set()


def check(socket_path: str, secret: str) -> int:
    """`--check`: 0 if the agent at socket_path answers a ping (container health)."""
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(socket_path)
        parser = Lines()
        send_blocking(s, {"id": 0, "op": "hello", "secret": read_secret(socket_path, secret)})
        send_blocking(s, {"id": 1, "op": "ping"})
        while True:
            msgs = recv_blocking(s, parser, accept_fds=False)
            if msgs is None:
                return 1
            for msg, _ in msgs:
                if msg.get("id") == 1:
                    print(json.dumps({"sandbox": msg.get("sandbox"), "workers": len(msg.get("workers", []))}))
                    return 0 if msg.get("ok") else 1
    except (OSError, ValueError):
        return 1


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m runtime", description="cweb runtime agent")
    p.add_argument("--settings", default="", help="all settings as one JSON object (embedded: the api's; no environment is read)")
    p.add_argument("--socket", help="env CWEB_RUNTIME_SOCKET, default /run/cweb/agent.sock")
    p.add_argument("--control-fd", type=int, default=-1, help="inherited socket to the api (embedded)")
    p.add_argument("--store", help="env CWEB_STORE_DIR, default ./data/store")
    p.add_argument("--run-dir", help="env CWEB_RUN_DIR, default /run/cweb")
    p.add_argument("--data-dir", help="env CWEB_DATA_DIR, default ./data")
    p.add_argument("--workdir", help="env CWEB_WORKDIR, default the current directory")
    p.add_argument("--parent-pid", type=int, default=0)
    p.add_argument("--check", action="store_true", help="ping the agent at --socket and exit")
    args = p.parse_args(argv)
    settings = AgentSettings.from_json(args.settings) if args.settings else AgentSettings.from_env()
    for name, attr in (("socket", "socket"), ("store", "store_dir"), ("run_dir", "run_dir"),
                       ("data_dir", "data_dir"), ("workdir", "workdir")):
        if getattr(args, name):
            setattr(settings, attr, getattr(args, name))
    if args.check:
        sys.exit(check(settings.socket, settings.secret))
    handler = logging.StreamHandler()
    if settings.log_json:
        # Embedded, our stderr is the server's log: the same JSON lines as the api's.
        handler.setFormatter(_JsonLines())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(name)s %(levelname)s %(message)s"))
    logging.basicConfig(level=logging.INFO, handlers=[handler])
    asyncio.run(serve(settings, args.control_fd, args.parent_pid))


class _JsonLines(logging.Formatter):
    """The api's JSON log shape (api/logs.py), without importing the api."""

    def format(self, record: logging.LogRecord) -> str:
        out = {
            "ts": round(record.created, 6),
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)
