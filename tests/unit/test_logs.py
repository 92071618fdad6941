"""api/logs.py: the server's plain and JSON-lines log formats."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from api.logs import MODULE_LOGGER, configure_logging, module_fields

HASH = "f91ad9477057f2a2381cd6e521713b70fb071adbaed3222ea89cf79b3f1ef827"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging() replaces the root handlers (pytest's too): put them back."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    module_level = logging.getLogger(MODULE_LOGGER).level
    yield
    for h in list(root.handlers):
        root.removeHandler(h)
    for h in handlers:
        root.addHandler(h)
    root.setLevel(level)
    logging.getLogger(MODULE_LOGGER).setLevel(module_level)


def test_json_lines_name_module_and_hash(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(True, stream=out)
    logging.getLogger("cweb.api").info("module %s active", "hello", extra=module_fields("hello", HASH, routes=2))
    logging.getLogger("cweb.api").warning("no module here")
    first, second = (json.loads(line) for line in out.getvalue().splitlines())
    assert {"level": "INFO", "logger": "cweb.api", "message": "module hello active", "module": "hello", "module_hash": HASH,
            "routes": 2} == {k: first[k] for k in ("level", "logger", "message", "module", "module_hash", "routes")}
    assert first["time"].endswith("Z") and isinstance(first["ts"], float)
    assert "module" not in second and "module_hash" not in second, "unset fields are left out, not the Python source module"


def test_json_lines_carry_exceptions_on_one_line(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(True, stream=out)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        logging.getLogger("cweb.api").exception("failed")
    [line] = out.getvalue().splitlines()
    record = json.loads(line)
    assert "failed" == record["message"] and "ValueError: bad" in record["exception"]


def test_module_output_is_in_the_json_stream_only(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(False, stream=out)
    logging.getLogger(MODULE_LOGGER).debug("printf line", extra=module_fields("hello", HASH, stream="stdout"))
    assert "" == out.getvalue()
    configure_logging(True, stream=out)
    logging.getLogger(MODULE_LOGGER).debug("printf line", extra=module_fields("hello", HASH, stream="stdout"))
    record = json.loads(out.getvalue())
    assert ("printf line", "hello", "stdout", "DEBUG") == (record["message"], record["module"], record["stream"], record["level"])


def test_plain_lines_prefix_module_and_short_hash(restore_logging: None) -> None:
    out = io.StringIO()
    configure_logging(False, stream=out)
    logging.getLogger("cweb.api").info("active", extra=module_fields("hello", HASH))
    logging.getLogger("cweb.api").info("build compiled", extra=module_fields(None, HASH))
    logging.getLogger("cweb.api").info("ready")
    lines = out.getvalue().splitlines()
    assert lines[0].endswith(f"cweb.api INFO [hello {HASH[:12]}] active")
    assert lines[1].endswith(f"cweb.api INFO [{HASH[:12]}] build compiled")
    assert lines[2].endswith("cweb.api INFO ready")
