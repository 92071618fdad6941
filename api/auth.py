"""Who may deploy: API keys on the control plane's mutating endpoints."""

from __future__ import annotations

from typing import Callable

from api.settings import Settings


def make_guard(settings: Settings) -> Callable[[dict], tuple[int, bytes] | None] | None:
    """A check run on every control-plane request: None to let it through,
    or (status, JSON body) to refuse it. None when no key is configured."""
    return None
