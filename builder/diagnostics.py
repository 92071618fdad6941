"""Turn gcc's text output into structured diagnostics."""

from __future__ import annotations

import re

_DIAG = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<column>\d+):)?\s*"
    r"(?P<severity>fatal error|error|warning|note):\s*(?P<message>.*)$"
)
# Linker complaints: "module.c:(.text+0x1a): undefined reference to `foo'"
_LINK = re.compile(r"^(?P<file>[^:\n]+):\(\.[^)]*\):\s*(?P<message>.*)$")
_CONTEXT = re.compile(r"in function [`'‘]|^\S+\.o:\s*$")
_LD = re.compile(r"^(?:/\S*/)?(?:collect2|ld)(?::| ):?\s*(?:error:\s*)?(?P<message>.*)$")


def parse(output: str) -> list[dict]:
    """Diagnostics in the order gcc printed them; context lines are skipped."""
    out: list[dict] = []
    for raw in output.splitlines():
        line = raw.rstrip()
        m = _DIAG.match(line)
        if m:
            severity = m["severity"]
            out.append(
                {
                    "file": m["file"],
                    "line": int(m["line"]),
                    "column": int(m["column"]) if m["column"] else 0,
                    "severity": "error" if severity == "fatal error" else severity,
                    "message": m["message"],
                }
            )
            continue
        m = _LINK.match(line)
        if m:
            out.append({"file": m["file"], "line": 0, "column": 0, "severity": "error", "message": m["message"]})
            continue
        m = _LD.match(line)
        # "ld: module.o: in function `f':" only says where the next error is.
        if m and "returned 1 exit status" not in line and not _CONTEXT.search(m["message"]):
            out.append({"file": "", "line": 0, "column": 0, "severity": "error", "message": m["message"]})
    return out
