"""The virtual Pico from the command line, as a user without hardware drives it.

``mpseal sim create --board rp2`` makes a board folder running the stock RPI_PICO
firmware in rp2040js; ``sim install`` puts the guard on it and stages a release over
its USB serial port; ``sim boot`` powers it on and follows the guard; ``provision``,
``audit`` and ``inspect-device`` reach the same folder with ``--sim``.
One board is shared by the module (each step is what the next one needs).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_mpseal

from mpseal.device.pico import VirtualPico

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first


@pytest.fixture(scope="module")
def rp2_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rp2") / "proj"
    res = run_mpseal("init", folder, "--board", "rp2", "--name", "hello")
    assert res.returncode == 0, res.stderr
    res = run_mpseal("build", "-C", folder)
    assert res.returncode == 0, res.stderr
    return folder


@pytest.fixture(scope="module")
def board(rp2_project: Path) -> Path:
    sim = rp2_project / "sim" / "pico"
    res = run_mpseal("sim", "create", "--board", "rp2", "--sim", sim)
    assert res.returncode == 0, res.stderr
    assert "stock RPI_PICO v1.28.0 in rp2040js" in res.stdout
    return sim


def _artifact(project: Path) -> Path:
    return next((project / "dist").glob("*.mpseal"))


def test_sim_create_rp2_makes_a_pico_folder_and_refuses_a_second(board: Path) -> None:
    pico = VirtualPico(board)
    assert pico.info.board == "rp2" and pico.info.firmware == "RPI_PICO"
    assert pico.flash.stat().st_size == 2 * 1024 * 1024
    res = run_mpseal("sim", "create", "--board", "rp2", "--sim", board)
    assert res.returncode == 2 and "already exists" in res.stderr
    res = run_mpseal(
        "sim", "create", "--board", "rp2", "--heapsize", "64K", "--sim", board.parent / "other"
    )
    assert res.returncode == 2 and "no --flash-size or --heapsize" in res.stderr


def test_sim_status_of_a_never_powered_pico_says_so(rp2_project: Path, tmp_path: Path) -> None:
    sim = tmp_path / "fresh"
    assert run_mpseal("sim", "create", "--board", "rp2", "--sim", sim).returncode == 0
    res = run_mpseal("sim", "status", "--sim", sim)
    assert res.returncode == 2 and "never powered on" in res.stderr


def test_sim_install_stages_through_the_guard_over_usb_serial(
    rp2_project: Path, board: Path
) -> None:
    res = run_mpseal(
        "sim",
        "install",
        _artifact(rp2_project),
        "-C",
        rp2_project,
        "--sim",
        board,
        "--json",
        timeout=600,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["app"], out["version"], out["counter"], out["slot"]) == ("hello", "1.0.0", 1, "a")
    # Read back from the flash image the emulator wrote (the board is off now).
    st = json.loads(run_mpseal("sim", "status", "--sim", board, "--json").stdout)
    assert st["state"]["trial"] == "a"
    assert st["slots"]["a"] == {"app": "hello", "version": "1.0.0", "counter": 1}
    names = {
        e["name"]
        for e in json.loads(run_mpseal("sim", "ls", "/lib", "--sim", board, "--json").stdout)
    }
    assert {"mpseal_guard.mpy", "p256.mpy"} <= names


def test_sim_boot_runs_and_commits_the_release_on_the_stock_firmware(
    rp2_project: Path, board: Path
) -> None:
    res = run_mpseal("sim", "boot", "--sim", board, "--json", timeout=600)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    # The guard verified the release on the Pico, ran it on trial, the app confirmed it.
    assert any(
        line.startswith("booting hello 1.0.0 (counter 1) from slot a on trial")
        for line in out["guard"]
    )
    assert "committed hello 1.0.0 (counter 1) in slot a" in out["guard"]
    assert out["outcome"] == "returned"  # the dev profile hands the line to the REPL
    st = json.loads(run_mpseal("sim", "status", "--sim", board, "--json").stdout)
    assert st["state"]["committed"] == "a" and st["state"]["trial"] is None


def test_provision_audit_and_inspect_reach_the_virtual_pico(rp2_project: Path, board: Path) -> None:
    assert run_mpseal("ca", "init", rp2_project / "ca").returncode == 0
    res = run_mpseal("provision", "-C", rp2_project, "--sim", board, "--json", timeout=600)
    assert res.returncode == 0, res.stderr
    dev = json.loads(res.stdout)["devices"][0]
    assert dev["hardware_id"] == VirtualPico(board).hardware_id  # machine.unique_id()

    res = run_mpseal("audit", "--sim", board, "--json", timeout=600)
    report = json.loads(res.stdout)
    assert report["board"] == "rp2"
    assert report["reachable"] is True  # dev profile: the REPL is open
    assert res.returncode in (10, 11, 12, 13)  # open holes, named by the weakest attacker

    res = run_mpseal("inspect-device", "-C", rp2_project, "--sim", board, "--json", timeout=600)
    assert res.returncode in (0, 1, 5, 6), res.stderr
    assert json.loads(res.stdout)["guard"]["installed"] is True
