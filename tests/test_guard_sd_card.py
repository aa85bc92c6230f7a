"""The SD card on a sealed board, in the real MicroPython VM: the guard mounts it (its own
``machine.SDCard()`` + ``os.mount``; runtime/simsdcard.py serves a FAT card image with
the SDCard block protocol) before it looks for a service unlock token on it, and the
card stays data: nothing on it runs and nothing on it opens the REPL."""

from __future__ import annotations

import pytest
from conftest import run_mpseal
from release_support import release, unlock_token

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.device.sim import EXIT_RESET, BootReport, VirtualBoard
from mpseal.packaging.project import Project

# The app says what it sees of the card: its files, the search path, whether a module
# that exists only on the card imports.
CARD_MAIN = """\
import os
import sys
from mpseal_guard import confirm
def main():
    print("running {version}")
    confirm()
    print("app path", sys.path, "cwd", os.getcwd())
    print("app card", sorted(os.listdir("/sd")))
    try:
        import sdprobe
        print("app imported sdprobe")
    except ImportError:
        print("app cannot import sdprobe")
"""

SD_CODE = b'print("SD CODE RAN")\nraise SystemExit(0)\n'  # exit 0: the REPL follows


@pytest.fixture(scope="module")
def sealed(tmp_path_factory: pytest.TempPathFactory) -> tuple[VirtualBoard, PrivateKeySigner]:
    """A sealed virtual board with an SD card, running release 1.0 (committed); the
    offline root key that signs its unlock tokens."""
    project = tmp_path_factory.mktemp("sdcard") / "proj"
    assert run_mpseal("init", project, "--board", "unix", "--name", "hello").returncode == 0
    blob = release(project, "1.0", 1, CARD_MAIN, profile="sealed")
    board = VirtualBoard.create(project / "sim", flash_size=512 * 1024)
    board.install(blob, Project.load(project).trust_root(), profile="sealed")
    board.insert_sd_card()
    report = board.boot()
    assert report.ran() == [("hello", "1.0", 1)], report.output
    root_key = PrivateKeySigner.from_pem((project / "keys/offline/root.pem").read_bytes())
    return board, root_key


def unlocks_used(board: VirtualBoard) -> int:
    state = board.status()["state"]
    assert isinstance(state, dict)
    return int(state["unlocks"])


def card_files(board: VirtualBoard) -> list[str]:
    return [name for name, _, _ in board.sd_listdir("/")]


def stays_sealed(report: BootReport) -> None:
    """Reset after the app (the sealed profile), never the REPL, nothing unlocked."""
    assert report.exit_codes and set(report.exit_codes) == {EXIT_RESET}, report.output
    assert not any(ln.startswith("service unlock") for ln in report.guard_lines)
    assert "SD CODE RAN" not in report.output


def test_unlock_token_only_on_the_sd_card_opens_a_sealed_board_for_one_boot(sealed) -> None:
    board, root_key = sealed
    n = unlocks_used(board) + 1
    token = unlock_token(root_key, board.hardware_id, n)
    board.sd_put({"/mpseal-unlock.tok": token})

    report = board.boot()
    assert f"service unlock {n}: profile dev for this boot" in report.guard_lines
    assert report.outcome == "returned" and report.exit_codes == [0]  # the REPL, for service
    assert "mpseal-unlock.tok" not in card_files(board)  # used: removed from the card
    stays_sealed(board.boot())  # the next boot is sealed again
    board.sd_put({"/mpseal-unlock.tok": token})  # the same token again (a copy was kept)
    report = board.boot()
    assert "unlock refused: unlock token was already used" in report.guard_lines
    stays_sealed(report)


def test_sd_card_unlock_token_for_another_device_is_refused(sealed) -> None:
    board, root_key = sealed
    other = "%016x" % (int(board.hardware_id, 16) ^ 1)
    board.sd_put({"/mpseal-unlock.tok": unlock_token(root_key, other, unlocks_used(board) + 1)})
    report = board.boot()
    assert "unlock refused: unlock token is for another device" in report.guard_lines
    stays_sealed(report)
    assert "mpseal-unlock.tok" not in card_files(board)  # single use, whatever it held


def test_sd_card_is_mounted_as_data_and_its_code_never_runs(sealed) -> None:
    board, _ = sealed
    board.sd_put(
        {
            "/main.py": SD_CODE,
            "/boot.py": SD_CODE,
            "/mpseal_guard.py": SD_CODE,
            "/mpseal_appfs.py": SD_CODE,  # imported by the guard after the card is mounted
            "/lib/mpseal_guard.py": SD_CODE,
            "/sdprobe.py": SD_CODE,
            "/mpseal/device.json": b'{"profile": "dev"}',
        }
    )
    report = board.boot()
    stays_sealed(report)
    lockdown = next(ln for ln in report.guard_lines if ln.startswith("lockdown sealed: "))
    assert "SD card at /sd (data only)" in lockdown
    lines = report.output.splitlines()
    card = next(ln for ln in lines if ln.startswith("app card "))
    assert "'main.py'" in card and "'mpseal_guard.py'" in card  # mounted: the app reads it
    path = next(ln for ln in lines if ln.startswith("app path "))
    assert "/sd" not in path  # neither on sys.path nor the current folder
    assert "app cannot import sdprobe" in lines


@pytest.mark.parametrize(
    "what",
    ["signed by the release key", "garbage", "truncated", "too large", "for the field profile"],
)
def test_nothing_on_the_sd_card_opens_the_repl_of_a_sealed_board(sealed, what: str) -> None:
    board, root_key = sealed
    n = unlocks_used(board) + 1
    good = unlock_token(root_key, board.hardware_id, n)
    token = {
        "signed by the release key": unlock_token(
            PrivateKeySigner.generate(), board.hardware_id, n
        ),
        "garbage": b"MPSU" + bytes(range(256)) * 4,
        "truncated": good[: len(good) // 2],
        "too large": good + b" " * 4096,
        "for the field profile": unlock_token(root_key, board.hardware_id, n, "field"),
    }[what]
    board.sd_put({"/mpseal-unlock.tok": token, "/main.py": SD_CODE})
    report = board.boot()
    if what == "for the field profile":  # a valid token: `field` for this boot, still no REPL
        assert f"service unlock {n}: profile field for this boot" in report.guard_lines
        assert set(report.exit_codes) == {EXIT_RESET} and "SD CODE RAN" not in report.output
    else:
        assert any(ln.startswith("unlock refused: ") for ln in report.guard_lines)
        stays_sealed(report)
    assert "mpseal-unlock.tok" not in card_files(board)
