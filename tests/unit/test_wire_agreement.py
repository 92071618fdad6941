"""The C and Python sides of the worker wire agree.

builder/sdk/cweb_wire.h (and cweb.h) are what the glue compiles;
runtime/protocol.py, runtime/services.py and runtime/abi.py are what the api
and the agent speak. Each constant is written once per language; this test
compiles a small C program against the real headers, prints every constant
and compares it with the Python definition, so a change on one side alone
fails here instead of desynchronising a running server.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

from builder import compile
from runtime import abi, protocol, services

SDK = Path(compile.SDK_DIR)


def _wire_h() -> str:
    return (SDK / "cweb_wire.h").read_text()


def _names(pattern: str, text: str) -> list[str]:
    return re.findall(pattern, text, re.MULTILINE)


@pytest.fixture(scope="module")
def c_values(tmp_path_factory: pytest.TempPathFactory) -> dict[str, int]:
    """Every constant of the C side as the compiler sees it."""
    wire = _wire_h()
    names = (
        _names(r"^\s*(CWEB_F_\w+)\s*=", wire)
        + _names(r"^\s*(CWEB_OUTCOME_\w+)\s*=", wire)
        + _names(r"^\s*(CWEB_BROKER_\w+)\s*=", wire)
        + _names(r"^#define (CWEB_BROKER_\w+) ", wire)
        + ["CWEB_METHOD_COUNT", "CWEB_ABI_VERSION", "HTTP_ERR"]
        + _names(r"^\s*(HTTP_(?:GET|POST|PUT|DELETE|OPTIONS|PATCH|HEAD|[A-Z]+))\b,", (SDK / "cweb.h").read_text().split("typedef enum http_method {", 1)[1].split("}", 1)[0])
    )
    tmp = tmp_path_factory.mktemp("wire")
    prints = "".join(f'    printf("%s %lld\\n", "{n}", (long long)({n}));\n' for n in names)
    (tmp / "wire.c").write_text(f'#include <stdio.h>\n#include "cweb.h"\n#include "cweb_wire.h"\nint main(void) {{\n{prints}    return 0;\n}}\n')
    subprocess.run(["gcc", "-std=gnu11", "-Wall", "-Werror", "-I", str(SDK), "-o", str(tmp / "wire"), str(tmp / "wire.c")],
                   check=True, capture_output=True, timeout=60)
    out = subprocess.run([str(tmp / "wire")], check=True, capture_output=True, text=True, timeout=10).stdout
    values = {name: int(value) for name, value in (line.split() for line in out.splitlines())}
    assert len(values) == len(names) and len(names) > 30
    return values


def test_every_frame_type_has_the_same_code_on_both_sides(c_values: dict[str, int]) -> None:
    c_frames = {n.removeprefix("CWEB_"): v for n, v in c_values.items() if n.startswith("CWEB_F_")}
    py_frames = {n: v for n, v in vars(protocol).items() if re.fullmatch(r"F_[A-Z_]+", n)}
    assert c_frames == py_frames


def test_job_outcomes_agree(c_values: dict[str, int]) -> None:
    c_outcomes = {n.removeprefix("CWEB_OUTCOME_"): v for n, v in c_values.items() if n.startswith("CWEB_OUTCOME_")}
    assert c_outcomes == {o.name: o.value for o in protocol.JobOutcome}


def test_the_method_byte_is_http_method_t(c_values: dict[str, int]) -> None:
    c_methods = {n.removeprefix("HTTP_"): v for n, v in c_values.items() if n.startswith("HTTP_") and n != "HTTP_ERR"}
    assert c_methods == protocol.METHOD_CODES
    assert c_values["CWEB_METHOD_COUNT"] == len(protocol.METHODS)
    assert c_values["HTTP_ERR"] < 0
    # The glue's names for them (http_methods[], indexed by the enum).
    glue = (SDK / "cweb_glue.c").read_text()
    named = dict(re.findall(r'\[HTTP_([A-Z]+)\] = "([A-Z]+)"', glue))
    assert {m: m for m in protocol.METHODS} == named


def test_the_abi_version_is_the_headers(c_values: dict[str, int]) -> None:
    assert c_values["CWEB_ABI_VERSION"] == abi.ABI_VERSION == compile.sdk_abi_version()


def test_broker_records_agree(c_values: dict[str, int]) -> None:
    assert c_values["CWEB_BROKER_HEADER_BYTES"] == services.HEADER.size
    py = {
        "RECORD_PAYLOAD": services.RECORD_PAYLOAD,
        "GET": services.OP_GET, "SET": services.OP_SET, "DEL": services.OP_DEL,
        "SIGN": services.OP_SIGN, "VERIFY": services.OP_VERIFY, "HELLO": services.OP_HELLO,
        "REPLY": services.REPLY, "FIRST": services.FIRST, "LAST": services.LAST,
        "KEY_MAX": services.KEY_MAX, "TOKEN_MAX": services.TOKEN_MAX, "SIGNATURE_MAX": services.SIGNATURE_MAX,
    }
    c = {n.removeprefix("CWEB_BROKER_"): v for n, v in c_values.items() if n.startswith("CWEB_BROKER_") and n != "CWEB_BROKER_HEADER_BYTES"}
    assert c == py


def test_the_python_side_keeps_no_second_copy() -> None:
    """Each constant has one Python home: no module defines them again."""
    root = Path(__file__).resolve().parents[2]
    sources = {p: p.read_text() for d in ("api", "builder", "runtime") for p in (root / d).rglob("*.py")}
    copies = {
        r"^\s*F_HTTP\s*=": "runtime/protocol.py",
        r'^\s*_?METHODS\s*=\s*[({]\s*"GET"': "runtime/protocol.py",
        r"^\s*ABI_VERSION\s*=": "runtime/abi.py",
        r"^\s*_?OUTCOME_\w+\s*[,=]": None,
        r"^\s*RECORD_PAYLOAD\s*=": "runtime/services.py",
    }
    for pattern, home in copies.items():
        where = sorted(str(p.relative_to(root)) for p, text in sources.items() if re.search(pattern, text, re.MULTILINE))
        assert where == ([home] if home else []), pattern
