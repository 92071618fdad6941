"""builder.diagnostics.parse on what the real gcc prints.

Each test writes a small C file, runs gcc on it (LANG=C, no colour, as the
builder does) and parses the combined output.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from builder.diagnostics import parse

GCC = shutil.which("gcc")
pytestmark = pytest.mark.skipif(GCC is None, reason="gcc is not installed")


def gcc(tmp_path: Path, name: str, source: str, *args: str) -> tuple[int, str]:
    """Run gcc in tmp_path on `name` holding `source`; returns (rc, stdout+stderr)."""
    (tmp_path / name).write_text(source)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C", "LC_ALL": "C"}
    run = subprocess.run(
        [GCC or "gcc", "-std=gnu11", "-Wall", "-fdiagnostics-color=never", *args, name],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    return run.returncode, run.stdout + run.stderr


def syntax(tmp_path: Path, name: str, source: str) -> tuple[int, list[dict]]:
    rc, out = gcc(tmp_path, name, source, "-fsyntax-only")
    return rc, parse(out)


def test_error_has_file_line_column_and_message(tmp_path: Path) -> None:
    """A missing ';' is one error at the token after it, with gcc's message."""
    src = "int f(void)\n{\n    return 0\n}\n"
    rc, diags = syntax(tmp_path, "err.c", src)
    assert 1 == rc
    assert [{"file": "err.c", "line": 3, "column": 13, "severity": "error", "message": "expected ';' before '}' token",
             "excerpt": ["    3 |     return 0", "      |             ^", "      |             ;", "    4 | }", "      | ~"]}] == diags


def test_warning_is_a_warning(tmp_path: Path) -> None:
    """An unused variable under -Wall is a warning with its position; gcc still succeeds."""
    src = "int f(void)\n{\n    int unused_thing;\n    return 0;\n}\n"
    rc, diags = syntax(tmp_path, "warn.c", src)
    assert 0 == rc
    assert [
        {
            "file": "warn.c",
            "line": 3,
            "column": 9,
            "severity": "warning",
            "message": "unused variable 'unused_thing' [-Wunused-variable]",
            "excerpt": ["    3 |     int unused_thing;", "      |         ^~~~~~~~~~~~"],
        }
    ] == diags


def test_fatal_missing_include_is_an_error(tmp_path: Path) -> None:
    """'fatal error' (a missing header) is reported with severity 'error'."""
    src = "#include <stdio.h>\n#include \"no_such_header.h\"\n"
    rc, diags = syntax(tmp_path, "fatal.c", src)
    assert 1 == rc
    assert [
        {"file": "fatal.c", "line": 2, "column": 10, "severity": "error", "message": "no_such_header.h: No such file or directory",
         "excerpt": ['    2 | #include "no_such_header.h"', "      |          ^~~~~~~~~~~~~~~~~~"]}
    ] == diags


def test_note_follows_its_warning(tmp_path: Path) -> None:
    """A note keeps its own position and comes after the diagnostic it explains."""
    src = "void take(int *p);\nvoid f(void)\n{\n    char c = 0;\n    take(&c);\n}\n"
    rc, diags = syntax(tmp_path, "note.c", src)
    assert 0 == rc
    assert [("warning", 5, 10), ("note", 1, 16)] == [(d["severity"], d["line"], d["column"]) for d in diags]
    assert ["note.c", "note.c"] == [d["file"] for d in diags]
    assert diags[0]["message"].startswith("passing argument 1 of 'take' from incompatible pointer type")
    assert "expected 'int *' but argument is of type 'char *'" == diags[1]["message"]


def test_diagnostics_keep_gcc_order_and_skip_context(tmp_path: Path) -> None:
    """Source excerpts, carets and 'In function' lines are not diagnostics."""
    src = "int f(void)\n{\n    int a;\n    return 0\n}\n"
    rc, out = gcc(tmp_path, "order.c", src, "-fsyntax-only")
    assert "In function 'f'" in out and "|" in out
    assert [("error", 4), ("warning", 3)] == [(d["severity"], d["line"]) for d in parse(out)]


def test_diagnostic_without_column(tmp_path: Path) -> None:
    """With -fno-show-column the column is reported as 0."""
    rc, out = gcc(tmp_path, "nocol.c", "int f(void) { return x; }\n", "-fsyntax-only", "-fno-show-column")
    assert 1 == rc
    first = parse(out)[0]
    assert ("nocol.c", 1, 0, "error") == (first["file"], first["line"], first["column"], first["severity"])
    assert first["message"].startswith("'x' undeclared")


def test_linker_undefined_reference_is_the_only_error(tmp_path: Path) -> None:
    """A link failure yields one error: the undefined reference, attributed to the source file.

    ld's context line ('/usr/bin/ld: /tmp/ccXXXX.o: in function ...') and
    collect2's summary are not diagnostics of their own.
    """
    src = "void missing_fn(void);\nint main(void)\n{\n    missing_fn();\n    return 0;\n}\n"
    rc, out = gcc(tmp_path, "link.c", src, "-o", "link")
    assert 1 == rc
    assert "undefined reference to `missing_fn'" in out
    assert [{"file": "link.c", "line": 0, "column": 0, "severity": "error", "message": "undefined reference to `missing_fn'"}] == parse(out)


def test_linker_error_names_the_line_with_debug_information(tmp_path: Path) -> None:
    """Compiled with -g (as the builder does), ld names the line of the call."""
    src = "void missing_fn(void);\nint main(void)\n{\n    missing_fn();\n    return 0;\n}\n"
    rc, out = gcc(tmp_path, "link.c", src, "-g", "-o", "link")
    assert 1 == rc
    diags = parse(out.replace(str(tmp_path) + "/", ""))
    assert [{"file": "link.c", "line": 4, "column": 0, "severity": "error", "message": "undefined reference to `missing_fn'"}] == diags


def test_collect2_summary_alone_is_skipped() -> None:
    """'collect2: error: ld returned 1 exit status' adds nothing to the list."""
    assert [] == parse("collect2: error: ld returned 1 exit status\n")


def test_empty_output_has_no_diagnostics() -> None:
    """A clean compile parses to an empty list."""
    assert [] == parse("")
