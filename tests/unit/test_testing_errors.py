"""cweb_testing's refusal text: what a module author reads when a deploy fails."""

from __future__ import annotations

from cweb_testing.errors import DeployError, render_refusal

SOURCE = "#include <cweb.h>\nint f(void) {\n    return x;\n}\n"
DIAGNOSTIC = {"file": "f.c", "line": 3, "column": 12, "severity": "error", "message": "'x' undeclared"}


def test_diagnostic_with_the_source_line_and_a_caret() -> None:
    text = render_refusal("f.c", 422, {"error": "compile_failed", "message": "compilation failed", "diagnostics": [DIAGNOSTIC]}, SOURCE)
    assert [
        "cweb refused f.c: 422 compile_failed: compilation failed",
        "f.c:3:12: error: 'x' undeclared",
        "    3 |     return x;",
        "      |            ^",
    ] == text.splitlines()


def test_without_source_or_with_a_line_beyond_it_only_the_location() -> None:
    far = {**DIAGNOSTIC, "line": 99}
    body = {"error": "compile_failed", "message": "m", "diagnostics": [DIAGNOSTIC, far]}
    assert ["f.c:3:12: error: 'x' undeclared", "f.c:99:12: error: 'x' undeclared"] == render_refusal("f.c", 422, body, None).splitlines()[1:]
    assert "f.c:99:12: error: 'x' undeclared" == render_refusal("f.c", 422, body, SOURCE).splitlines()[-1]


def test_a_link_error_has_no_line_and_no_column() -> None:
    link = {"file": "f.c", "line": None, "column": None, "severity": "error", "message": "undefined reference to `g'"}
    text = render_refusal("f.c", 422, {"error": "compile_failed", "message": "m", "diagnostics": [link]}, SOURCE)
    assert "f.c: error: undefined reference to `g'" == text.splitlines()[1]


def test_a_refusal_without_diagnostics_shows_the_message_and_the_log() -> None:
    error = DeployError("m.c", 409, {"error": "route_conflict", "message": "GET /x belongs to other", "log": "details"}, SOURCE)
    assert ("route_conflict", "GET /x belongs to other", []) == (error.code, error.message, error.diagnostics)
    assert ["cweb refused m.c: 409 route_conflict: GET /x belongs to other", "details"] == str(error).splitlines()


def test_a_body_that_is_not_json_is_kept_as_the_message() -> None:
    error = DeployError("m.c", 502, "<html>bad gateway</html>")
    assert "cweb refused m.c: 502: <html>bad gateway</html>" == str(error)
