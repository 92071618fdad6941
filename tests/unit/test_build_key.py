"""builder.cache.build_key: one pure function of every build input.

The table below changes one input at a time; each change must give a new key,
and the same inputs must always give the same key.
"""

from __future__ import annotations

import re

import pytest

from builder.cache import BUILD_SALT, build_key

BASE: dict = {
    "source_sha256": "a" * 64,
    "sdk_digest": "b" * 64,
    "compiler": "gcc (Debian 12.2.0-14) 12.2.0 x86_64-linux-gnu",
    "flags": ["-std=gnu11", "-O2", "-fPIC", "-shared"],
    "abi_version": 1,
    "salt": BUILD_SALT,
}

# (what changed, the one input that differs from BASE)
CHANGES = [
    ("source hash", {"source_sha256": "c" * 64}),
    ("sdk digest", {"sdk_digest": "d" * 64}),
    ("compiler version", {"compiler": "gcc (Debian 13.2.0-1) 13.2.0 x86_64-linux-gnu"}),
    ("compiler target", {"compiler": "gcc (Debian 12.2.0-14) 12.2.0 aarch64-linux-gnu"}),
    ("a flag added", {"flags": ["-std=gnu11", "-O2", "-fPIC", "-shared", "-g"]}),
    ("a flag removed", {"flags": ["-std=gnu11", "-O2", "-fPIC"]}),
    ("a flag changed", {"flags": ["-std=gnu11", "-O0", "-fPIC", "-shared"]}),
    ("order of flags", {"flags": ["-O2", "-std=gnu11", "-fPIC", "-shared"]}),
    ("abi version", {"abi_version": 2}),
    ("salt", {"salt": BUILD_SALT + "-next"}),
]


def test_same_inputs_give_the_same_key() -> None:
    """Two calls with equal inputs (fresh list objects) give one key."""
    first = build_key(**BASE)
    second = build_key(**{**BASE, "flags": list(BASE["flags"])})
    assert first == second


def test_key_is_a_sha256_hex_digest() -> None:
    """The key is 64 lower-case hex characters, usable as a store file name."""
    assert re.fullmatch(r"[0-9a-f]{64}", build_key(**BASE)) is not None


def test_default_salt_is_the_build_salt() -> None:
    """Leaving out the salt is the same as passing BUILD_SALT."""
    without = {k: v for k, v in BASE.items() if k != "salt"}
    assert build_key(**BASE) == build_key(**without)


@pytest.mark.parametrize("what, change", CHANGES, ids=[c[0] for c in CHANGES])
def test_changing_one_input_changes_the_key(what: str, change: dict) -> None:
    """Every input is part of the key: changing it alone gives a different key."""
    assert build_key(**BASE) != build_key(**{**BASE, **change})


def test_every_change_gives_a_distinct_key() -> None:
    """No two of the single-input changes collide with each other either."""
    keys = [build_key(**{**BASE, **change}) for _, change in CHANGES]
    assert len(CHANGES) == len(set(keys))


def test_fields_do_not_run_into_each_other() -> None:
    """Moving text between two adjacent string inputs changes the key."""
    a = build_key(**{**BASE, "sdk_digest": "ab", "compiler": "c"})
    b = build_key(**{**BASE, "sdk_digest": "a", "compiler": "bc"})
    assert a != b
