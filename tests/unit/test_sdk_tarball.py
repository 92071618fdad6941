"""The SDK users download holds what they include and nothing of the glue.

The glue's own headers (the worker wire, its frame encoders, the glue's
private interface) are compiled into every module but are no interface a
module may rely on; a module built against the tarball alone must compile.
"""

from __future__ import annotations

import io
import os
import re
import subprocess
import tarfile
from pathlib import Path

from builder import compile
from builder.local import sdk_tarball


def _shipped() -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(sdk_tarball())) as tar:
        return {m.name: tar.extractfile(m).read() for m in tar.getmembers() if m.isfile()}  # type: ignore[union-attr]


def test_the_tarball_holds_every_public_header_and_no_glue_header() -> None:
    names = {n.removeprefix("cweb-sdk/") for n in _shipped()}
    headers = {n for n in os.listdir(compile.SDK_DIR) if n.endswith(".h")}
    assert compile.GLUE_HEADERS <= headers, "a glue header was renamed: update compile.GLUE_HEADERS"
    assert headers - compile.GLUE_HEADERS == names
    assert "cweb.h" in names


def test_no_shipped_header_includes_a_glue_header() -> None:
    for name, text in _shipped().items():
        included = set(re.findall(rb'#\s*include\s*[<"]([^>"]+)[>"]', text))
        assert not {h.encode() for h in compile.GLUE_HEADERS} & included, name


def test_a_module_including_every_shipped_header_compiles_against_the_tarball_alone(tmp_path: Path) -> None:
    with tarfile.open(fileobj=io.BytesIO(sdk_tarball())) as tar:
        tar.extractall(tmp_path, filter="data")
    include = tmp_path / "cweb-sdk"
    source = tmp_path / "module.c"
    headers = sorted(p.name for p in include.iterdir())
    source.write_text("".join(f"#include <{h}>\n" for h in headers) + "module_t config = { .name = \"x\" };\n")
    run = subprocess.run(["gcc", "-std=gnu11", "-Wall", "-fsyntax-only", "-I", str(include), str(source)],
                         capture_output=True, text=True, timeout=60)
    assert 0 == run.returncode, run.stderr
