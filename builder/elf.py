"""Check that gcc's output is a shared object for this machine before it
enters the store."""

from __future__ import annotations

import os
import platform
import struct

from builder.errors import ArtifactInvalid

_ET_DYN = 3
_MACHINES = {"x86_64": 62, "aarch64": 183, "i686": 3, "armv7l": 40, "riscv64": 243, "ppc64le": 21, "s390x": 22}


def read_shared_object(path: str, max_bytes: int) -> bytes:
    """Read path without following links, enforcing size and ELF type."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ArtifactInvalid(f"the compiler produced no usable artifact ({exc.strerror})") from exc
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(f.fileno())
        if st.st_size > max_bytes:
            raise ArtifactInvalid(f"artifact is {st.st_size} bytes; the limit is {max_bytes}")
        data = f.read(max_bytes + 1)
    if len(data) < 64 or data[:4] != b"\x7fELF":
        raise ArtifactInvalid("the compiler output is not an ELF file")
    if data[4] != 2 or data[5] != 1:
        raise ArtifactInvalid("artifact is not a 64-bit little-endian ELF")
    e_type, e_machine = struct.unpack_from("<HH", data, 16)
    if e_type != _ET_DYN:
        raise ArtifactInvalid("artifact is not a shared object")
    expected = _MACHINES.get(platform.machine())
    if expected is not None and e_machine != expected:
        raise ArtifactInvalid("artifact is not built for this machine")
    return data
