"""Reading numbers from the environment, for every component's from_env().

Here because runtime/ is the one package a worker's sandbox can import (only
runtime/ is bound into it, runtime/sandbox.py), so runtime/limits.py,
api/settings.py and builder/service.py share one parser instead of three.
An unset or empty variable means the default; anything else must parse, or
startup fails naming the variable.
"""

from __future__ import annotations

from collections.abc import Mapping


def env_int(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not an integer") from None


def env_float(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None
