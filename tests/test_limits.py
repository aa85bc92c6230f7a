"""One source of truth for limits (issue 10.9): the device's constants (runtime/, read from
their source) equal the host's mpseal/limits.py, so `build` and `verify` pass nothing a
device refuses for its size; and `build` refuses an image over the device limit."""

from __future__ import annotations

import ast
import os
from pathlib import Path

from conftest import run_mpseal

from mpseal.crypto import secretbox
from mpseal.device.vm import runtime_dir
from mpseal.formats import encrypted, manifest, unlocktoken
from mpseal.limits import DEFAULT_LIMITS as L


def constants(module: str) -> dict[str, object]:
    """Module-level NAME = <constant expression> of a runtime module, evaluated."""
    out: dict[str, object] = {}
    tree = ast.parse((runtime_dir() / f"{module}.py").read_text())
    for node in tree.body:
        if (
            isinstance(node, ast.Assign)
            and len(node.targets) == 1
            and isinstance(node.targets[0], ast.Name)
        ):
            try:
                out[node.targets[0].id] = eval(
                    compile(ast.Expression(node.value), module, "eval"), {"__builtins__": {}}
                )
            except Exception:  # noqa: BLE001 - names, calls: not a constant
                continue
    return out


def test_device_limits_equal_limits_py() -> None:
    rel, meta = constants("mpseal_release"), constants("mpseal_meta")
    appfs, guard = constants("mpseal_appfs"), constants("mpseal_guard")
    pairs = {
        "mpseal_release.MAX_MANIFEST": (rel["MAX_MANIFEST"], L.manifest_max_length),
        "mpseal_release.MAX_IMAGE": (rel["MAX_IMAGE"], L.image_max_length),
        "mpseal_guard.DEFAULTS max_image": (guard["DEFAULTS"]["max_image"], L.image_max_length),
        "mpseal_release.MAX_SIGS": (rel["MAX_SIGS"], L.signatures_max_count),
        "mpseal_release.MAX_FILES": (rel["MAX_FILES"], L.files_max_count),
        "mpseal_appfs.MAX_FILES": (appfs["MAX_FILES"], L.files_max_count),
        "mpseal_release.MAX_ROOT": (rel["MAX_ROOT"], L.root_max_length),
        "mpseal_meta.MAX_TS": (meta["MAX_TS"], L.timestamp_max_length),
        "mpseal_meta.MAX_TARGETS": (meta["MAX_TARGETS"], L.timestamp_max_targets),
        "mpseal_meta.MAX_PATH": (meta["MAX_PATH"], L.target_path_max_length),
        "mpseal_meta.MAX_SIZE": (meta["MAX_SIZE"], L.artifact_max_length),
        "mpseal_appfs.MAX_NAME": (appfs["MAX_NAME"], L.file_name_max_length),
        "mpseal_secrets.MAX_LEN": (constants("mpseal_secrets")["MAX_LEN"], secretbox.MAX_LEN),
        "mpseal_stage.MAX_UNLOCK": (
            constants("mpseal_stage")["MAX_UNLOCK"],
            unlocktoken.MAX_LENGTH,
        ),
        "mpseal_release.KEY_RECORD_LEN": (rel["KEY_RECORD_LEN"], encrypted.RECORD_LENGTH),
        "mpseal_release.ENCRYPTED": (rel["ENCRYPTED"], manifest.ENCRYPTED),
    }
    differ = {name: pair for name, pair in pairs.items() if pair[0] != pair[1]}
    assert not differ, differ


def test_build_refuses_an_image_every_device_would_refuse(project: Path) -> None:
    data = project / "app" / "data"
    data.mkdir(parents=True, exist_ok=True)
    (data / "big.bin").write_bytes(os.urandom(L.image_max_length))
    res = run_mpseal("build", "-C", project)
    assert res.returncode != 0
    assert "devices accept at most" in res.stderr, res.stderr
    assert not list((project / "dist").glob("*.mpseal"))
