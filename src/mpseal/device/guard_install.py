"""The boot guard's files as they go onto a device (or into a frozen firmware manifest).

The guard's modules are compiled with the real mpy-cross for the board, so the
device never compiles source at boot (less RAM, and firmware built without the
compiler works too).

p256_thumb (the verifier's field arithmetic in Thumb-1 assembly) goes only to ARM
boards, precompiled with the board's -march: compiling its 3,000 lines of inline
assembler on the device at import would need far more RAM than the guard may use,
and a board without the inline assembler could not compile it at all. p256 finds it
at import and otherwise verifies with Python integers (slower, same answers).
"""

from __future__ import annotations

import json

from mpseal.packaging.mpycross import CompileOptions, Compiler, Module
from mpseal.device.vm import runtime_dir
from mpseal.formats.boards import get_board

# Device-side modules of the guard, shipped from mpseal/runtime/.
GUARD_MODULES = ("mpseal_guard", "mpseal_release", "mpseal_state", "mpseal_port",
                 "mpseal_lockdown", "mpseal_meta", "mpseal_secrets", "mpseal_ota", "p256",
                 "p256_thumb")
# Modules only for boards whose native code is ARM Thumb (the inline assembler's target).
THUMB_ONLY = ("p256_thumb",)
THUMB_ARCHS = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")
MAIN_SHIM = b"import mpseal_guard\nmpseal_guard.boot()\n"
GUARD_DIR = "/mpseal"
TRUST_ROOT = "/mpseal/trust-root.mpsr"
DEVICE_CONFIG = "/mpseal/device.json"


def device_config(board: str, profile: str, max_tries: int = 3,
                  max_image: int = 4 * 1024 * 1024) -> bytes:
    return json.dumps({"board": board, "profile": profile, "max_tries": max_tries,
                       "max_image": max_image}, sort_keys=True).encode()


def compiled_guard(board: str) -> dict[str, bytes]:
    """``/lib/<module>.mpy`` -> bytes, compiled for ``board``."""
    b = get_board(board)
    compiler = Compiler(CompileOptions(b.mpy, b.arch, opt=2, source_lines=False), cache_dir=None)
    src = runtime_dir()
    names = [n for n in GUARD_MODULES if b.arch in THUMB_ARCHS or n not in THUMB_ONLY]
    modules = [Module(f"{name}.py", (src / f"{name}.py").read_bytes()) for name in names]
    out = compiler.compile_all(modules)
    return {f"/lib/{name[:-3]}.mpy": data for name, data in out.items()}


def guard_files(board: str, profile: str, trust_root: bytes) -> dict[str, bytes]:
    """Device path -> bytes for everything the guard needs, main.py included."""
    files = compiled_guard(board)
    files["/main.py"] = MAIN_SHIM
    files[DEVICE_CONFIG] = device_config(board, profile)
    files[TRUST_ROOT] = trust_root
    return files
