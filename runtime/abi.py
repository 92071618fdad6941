"""ctypes signatures of the flat entry ABI exported by builder/sdk/cweb_glue.c."""

from __future__ import annotations

import ctypes

# The ABI this runtime loads: CWEB_ABI_VERSION of builder/sdk/cweb.h (the
# builder reads it from there; tests/unit/test_wire_agreement.py checks this).
ABI_VERSION = 1


def bind(lib: ctypes.CDLL) -> None:
    """Declare argument and return types so ctypes passes them correctly."""
    lib.cweb_abi_version.argtypes = []
    lib.cweb_abi_version.restype = ctypes.c_int
    lib.cweb_abi_init.argtypes = [ctypes.c_char_p, ctypes.c_ulonglong]
    lib.cweb_abi_init.restype = ctypes.c_int
    lib.cweb_abi_describe.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
    lib.cweb_abi_describe.restype = ctypes.c_long
    lib.cweb_abi_onload.argtypes = []
    lib.cweb_abi_onload.restype = None
    lib.cweb_abi_unload.argtypes = []
    lib.cweb_abi_unload.restype = None
    lib.cweb_abi_serve.argtypes = [ctypes.c_int]
    lib.cweb_abi_serve.restype = ctypes.c_int
