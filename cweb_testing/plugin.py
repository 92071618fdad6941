"""The pytest plugin (entry point `pytest11: cweb`; disable with `-p no:cweb`).

Fixtures
    cweb_server   session scope: one embedded cweb (python -m api) on a free
                  port with a temporary data dir, stopped at the end.
    cweb          the same server, reset before the test: no modules, no
                  pending or running jobs, no sockets of ours, module data
                  directories deleted. A test marked @pytest.mark.cweb(...)
                  gets a server of its own, configured by the marker.

Options (the session server)
    --cweb-api-key KEY     the key (default: a random one; "" for none)
    --cweb-tls             HTTPS and WSS with a throwaway CA the helpers trust
    --cweb-env NAME=VALUE  a CWEB_* setting, repeatable (limits, timeouts); also the
                           ini option cweb_env (one a line), which the flags extend
    --cweb-workdir DIR     the modules' working directory (default: an empty one)

Marker
    @pytest.mark.cweb(api_key=..., tls=..., env={...}, workdir=...)
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cweb_testing.server import CwebServer

_SERVER_KEY = pytest.StashKey["CwebServer"]()
_ENV_KEY = pytest.StashKey[dict]()
MARKER_DOC = (
    "cweb(api_key=None, tls=False, env=None, workdir=None): the `cweb` fixture of this test is a server of "
    "its own with these settings (api_key None: random, '': none; env: CWEB_* settings)"
)
LOG_LINES_ON_FAILURE = 40


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("cweb", "cweb server under test")
    group.addoption("--cweb-api-key", default=None, metavar="KEY",
                    help="API key of the session's cweb server (default: a random key; empty: no key)")
    group.addoption("--cweb-tls", action="store_true", default=False,
                    help="serve HTTPS/WSS with a throwaway certificate authority the helpers trust")
    group.addoption("--cweb-env", action="append", default=[], metavar="NAME=VALUE",
                    help="a CWEB_* setting for the session's server (limits, timeouts), repeatable")
    group.addoption("--cweb-workdir", default=None, metavar="DIR",
                    help="the modules' working directory (default: an empty temporary one)")
    parser.addini("cweb_env", type="linelist", default=[],
                  help="CWEB_NAME=VALUE settings for the session's cweb server, one a line (--cweb-env adds to them)")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", MARKER_DOC)
    # Checked here so that a typo stops the run at once (usage error), not at the first test.
    config.stash[_ENV_KEY] = parse_env([*config.getini("cweb_env"), *config.getoption("--cweb-env")])


def parse_env(pairs: list[str]) -> dict[str, str]:
    env = {}
    for pair in pairs:
        name, sep, value = pair.partition("=")
        if not sep or not name.startswith("CWEB_"):
            raise pytest.UsageError(f"--cweb-env takes CWEB_NAME=VALUE, not {pair!r}")
        env[name] = value
    return env


def _start(base: Path, **settings: Any) -> CwebServer:
    return CwebServer(base, **settings).start()


@pytest.fixture(scope="session")
def cweb_server(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CwebServer]:
    """One embedded cweb for the whole session, configured by the --cweb-* options."""
    opt = request.config.getoption
    server = _start(
        tmp_path_factory.mktemp("cweb"),
        api_key=opt("--cweb-api-key"), tls=opt("--cweb-tls"), env=request.config.stash[_ENV_KEY],
        workdir=opt("--cweb-workdir"),
    )
    yield server
    server.stop()


@pytest.fixture
def cweb(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CwebServer]:
    """The session's server, reset before this test; or, for a test marked
    @pytest.mark.cweb(...), a server of its own started with the marker's settings."""
    marker = request.node.get_closest_marker("cweb")
    if marker is None:
        server: CwebServer = request.getfixturevalue("cweb_server")
        server.reset()
        request.node.stash[_SERVER_KEY] = server
        yield server
        server.close()
        return
    if marker.args:
        raise pytest.UsageError("@pytest.mark.cweb takes keyword arguments only: api_key, tls, env, workdir")
    unknown = set(marker.kwargs) - {"api_key", "tls", "env", "workdir"}
    if unknown:
        raise pytest.UsageError(f"@pytest.mark.cweb: unknown argument(s) {sorted(unknown)}")
    # The session's settings (cweb_env, --cweb-env, --cweb-workdir) still apply; the marker's win.
    settings = {"workdir": request.config.getoption("--cweb-workdir"), **marker.kwargs,
                "env": {**request.config.stash[_ENV_KEY], **(marker.kwargs.get("env") or {})}}
    server = _start(tmp_path_factory.mktemp("cweb-own"), **settings)
    request.node.stash[_SERVER_KEY] = server
    try:
        yield server
    finally:
        server.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Iterator[None]:
    """A failed test that used `cweb` shows the end of the server's log."""
    outcome = yield
    report = outcome.get_result()
    server = item.stash.get(_SERVER_KEY, None)
    if report.failed and server is not None and call.when in ("setup", "call"):
        report.sections.append((f"cweb server log (last {LOG_LINES_ON_FAILURE} lines)", server.log_tail(LOG_LINES_ON_FAILURE)))
