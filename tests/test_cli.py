"""The CLI as a user meets it: init, keys, sims, and one-line errors that lose nothing."""

from __future__ import annotations

import json
import stat
from pathlib import Path

from conftest import run_mpseal


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_init_writes_private_keys_0600_and_a_signed_trust_root(project: Path) -> None:
    assert mode(project / "keys/offline/root.pem") == 0o600
    assert mode(project / "keys/release.pem") == 0o600
    assert mode(project / "keys/offline") == 0o700
    assert (project / "keys/trust-root.mpsr").read_bytes()[:4] == b"MPSR"
    toml = (project / "mpseal.toml").read_text()
    assert 'board = "unix"' in toml and 'name = "hello"' in toml


def test_init_refuses_to_overwrite_keys_and_changes_nothing(project: Path) -> None:
    before = {p: p.read_bytes() for p in (project / "keys").rglob("*") if p.is_file()}
    res = run_mpseal("init", project, "--board", "unix")
    assert res.returncode == 2
    assert "already exists" in res.stderr and len(res.stderr.strip().splitlines()) == 1
    after = {p: p.read_bytes() for p in (project / "keys").rglob("*") if p.is_file()}
    assert before == after
    # Even with mpseal.toml gone, an existing key is never replaced.
    (project / "mpseal.toml").unlink()
    res = run_mpseal("init", project, "--board", "unix")
    assert res.returncode == 2 and "root.pem already exists" in res.stderr
    assert not (project / "mpseal.toml").exists()


def test_passphrase_protected_keys(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    env = {"MPSEAL_PASSPHRASE": "correct horse battery staple"}
    res = run_mpseal("init", folder, "--board", "unix", "--encrypt-keys", env=env)
    assert res.returncode == 0, res.stderr
    assert b"ENCRYPTED" in (folder / "keys/release.pem").read_bytes()
    res = run_mpseal("build", "-C", folder)  # no passphrase, no TTY
    assert res.returncode == 2 and "MPSEAL_PASSPHRASE" in res.stderr
    res = run_mpseal("build", "-C", folder, env={"MPSEAL_PASSPHRASE": "wrong"})
    assert res.returncode == 2 and "wrong passphrase" in res.stderr
    assert not (folder / "dist").exists()
    res = run_mpseal("build", "-C", folder, env=env)
    assert res.returncode == 0, res.stderr


def test_build_json_summary(project: Path) -> None:
    res = run_mpseal("build", "-C", project, "--json")
    summary = json.loads(res.stdout)
    assert summary["app"] == "hello" and summary["board"] == "unix"
    assert summary["modules"] == 2 and summary["data_files"] == 1
    assert Path(summary["artifact"]).is_file()


def test_build_refuses_a_release_key_the_trust_root_does_not_name(
    project: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    assert run_mpseal("init", other, "--board", "unix").returncode == 0
    (project / "keys/release.pem").write_bytes((other / "keys/release.pem").read_bytes())
    res = run_mpseal("build", "-C", project)
    assert res.returncode == 2 and "not named by the project's trust root" in res.stderr


def test_bad_config_is_one_line(project: Path) -> None:
    cfg = project / "mpseal.toml"
    cfg.write_text(cfg.read_text().replace('board = "unix"', 'board = "pdp11"'))
    res = run_mpseal("build", "-C", project)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "mpseal: config error: unknown board 'pdp11'; choose one of: esp32, esp32s3, openmv, "
        "rp2, rp2350, stm32, unix"
    ]
    cfg.write_text("[app\n")
    res = run_mpseal("build", "-C", project)
    assert res.returncode == 2 and "not valid TOML" in res.stderr


def test_no_project_here(tmp_path: Path) -> None:
    res = run_mpseal("build", cwd=tmp_path)
    assert res.returncode == 2 and "run 'mpseal init DIR' first" in res.stderr


def test_missing_artifact_file(project: Path) -> None:
    res = run_mpseal("verify", project / "nope.mpseal", "-C", project)
    assert res.returncode == 2 and "artifact not found" in res.stderr


def test_sim_install_host_check_refuses_another_boards_artifact(tmp_path: Path) -> None:
    """The host's pre-check answers, before the board is touched; that the device's guard
    refuses alone is tests/test_guard.py::test_refuses_another_boards_image."""
    esp = tmp_path / "esp"
    assert run_mpseal("init", esp, "--board", "esp32").returncode == 0
    assert run_mpseal("build", "-C", esp).returncode == 0
    art = next((esp / "dist").glob("*.mpseal"))
    sim = tmp_path / "sim"
    assert run_mpseal("sim", "create", "--sim", sim).returncode == 0
    res = run_mpseal("sim", "install", art, "--sim", sim, "-C", esp)
    assert res.returncode == 3 and "built for board 'esp32', not 'unix'" in res.stderr
    listing = json.loads(run_mpseal("sim", "ls", "/mpseal", "--sim", sim, "--json").stdout)
    assert [e["name"] for e in listing] == ["sim-id"]  # nothing was written
    res = run_mpseal("sim", "run", "--sim", sim)
    assert res.returncode == 2 and "nothing is installed" in res.stderr


def test_sim_install_host_check_refuses_a_tampered_artifact_and_keeps_the_installed_one(
    built: Path, tmp_path: Path
) -> None:
    """The host's pre-check answers; the guard's own refusal is
    tests/test_guard.py::test_refuses_tampered_image."""
    project = built.parents[1]
    sim = tmp_path / "sim"
    assert run_mpseal("sim", "create", "--sim", sim).returncode == 0
    assert run_mpseal("sim", "install", built, "--sim", sim, "-C", project).returncode == 0
    bad = tmp_path / "bad.mpseal"
    blob = bytearray(built.read_bytes())
    blob[-5] ^= 0xFF
    bad.write_bytes(bytes(blob))
    res = run_mpseal("sim", "install", bad, "--sim", sim, "-C", project)
    assert res.returncode == 3 and "image SHA-256 does not match" in res.stderr
    res = run_mpseal("sim", "run", "--sim", sim)
    assert res.returncode == 0 and "Hello from a sealed MicroPython app!" in res.stdout


def test_sim_create_refuses_an_existing_board(tmp_path: Path) -> None:
    sim = tmp_path / "sim"
    assert run_mpseal("sim", "create", "--sim", sim).returncode == 0
    flash = (sim / "flash.img").read_bytes()
    res = run_mpseal("sim", "create", "--sim", sim)
    assert res.returncode == 2 and "already exists" in res.stderr
    assert (sim / "flash.img").read_bytes() == flash
