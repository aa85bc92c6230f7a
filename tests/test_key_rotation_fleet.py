"""Rotating the release key: a fleet of virtual boards keeps updating (issue 12).

Before: the new trust root named only the new key; each device refused it (its running
release was not signed for it) and with it every later update; docs/warranty.md
recommends exactly this rotation after a key theft. Now `keys rotate --role release`
keeps the old key named until `keys revoke`, and a device that meets a root it cannot
take yet (the old key revoked too early) holds it back and takes only a release that
runs under it too. Threat tier: T2 (a stolen release key is retired from the fleet).
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_mpseal
from serve_support import project_server
from server_support import ADMIN_TOKEN

BOARDS = ["sim/a", "sim/b", "sim/c"]


def _set(project: Path, old: str, new: str) -> None:
    path = project / "mpseal.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def _ok(*args: str, project: Path, env: dict[str, str] | None = None) -> str:
    res = run_mpseal(*args, cwd=project, env=env)
    assert res.returncode == 0, (args, res.stdout, res.stderr)
    return res.stdout


def _release(project: Path, env: dict[str, str], version: str, counter: int) -> None:
    _set(project, "security_counter = ", f"security_counter = {counter}\n#")
    text = (project / "mpseal.toml").read_text()
    import re

    (project / "mpseal.toml").write_text(
        re.sub(r'version = "[^"]+"', f'version = "{version}"', text, count=1)
    )
    _ok("build", project=project)
    _ok("release", "publish", f"dist/hello-{version}.mpseal", project=project, env=env)
    _ok("release", "promote", version, "--percent", "100", project=project, env=env)


def _update_all(project: Path) -> list[str]:
    versions = []
    for sim in BOARDS:
        res = run_mpseal("sim", "update", "--sim", sim, cwd=project)
        assert res.returncode == 0, (sim, res.stdout, res.stderr)
        boot = json.loads(_ok("sim", "boot", "--sim", sim, "--json", project=project))
        committed = [ln for ln in boot["guard"] if ln.startswith("committed ")]
        versions.append(committed[-1].split()[2] if committed else "none")
    return versions


def _release_keys(project: Path) -> list[str]:
    return json.loads(_ok("keys", "list", "--json", project=project))["roles"]["release"]["keyids"]


def _root_version(project: Path, sim: str) -> int:
    from mpseal.device.sim import VirtualBoard
    from mpseal.formats import trustroot

    board = VirtualBoard(project / sim)
    return trustroot.parse(board.get("/mpseal/trust-root.mpsr")).version


def test_release_key_rotation_a_fleet_survives(project: Path) -> None:
    _ok("build", project=project)
    _ok("ca", "init", "ca", project=project)
    for sim in BOARDS:
        _ok("sim", "create", "--sim", sim, project=project)
    with project_server(project) as url:
        env = {"MPSEAL_SERVER": url, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        (project / "device.toml").write_text(f'server = "{url}"\n')
        _ok(
            "provision",
            *[a for s in BOARDS for a in ("--sim", s)],
            "--config",
            "device.toml",
            "--artifact",
            "dist/hello-1.0.0.mpseal",
            project=project,
        )
        for sim in BOARDS:
            _ok("sim", "boot", "--sim", sim, project=project)

        # Step 1: the new key joins, the old one is still named (trust root 2).
        old_key = _release_keys(project)[0]
        out = _ok("keys", "rotate", "--role", "release", project=project)
        assert _release_keys(project) == [old_key, *_release_keys(project)[1:]]
        assert "mpseal keys revoke --role release" in out
        _release(project, env, "1.1.0", 2)  # signed by the new key only
        assert _update_all(project) == ["1.1.0"] * 3
        assert [_root_version(project, s) for s in BOARDS] == [2, 2, 2]

        # Step 2: the old key leaves (trust root 3); devices take it with the next update.
        assert f"mpseal keys revoke --role release {old_key[:16]}" in out
        _ok("keys", "revoke", "--role", "release", old_key[:16], project=project)
        _release(project, env, "1.2.0", 3)
        assert _update_all(project) == ["1.2.0"] * 3
        assert [_root_version(project, s) for s in BOARDS] == [3, 3, 3]


def test_old_key_revoked_too_early_the_fleet_holds_the_root_back(project: Path) -> None:
    """Root 2 adds the new key, root 3 drops the old one, before any device moved: a device
    running an old-key release takes root 2, holds 3 back, and still updates."""
    _ok("build", project=project)
    _ok("ca", "init", "ca", project=project)
    _ok("sim", "create", "--sim", BOARDS[0], project=project)
    with project_server(project) as url:
        env = {"MPSEAL_SERVER": url, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        (project / "device.toml").write_text(f'server = "{url}"\n')
        _ok(
            "provision",
            "--sim",
            BOARDS[0],
            "--config",
            "device.toml",
            "--artifact",
            "dist/hello-1.0.0.mpseal",
            project=project,
        )
        _ok("sim", "boot", "--sim", BOARDS[0], project=project)
        old_key = _release_keys(project)[0]
        _ok("keys", "rotate", "--role", "release", project=project)
        _ok("keys", "revoke", "--role", "release", old_key[:16], project=project)
        _release(project, env, "1.1.0", 2)
        res = run_mpseal("sim", "update", "--sim", BOARDS[0], cwd=project)
        assert res.returncode == 0, res.stdout + res.stderr
        assert _root_version(project, BOARDS[0]) == 2  # 3 held back: 1.0.0 would not boot
        boot = json.loads(_ok("sim", "boot", "--sim", BOARDS[0], "--json", project=project))
        assert any(ln.startswith("committed hello 1.1.0") for ln in boot["guard"]), boot
        status = _ok("sim", "status", "--sim", BOARDS[0], project=project)
        assert "staying on trust root 2" in status
