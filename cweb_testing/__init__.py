"""Test your cweb modules with real servers: a pytest plugin (fixtures
`cweb_server` and `cweb`) and testcontainers modules (`CwebContainer`,
`CwebComposeStack`). See docs/TESTING.md.

The container classes need `testcontainers` (pip install 'cweb[testing]')
and are imported on first use, so the plugin works without Docker.
"""

from __future__ import annotations

from typing import Any

from cweb_testing.client import CwebClient
from cweb_testing.errors import CwebTestingError, DeployError, JobTimeout, LogTimeout, RequestError, ServerStartError
from cweb_testing.server import CwebServer

__all__ = [
    "CwebClient",
    "CwebComposeStack",
    "CwebContainer",
    "CwebServer",
    "CwebTestingError",
    "DeployError",
    "JobTimeout",
    "LogTimeout",
    "RequestError",
    "ServerStartError",
]


def __getattr__(name: str) -> Any:
    if name in ("CwebContainer", "CwebComposeStack"):
        from cweb_testing import containers

        return getattr(containers, name)
    raise AttributeError(f"module 'cweb_testing' has no attribute {name!r}")
