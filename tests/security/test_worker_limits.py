"""runtime.limits on its own: what a worker process gets between fork and exec."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest

from runtime import limits

PROBE = r"""
import errno, os, resource, threading
res = {}
try:
    pid = os.fork()
    if pid == 0:
        os._exit(0)
    os.waitpid(pid, 0)
    res["fork"] = "allowed"
except OSError as e:
    res["fork"] = errno.errorcode[e.errno]
t = threading.Thread(target=lambda: res.__setitem__("thread", "ok"))
t.start(); t.join()
for name, target in (("kill_parent", os.getppid()), ("kill_all", -1), ("kill_self", os.getpid()), ("kill_group", 0)):
    try:
        os.kill(target, 0); res[name] = "allowed"
    except OSError as e:
        res[name] = errno.errorcode[e.errno]
try:
    resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY,) * 2); res["raise_as"] = "allowed"
except (OSError, ValueError):
    res["raise_as"] = "refused"
try:
    resource.prlimit(os.getppid(), resource.RLIMIT_NOFILE); res["prlimit_parent"] = "allowed"
except OSError as e:
    res["prlimit_parent"] = errno.errorcode[e.errno]
res["as"] = resource.getrlimit(resource.RLIMIT_AS)[0]
res["core"] = resource.getrlimit(resource.RLIMIT_CORE)[0]
res["nofile"] = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
res["fsize"] = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
res["cpu"] = resource.getrlimit(resource.RLIMIT_CPU)[0]
status = dict(line.split(":", 1) for line in open("/proc/self/status"))
res["no_new_privs"] = status["NoNewPrivs"].strip()
res["seccomp"] = status["Seccomp"].strip()
res["cap_eff"] = int(status["CapEff"].strip(), 16)
res["own_session"] = os.getsid(0) == os.getpid()
print(repr(res))
"""


def run_probe(wl: limits.WorkerLimits) -> dict:
    out = subprocess.run([sys.executable, "-c", PROBE], preexec_fn=wl.preexec, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return ast.literal_eval(out.stdout.strip())


def test_from_env_reads_the_knobs() -> None:
    wl = limits.WorkerLimits.from_env({"CWEB_WORKER_MEMORY_BYTES": str(512 << 20), "CWEB_WORKER_ALLOW_FORK": "1", "CWEB_WORKER_CPU_SECONDS": "60"})
    assert wl.memory_bytes == 512 << 20 and wl.cpu_seconds == 60 and wl.allow_fork and wl.seccomp
    default = limits.WorkerLimits.from_env({})
    assert default.memory_bytes == limits.WORKER_MEMORY_BYTES and not default.allow_fork and not default.network
    opted = limits.WorkerLimits.from_env({"CWEB_WORKER_NETWORK": "1", "CWEB_WORKER_UIDS": "70000-70009"})
    assert opted.network and (opted.uid_first, opted.uid_count) == (70000, 10)
    with pytest.raises(ValueError):
        limits.WorkerLimits.from_env({"CWEB_WORKER_UIDS": "0-5"})


def test_worker_is_contained() -> None:
    res = run_probe(limits.WorkerLimits.from_env({}))
    assert res["fork"] == "EAGAIN"
    assert res["thread"] == "ok"
    assert res["kill_parent"] == "EPERM" and res["kill_all"] == "EPERM"
    assert res["kill_self"] == "allowed" and res["kill_group"] == "EPERM"
    assert res["raise_as"] == "refused"
    assert res["prlimit_parent"] == "EPERM"
    assert res["as"] == limits.WORKER_MEMORY_BYTES and res["core"] == 0
    assert res["nofile"] <= limits.WORKER_OPEN_FILES and res["fsize"] == limits.WORKER_FILE_BYTES
    assert res["cpu"] == limits.WORKER_CPU_SECONDS
    assert res["no_new_privs"] == "1" and res["seccomp"] == "2" and res["own_session"]
    kept = sum(1 << c for c in limits.KEPT_CAPABILITIES)
    assert res["cap_eff"] & ~kept == 0


def test_allow_fork_lets_processes_start_and_keeps_the_rest_of_the_filter() -> None:
    res = run_probe(limits.WorkerLimits.from_env({"CWEB_WORKER_ALLOW_FORK": "1", "CWEB_WORKER_MEMORY_BYTES": str(1 << 30)}))
    assert res["fork"] == "allowed" and res["seccomp"] == "2" and res["no_new_privs"] == "1"
    assert res["kill_parent"] == "EPERM" and res["prlimit_parent"] == "EPERM"
    assert res["as"] == 1 << 30


def test_filter_program_is_built_by_libseccomp() -> None:
    for allow_fork in (False, True):
        for own_pid_only in (False, True):
            prog = limits.seccomp_program(allow_fork, own_pid_only)
            assert len(prog) % 8 == 0 and 8 < len(prog) // 8 < 4096
    # The pid placeholder is there to patch only when kill is limited to the worker itself.
    placeholder = limits._PID_PLACEHOLDER.to_bytes(4, "little")
    assert placeholder in limits.seccomp_program(False, True)
    assert placeholder not in limits.seccomp_program(False, False)
