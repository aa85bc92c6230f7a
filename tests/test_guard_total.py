"""A boot that is total: whatever goes wrong inside the guard (a damaged device.json, an
OSError from flash, a firmware without a feature, an app that crashes at every boot)
ends in a defined outcome, never the REPL in the field profile and never a reset loop.
Real MicroPython VM; the serial-line tests read the virtual board's pty."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from release_support import release

from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import SimLink
from mpseal.packaging.project import Project

RAW_REPL_BANNER = "raw REPL; CTRL-B to exit"


@pytest.fixture
def board(project: Path, tmp_path: Path) -> VirtualBoard:
    """A field-profile virtual board running release 1.0 (counter 1), committed."""
    blob = release(project, "1.0", 1, profile="field")
    b = VirtualBoard.create(tmp_path / "board")
    b.install(blob, Project.load(project).trust_root(), profile="field")
    assert b.boot().ran() == [("hello", "1.0", 1)]
    return b


def no_repl(text: str) -> None:
    assert ">>> " not in text and RAW_REPL_BANNER not in text, text


def serial_output(
    board: VirtualBoard, seconds: float = 4.0, firmware: str = "", eio: int = 0
) -> str:
    """Power the board on with its serial line open; poke the line as someone wanting a
    REPL would (Ctrl-C, Enter, Ctrl-A for the raw REPL); return all the line carried."""
    link = SimLink(board.flash, board.info.heapsize, boot=True, firmware=firmware, eio=eio)
    out = bytearray()
    fd = os.open(link.path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    try:
        end = time.monotonic() + seconds
        poked = False
        while time.monotonic() < end:
            try:
                out += os.read(fd, 4096)
            except BlockingIOError:
                time.sleep(0.05)
            if not poked and time.monotonic() > end - seconds / 2:
                os.write(fd, b"\x03\x03\r\n\x01")
                poked = True
    finally:
        os.close(fd)
        link.close()
    return (bytes(link.power_on_output) + bytes(out)).decode(errors="replace")


def test_damaged_device_config_means_locked_idle_with_the_reason(board: VirtualBoard) -> None:
    board.put(b'{"board": "unix", "profile": "fie', "/mpseal/device.json")
    report = board.boot()
    assert report.outcome == "idle" and report.exit_codes == [18]
    assert "locked idle: no usable device config: /mpseal/device.json is damaged" in report.output
    no_repl(report.output)
    assert any("locked idle: no usable device config" in ln for ln in board.status()["log"])
    board.put(
        json.dumps({"board": "unix", "profile": "field", "mount": "floppy"}).encode(),
        "/mpseal/device.json",
    )
    report = board.boot()
    assert report.outcome == "idle" and "mount 'floppy' is not one of" in report.output


def test_damaged_device_config_gives_no_repl_on_the_serial_line(board: VirtualBoard) -> None:
    board.put(b"\xff\xfe not json", "/mpseal/device.json")
    text = serial_output(board)
    assert "locked idle: no usable device config" in text
    no_repl(text)


def test_flash_error_at_any_point_of_the_boot_ends_defined(board: VirtualBoard) -> None:
    """OSError(EIO) from the flash from its N-th block operation on (a boot takes some
    thousands), for N across the whole boot: loading the guard, reading the state, the
    trust root, the slot: the board runs the app or idles saying why; never the REPL."""
    points = sorted({int(1.4**k) for k in range(1, 28)} | set(range(3000, 12000, 300)))
    outcomes: dict[int, str] = {}
    reasons: set[str] = set()
    for n in points:
        res = board.command("boot", eio=n)
        text = res.stdout + res.stderr
        if "[mpseal]" not in text and "running" not in text:
            # The unix VM's own littlefs mount failed before main.py: on a board the
            # firmware would not reach main.py either. Nothing of mpseal ran.
            assert "mpseal_" not in text, (n, text)  # the firmware's part (main.py itself)
            continue
        assert res.returncode in (17, 18), (n, text)
        assert "Traceback" not in text, (n, text)
        no_repl(text)
        outcomes[n] = "idle" if res.returncode == 18 else "reset"
        reasons.update(
            ln.split(": ", 1)[-1][:40]
            for ln in res.stdout.splitlines()
            if "locked idle" in ln or "refused: flash read failed" in ln
        )
    assert "idle" in outcomes.values() and "reset" in outcomes.values(), outcomes
    assert any("guard failed: OSError" in r or "flash read failed" in r for r in reasons), reasons
    # The board itself is unharmed: with the flash working again, it boots normally.
    assert board.boot().ran()[-1][1] == "1.0"
    # On the serial line: a flash failing under the guard gives the reason, never a REPL.
    n = next(k for k, v in sorted(outcomes.items()) if v == "idle")
    text = serial_output(board, eio=n)
    assert "[mpseal] locked idle: " in text, (n, text)
    no_repl(text)


def test_missing_hashlib_is_reported_as_missing_not_as_a_crash(board: VirtualBoard) -> None:
    board.set_firmware("no-sha256")
    report = board.boot()
    assert report.outcome == "idle"
    assert (
        "locked idle: firmware lacks a feature the guard needs: firmware has no hashlib.sha256"
    ) in report.output
    assert "app crashed" not in report.output
    no_repl(report.output)
    text = serial_output(board, firmware="no-sha256")
    assert "firmware has no hashlib.sha256" in text
    no_repl(text)


def test_forced_vfsrom_mount_on_firmware_without_it_is_reported_as_missing(
    board: VirtualBoard,
) -> None:
    cfg = json.loads(board.get("/mpseal/device.json"))
    board.put(json.dumps({**cfg, "mount": "vfsrom-ram"}).encode(), "/mpseal/device.json")
    board.set_firmware("no-vfsrom")
    report = board.boot()
    assert report.outcome == "idle"
    assert "firmware lacks a feature the guard needs: firmware has no vfs.VfsRom" in report.output
    assert "app crashed" not in report.output and "AttributeError" not in report.output
    board.set_firmware("")  # the same config on a firmware with VfsRom boots
    assert board.boot().ran()[-1][1] == "1.0"


CRASH_AFTER_CONFIRM = """\
from mpseal_guard import confirm
def main():
    print("running {version}")
    confirm()
    raise RuntimeError("sensor missing")
"""


def test_a_committed_image_that_crashes_at_every_boot_stops_in_locked_idle(
    project: Path, board: VirtualBoard
) -> None:
    board.install(
        release(project, "2.0", 2, CRASH_AFTER_CONFIRM), Project.load(project).trust_root()
    )
    codes: list[int] = []
    output = ""
    for _ in range(10):
        report = board.boot(max_boots=1)
        codes += report.exit_codes
        output += report.output
        if report.outcome == "idle":
            break
    # trial boot (confirm commits; the crash counts 1), then 4 more crashes, then idle
    assert codes == [17] * 5 + [18], codes
    assert (
        "locked idle: the committed image failed 5 boots in a row; not starting it again" in output
    )
    no_repl(output)
    assert board.status()["state"]["fails"] == 5
    # A new release clears the count: the board runs again.
    board.install(release(project, "3.0", 3), Project.load(project).trust_root())
    assert board.boot().ran()[-1][1] == "3.0"
    assert board.status()["state"]["fails"] == 0


def test_virtual_board_tells_crashed_from_returned(board: VirtualBoard) -> None:
    board.put(b"raise ValueError('boom')\n", "/main.py")
    report = board.boot()
    assert report.outcome == "crashed" and "ValueError: boom" in report.output
    board.put(b"print('done')\n", "/main.py")
    report = board.boot()
    assert report.outcome == "returned" and report.exit_codes == [0]
