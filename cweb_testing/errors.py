"""Errors of cweb_testing, raised into the user's test so that pytest shows
what the server said, not a status code.

    CwebTestingError           anything this package raises on purpose
    ├── ServerStartError       the server (process, container or stack) did not become healthy
    ├── DeployError            POST /mgnt refused the module: status, code, diagnostics
    ├── RequestError           a helper's control-plane call answered an error (jobs, logs, ...)
    └── JobTimeout             wait_job() ran out of time; the job's last state is in the message
"""

from __future__ import annotations

from typing import Any


class CwebTestingError(Exception):
    pass


class ServerStartError(CwebTestingError):
    pass


class RequestError(CwebTestingError):
    """A control-plane call of a helper answered a JSON error."""

    def __init__(self, what: str, status: int, body: Any) -> None:
        self.status = status
        self.body = body
        self.code = body.get("error") if isinstance(body, dict) else None
        message = body.get("message") if isinstance(body, dict) else str(body)[:2000]
        super().__init__(f"{what}: {status} {self.code or ''} {message}".replace("  ", " "))


class DeployError(CwebTestingError):
    """The server refused a module. str() is the whole story, compiler style:

        cweb refused broken.c: 422 compile_failed: ...
        broken.c:3:13: error: expected expression before ';' token
            3 |     int x = ;
              |             ^
    """

    def __init__(self, filename: str, status: int, body: Any, source: str | None = None) -> None:
        self.filename = filename
        self.status = status
        self.body = body if isinstance(body, dict) else {"message": str(body)}
        self.code = self.body.get("error", "")
        self.message = self.body.get("message", "")
        self.diagnostics: list[dict] = list(self.body.get("diagnostics") or [])
        super().__init__(render_refusal(filename, status, self.body, source))


def render_refusal(filename: str, status: int, body: dict, source: str | None) -> str:
    """A refused deploy as text a person reads in a test report."""
    code, message = body.get("error"), body.get("message")
    lines = [f"cweb refused {filename}: {status}{f' {code}' if code else ''}{f': {message}' if message else ''}"]
    source_lines = source.splitlines() if source else []
    for d in body.get("diagnostics") or []:
        where = ":".join(str(d[k]) for k in ("file", "line", "column") if d.get(k) not in (None, ""))
        lines.append(f"{where}: {d.get('severity', 'error')}: {d.get('message', '')}")
        line_no, column = d.get("line"), d.get("column")
        # The offending line with a caret, as gcc prints it, when the source is ours.
        if isinstance(line_no, int) and 0 < line_no <= len(source_lines):
            text = source_lines[line_no - 1]
            lines.append(f"{line_no:5d} | {text}")
            if isinstance(column, int) and column > 0:
                lines.append(f"{'':5s} | {' ' * (column - 1)}^")
    if not body.get("diagnostics") and body.get("log"):
        lines.append(str(body["log"])[-4000:])
    return "\n".join(lines)


class JobTimeout(CwebTestingError):
    def __init__(self, job_uuid: str, timeout: float, last: dict | None) -> None:
        self.job_uuid = job_uuid
        self.last = last
        state = last.get("state") if last else "unknown"
        super().__init__(f"job {job_uuid} did not finish within {timeout:g} s (last state: {state}; {last})")


class LogTimeout(CwebTestingError):
    def __init__(self, module: str, wanted: str, timeout: float, text: str) -> None:
        self.module = module
        self.text = text
        tail = "\n".join(text.splitlines()[-20:]) or "(nothing)"
        super().__init__(f"module {module} printed no line with {wanted!r} within {timeout:g} s; its last lines:\n{tail}")
