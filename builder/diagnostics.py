"""Turn gcc's text output into structured diagnostics."""

from __future__ import annotations

import re

_DIAG = re.compile(
    r"^(?P<file>[^:\n]+):(?P<line>\d+):(?:(?P<column>\d+):)?\s*"
    r"(?P<severity>fatal error|error|warning|note):\s*(?P<message>.*)$"
)
# Linker complaints: "module.c:(.text+0x1a): undefined reference to `foo'";
# with debug information (the builder compiles with -g) the linker names the
# line: "module.c:12: undefined reference to `foo'" (or "module.c:12:(.text+0x1a): ...").
_LINK = re.compile(r"^(?P<file>[^:\n]+):(?:(?P<line>\d+):)?(?:\(\.[^)]*\):)?\s*(?P<message>(?:undefined reference|multiple definition|relocation|first defined|more undefined).*)$")
_LINK_SECTION = re.compile(r"^(?P<file>[^:\n]+):\(\.[^)]*\):\s*(?P<message>.*)$")
# What gcc prints under a diagnostic: the source line, the caret and its
# fix-it hint ("    3 |   x = 1", "      |        ^", "      |        ;").
_EXCERPT = re.compile(r"^ +(?:\d+ )?\|")
_CONTEXT = re.compile(r"in function [`'‘]|^\S+\.o:\s*$")
_LD = re.compile(r"^(?:/\S*/)?(?:collect2|ld)(?::| ):?\s*(?:error:\s*)?(?P<message>.*)$")


def parse(output: str) -> list[dict]:
    """Diagnostics in the order gcc printed them; context lines are skipped.

    The source excerpt gcc prints under a diagnostic (the line, the caret,
    fix-it hints) travels with it as "excerpt", a list of lines."""
    out: list[dict] = []
    for raw in output.splitlines():
        line = raw.rstrip()
        if out and _EXCERPT.match(line):
            out[-1].setdefault("excerpt", []).append(line)
            continue
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
        m = _LINK.match(line) or _LINK_SECTION.match(line)
        if m:
            number = m.groupdict().get("line")
            out.append({"file": m["file"], "line": int(number) if number else 0, "column": 0, "severity": "error",
                        "message": m["message"]})
            continue
        m = _LD.match(line)
        # "ld: module.o: in function `f':" only says where the next error is.
        if m and "returned 1 exit status" not in line and not _CONTEXT.search(m["message"]):
            out.append({"file": "", "line": 0, "column": 0, "severity": "error", "message": m["message"]})
    return out
