"""Server log format: plain text for a terminal, or JSON lines for machines.

    configure_logging(json_lines=False)   "2026-01-01 12:00:00,000 cweb.api INFO [hello f91ad9477057] message"
    configure_logging(json_lines=True)    {"ts": ..., "time": "...Z", "level": "INFO", "logger": "cweb.api",
                                           "message": "...", "module": "hello", "module_hash": "f91ad947..."}

Records name their module through `extra`, e.g.
`log.info("module activated", extra=module_fields(name, module_hash))`;
the JSON formatter copies every such extra attribute into the line, so a
log shipper can filter by module or by the exact artifact hash. (The name
travels as `cweb_module`: LogRecord already has a `module` attribute, the
Python source file; the JSON line calls it `module` again.)

What modules print reaches the server log through the `cweb.module` logger
at DEBUG, one record per line with `module`, `module_hash` and `stream`.
Plain mode leaves it below the INFO threshold (read it with
`cweb logs NAME -f` instead); JSON mode lets it through, so one stream
holds the server's and the modules' output.
"""

from __future__ import annotations

import datetime
import json
import logging
import sys
from typing import Any, TextIO

MODULE_LOGGER = "cweb.module"
# The record attribute holding a cweb module's name (`module` is taken by logging).
MODULE_ATTR = "cweb_module"
PLAIN_FORMAT = "%(asctime)s %(name)s %(levelname)s %(context)s%(message)s"

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime", "context", "taskName"}


def module_fields(name: str | None, module_hash: str | None, **more: Any) -> dict[str, Any]:
    """The `extra` that names a module version on a log record."""
    return {MODULE_ATTR: name, "module_hash": module_hash, **more}


class JsonLinesFormatter(logging.Formatter):
    """One JSON object per record, on one line."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": round(record.created, 6),
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_") and value is not None:
                out["module" if key == MODULE_ATTR else key] = value if isinstance(value, (str, int, float, bool, list, dict)) else str(value)
        if record.exc_info:
            out["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        return json.dumps(out, ensure_ascii=False, default=str)


class PlainFormatter(logging.Formatter):
    """The classic line, with `[module hash12] ` before the message when a record names one."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        name = getattr(record, MODULE_ATTR, None)
        module_hash = getattr(record, "module_hash", None)
        parts = [p for p in (name if isinstance(name, str) else None, module_hash[:12] if isinstance(module_hash, str) else None) if p]
        record.context = f"[{' '.join(parts)}] " if parts else ""
        return super().format(record)


def configure_logging(json_lines: bool, level: int = logging.INFO, stream: TextIO | None = None) -> logging.Handler:
    """Send every log record to stderr (or stream) in the chosen format.

    Replaces the root logger's handlers, so call it once, before the server
    starts. Returns the installed handler."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonLinesFormatter() if json_lines else PlainFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # Module output: in the JSON stream, not on a developer's terminal.
    logging.getLogger(MODULE_LOGGER).setLevel(logging.DEBUG if json_lines else logging.WARNING)
    return handler
