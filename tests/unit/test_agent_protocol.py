"""The agent's JSON-line protocol is one table (runtime/agent_protocol.py):
the agent serves exactly its operations, and every request the api makes
names an operation and fields that are in it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from runtime import agent_protocol
from runtime.agent import Agent

ROOT = Path(__file__).resolve().parents[2]


def test_the_agent_serves_every_dispatched_op_and_no_other() -> None:
    served = {name.removeprefix("op_") for name in dir(Agent) if name.startswith("op_")}
    assert served == {name for name, op in agent_protocol.OPS.items() if not op.handshake}


def _agent_calls() -> list[tuple[str, int, str, set[str]]]:
    """(file, line, op, field names) of every `<x>.call[_fds]("op", ...)` on
    the agent in api/ and in its client (runtime/client.py)."""
    found = []
    for path in [*(ROOT / "api").rglob("*.py"), ROOT / "runtime" / "client.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("call", "call_fds")):
                continue
            if not (node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                continue
            target = ast.unparse(node.func.value)
            if not (target.endswith("agent") or target == "self"):
                continue
            fields = {k.arg for k in node.keywords if k.arg and k.arg != "timeout"}
            found.append((str(path.relative_to(ROOT)), node.lineno, node.args[0].value, fields))
    return found


def test_every_request_of_the_api_is_in_the_table() -> None:
    calls = _agent_calls()
    assert {"load", "start", "stop", "kill", "logs", "ping", "hello", "connect"} <= {op for _, _, op, _ in calls}
    for where, line, op, fields in calls:
        assert op in agent_protocol.OPS, f"{where}:{line} asks the agent for {op!r}"
        assert fields <= agent_protocol.OPS[op].fields, f"{where}:{line} sends {fields - agent_protocol.OPS[op].fields}"


def test_request_and_event_refuse_what_the_table_lacks() -> None:
    assert {"id": 4, "op": "kill", "worker_id": 7, "expected": True} == agent_protocol.request(4, "kill", {"worker_id": 7, "expected": True})
    with pytest.raises(ValueError, match="unknown agent op"):
        agent_protocol.request(1, "reboot", {})
    with pytest.raises(ValueError, match="no field wid"):
        agent_protocol.request(1, "kill", {"wid": 7})
    assert agent_protocol.dispatched("hello") is None and agent_protocol.dispatched(["load"]) is None
    assert "load" == agent_protocol.dispatched("load").name  # type: ignore[union-attr]
    with pytest.raises(ValueError):
        agent_protocol.event("exited", worker_id=7)
