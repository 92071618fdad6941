"""Reading numbers and secrets from the environment, for every component's from_env().

Here because runtime/ is the one package a worker's sandbox can import (only
runtime/ is bound into it, runtime/sandbox.py), so runtime/limits.py,
api/settings.py and builder/service.py share one parser instead of three.
An unset or empty variable means the default; anything else must parse, or
startup fails naming the variable.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

T = TypeVar("T")


def _number(env: Mapping[str, str], name: str, default: T, kind: Callable[[str], T], what: str) -> T:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return kind(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not {what}") from None


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    return _number(env, name, default, int, "an integer")


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    return _number(env, name, default, float, "a number")


def env_secret(env: Mapping[str, str], name: str) -> str:
    """NAME, or the contents of the file NAME_FILE names (Docker and
    Kubernetes secrets are files: the value never sits in the environment)."""
    path = env.get(f"{name}_FILE", "")
    if not path:
        return env.get(name, "")
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip()
    except OSError as exc:
        raise ValueError(f"{name}_FILE={path!r} cannot be read: {exc.strerror}") from None
