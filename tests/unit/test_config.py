"""Settings read once in from_env(), with the shared helpers they use."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from api.settings import BODY_TIMEOUT_S, HEADER_TIMEOUT_S, Settings
from runtime.env import env_float, env_int
from runtime.files import write_atomic
from runtime.services import DEFAULT_CACHE_BYTES, MAX_CACHE_BYTES, MIN_CACHE_BYTES
from runtime.settings import AgentSettings


@pytest.mark.parametrize(("env", "want"), [
    ({}, 7),
    ({"N": ""}, 7),
    ({"N": "0"}, 0),
    ({"N": "42"}, 42),
    ({"N": "-3"}, -3),
])
def test_env_int_reads_a_number_or_the_default(env: dict, want: int) -> None:
    assert env_int(env, "N", 7) == want


@pytest.mark.parametrize(("env", "want"), [({}, 1.5), ({"T": ""}, 1.5), ({"T": "2.25"}, 2.25), ({"T": "3"}, 3.0)])
def test_env_float_reads_a_number_or_the_default(env: dict, want: float) -> None:
    assert env_float(env, "T", 1.5) == want


@pytest.mark.parametrize("helper", [env_int, env_float])
def test_a_malformed_number_names_the_variable(helper: object) -> None:
    with pytest.raises(ValueError, match="CWEB_X='12k'"):
        helper({"CWEB_X": "12k"}, "CWEB_X", 1)  # type: ignore[operator]


def test_settings_defaults_match_the_readme() -> None:
    s = Settings.from_env({})
    assert (s.header_timeout, s.body_timeout) == (HEADER_TIMEOUT_S, BODY_TIMEOUT_S) == (15.0, 120.0)
    assert s.cache_bytes == DEFAULT_CACHE_BYTES == 64 << 20


def test_settings_read_the_timeouts_and_the_cache_size() -> None:
    s = Settings.from_env({"CWEB_HEADER_TIMEOUT": "3", "CWEB_BODY_TIMEOUT": "7.5", "CWEB_CACHE_BYTES": "2M"})
    assert (s.header_timeout, s.body_timeout, s.cache_bytes) == (3.0, 7.5, 2 << 20)


@pytest.mark.parametrize(("raw", "want"), [("1", MIN_CACHE_BYTES), ("1000G", MAX_CACHE_BYTES)])
def test_settings_clamp_the_cache_size_as_the_agent_does(raw: str, want: int) -> None:
    assert Settings.from_env({"CWEB_CACHE_BYTES": raw}).cache_bytes == want


def test_write_atomic_writes_the_whole_file_with_the_mode_asked(tmp_path: Path) -> None:
    path = tmp_path / "secret"
    write_atomic(str(path), b"old", 0o600)
    write_atomic(str(path), b"new contents", 0o600)
    assert path.read_bytes() == b"new contents"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert os.listdir(tmp_path) == ["secret"]  # no temporary left behind


def test_write_atomic_leaves_the_old_file_when_it_fails(tmp_path: Path) -> None:
    path = tmp_path / "kept"
    write_atomic(str(path), b"old", 0o644)
    with pytest.raises(TypeError):
        write_atomic(str(path), "not bytes", 0o644)  # type: ignore[arg-type]
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["kept"]


def test_the_agent_gets_every_runtime_setting_from_the_api_explicitly(tmp_path: Path) -> None:
    env = {
        "CWEB_DATA_DIR": str(tmp_path), "CWEB_WORKER_MEMORY_BYTES": str(300 << 20), "CWEB_WORKER_ALLOW_FORK": "1",
        "CWEB_WORKER_UIDS": "70000-70009", "CWEB_WORKER_SANDBOX": "landlock", "CWEB_CACHE_BYTES": "3M",
        "CWEB_LOG_JSON": "1", "CWEB_RUNTIME_SECRET": "never-on-argv",
    }
    s = Settings.from_env(env).resolved()
    s.tls_cert, s.tls_key = "/certs/c.pem", "/certs/k.pem"
    text = s.agent_settings().to_json()
    assert "never-on-argv" not in text
    got = AgentSettings.from_json(text)
    assert (got.store_dir, got.run_dir, got.data_dir, got.workdir) == (s.store_dir, s.run_dir, s.data_dir, s.workdir)
    assert got.log_json is True and got.secret == ""
    w = got.workers
    assert (w.memory_bytes, w.allow_fork, w.uid_first, w.uid_count, w.sandbox) == (300 << 20, True, 70000, 10, "landlock")
    assert (got.services.cache_bytes, got.services.tls_cert, got.services.tls_key) == (3 << 20, "/certs/c.pem", "/certs/k.pem")


def test_the_standalone_agent_reads_its_own_environment() -> None:
    a = AgentSettings.from_env({"CWEB_RUNTIME_SOCKET": "/run/x/agent.sock", "CWEB_WORKER_CPU_SECONDS": "9",
                                "CWEB_RUNTIME_SECRET": "s3"})
    assert (a.socket, a.workers.cpu_seconds, a.secret) == ("/run/x/agent.sock", 9, "s3")
    assert "s3" not in repr(a)


def test_pyproject_license_is_an_spdx_string() -> None:
    """A license table makes setuptools warn on every install; the SPDX string
    form needs setuptools >= 77 as the build backend."""
    import tomllib
    from pathlib import Path

    meta = tomllib.loads((Path(__file__).resolve().parents[2] / "pyproject.toml").read_text())
    assert "MIT" == meta["project"]["license"]
    assert ["setuptools>=77"] == meta["build-system"]["requires"]
