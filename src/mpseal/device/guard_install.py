"""The boot guard's files as they go onto a device (or into a frozen firmware manifest)."""

from __future__ import annotations

import json

from mpseal.device.vm import runtime_dir

# Device-side modules of the guard, shipped from mpseal/runtime/ unchanged.
GUARD_MODULES = ("mpseal_guard", "mpseal_release", "mpseal_state", "mpseal_port",
                 "mpseal_lockdown", "p256")
MAIN_SHIM = b"import mpseal_guard\nmpseal_guard.boot()\n"
GUARD_DIR = "/mpseal"
TRUST_ROOT = "/mpseal/trust-root.mpsr"
DEVICE_CONFIG = "/mpseal/device.json"


def device_config(board: str, profile: str, max_tries: int = 3,
                  max_image: int = 4 * 1024 * 1024) -> bytes:
    return json.dumps({"board": board, "profile": profile, "max_tries": max_tries,
                       "max_image": max_image}, sort_keys=True).encode()


def guard_files(board: str, profile: str, trust_root: bytes) -> dict[str, bytes]:
    """Device path -> bytes for everything the guard needs, main.py included."""
    src = runtime_dir()
    files = {f"/lib/{name}.py": (src / f"{name}.py").read_bytes() for name in GUARD_MODULES}
    files["/main.py"] = MAIN_SHIM
    files[DEVICE_CONFIG] = device_config(board, profile)
    files[TRUST_ROOT] = trust_root
    return files
