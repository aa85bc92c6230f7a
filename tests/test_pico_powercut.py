"""Power cuts on the virtual Pico: the stock RPI_PICO firmware's own littlefs, cut at
every flash write (each erase and each program) of stage -> trial boot -> committed boot.

Threat tier: T0 (no attacker: the power fails). After every cut the board, powered on
again, boots a validly signed release (the old or the new one) and its security counter
never goes down. Each step runs whole once with its flash operations recorded; the flash a
cut at each of them leaves is powered on and checked, and three of them per step are also
cut for real: the same operations and files, and that flash boots too (check_update_pico).
Slow (one power-on per write), so it runs once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pico_exec import committed_pico_and_next_release

from mpseal.device.picoboard import PicoBoard
from mpseal.device.powercut import check_update_pico


@pytest.mark.slow
def test_power_cut_at_every_write_of_an_update_on_the_virtual_pico(tmp_path: Path) -> None:
    sim, _, new = committed_pico_and_next_release(tmp_path)

    report = check_update_pico(PicoBoard(sim), new, {"1.0.0", "1.1.0"}, min_counter=1)

    assert all(n > 0 for n in report.writes_per_step.values()), report.writes_per_step
    assert report.tried == sum(report.writes_per_step.values())
    assert report.survived == report.tried, report.failures()[:3]
    # three real cuts a step followed the recorded writes, left the same files and booted
    assert len(report.confirmed) == 9 and all(p.ok for p in report.confirmed), report.confirmed
    # A flash already powered on is not powered on again: the point has that power-on's result.
    booted = {(p.step, p.write): p for p in report.points if p.same_as is None}
    for p in report.points + report.confirmed:
        if p.same_as is not None:
            first = booted[p.same_as]
            assert (p.ran, p.counter, p.ok) == (first.ran, first.counter, first.ok), p
    assert len(booted) == report.booted - sum(p.same_as is None for p in report.confirmed)
    # The update itself went through: the board now runs 1.1.0, committed.
    status = PicoBoard(sim).status()
    assert status["state"]["committed"] == "b" and status["state"]["trial"] is None
    assert status["state"]["counter"] == 2
    print(
        f"virtual Pico power cuts: {report.tried} points tried, {report.survived} survived "
        f"({report.writes_per_step}; {report.booted} powered on, with the real cuts)"
    )


def test_flash_trace_replays_erases_and_programs_and_refuses_a_bad_line() -> None:
    from mpseal.device.powercut import FlashOp
    from mpseal.errors import MpsealError

    flash = bytearray(b"\x00" * 16)
    for line in ("E 4 8", "P 5 2 0a0b", "P 0 0"):
        FlashOp.parse(line).apply(flash)
    assert flash == b"\x00" * 4 + b"\xff\x0a\x0b" + b"\xff" * 5 + b"\x00" * 4
    for bad in ("P 0 2 0a", "X 0 1", "E 0", "P 0 1 zz"):
        with pytest.raises(MpsealError, match="bad flash trace line"):
            FlashOp.parse(bad)


def test_real_cuts_confirm_the_first_and_last_writes_and_ones_between() -> None:
    from mpseal.device.powercut import _spread

    assert _spread(15, 3) == {1, 8, 15}
    assert _spread(2, 3) == {1, 2} and _spread(1, 3) == {1}
    assert _spread(0, 3) == set() and _spread(10, 0) == set() and _spread(10, 1) == {10}


class _Flash:
    def __init__(self, data: bytes) -> None:
        self.data = data

    def read_bytes(self) -> bytes:
        return self.data

    def write_bytes(self, data: bytes) -> None:
        self.data = data


class _Board:
    """What _confirm reads of a board: its flash, and the files in it (here: by a table)."""

    def __init__(self, flash: bytes, files: dict[bytes, dict[str, tuple[int, str]]]) -> None:
        self.flash = _Flash(flash)
        self._files = files

    def files(self) -> dict[str, tuple[int, str]]:
        return self._files[self.flash.data]


def test_a_real_cut_must_follow_the_recorded_writes_and_leave_the_same_files() -> None:
    from mpseal.device.powercut import FlashOp, _confirm
    from mpseal.errors import MpsealError

    recorded = [FlashOp(0, 4096, None), FlashOp(0, 4, b"abcd")]
    same_places = [FlashOp(0, 4096, None), FlashOp(0, 4, b"abce")]  # an mtime's bytes
    files = {"/main.py": (4, "ab" * 32)}
    board = _Board(b"real", {b"real": files, b"rec": dict(files)})
    _confirm(board, "stage", 3, recorded, same_places, b"rec")  # type: ignore[arg-type]
    assert board.flash.data == b"real"
    elsewhere = [FlashOp(4096, 4096, None), FlashOp(0, 4, b"abcd")]
    with pytest.raises(MpsealError, match="followed other writes"):
        _confirm(board, "stage", 3, recorded, elsewhere, b"rec")  # type: ignore[arg-type]
    board = _Board(b"real", {b"real": files, b"rec": {"/main.py": (4, "cd" * 32)}})
    with pytest.raises(MpsealError, match="left other files"):
        _confirm(board, "stage", 3, recorded, same_places, b"rec")  # type: ignore[arg-type]


def test_a_flash_already_powered_on_is_not_powered_on_again() -> None:
    from mpseal.device.powercut import CutPoint, _PowerOns

    calls: list[tuple[str, int, bool]] = []

    def power_on(step: str, n: int, torn: bool) -> CutPoint:
        calls.append((step, n, torn))
        return CutPoint(step, n, torn, "1.0.0", 1, True)

    power_ons = _PowerOns(power_on)
    first = power_ons.point(b"\xff" * 8, "stage", 3)
    again = power_ons.point(b"\xff" * 8, "trial boot", 2, torn=True)  # an erase of erased
    other = power_ons.point(b"\xff" * 7 + b"\x00", "trial boot", 3)
    assert calls == [("stage", 3, False), ("trial boot", 3, False)]
    assert first.same_as is None and other.same_as is None
    assert (again.step, again.write, again.torn, again.same_as) == (
        "trial boot",
        2,
        True,
        ("stage", 3),
    )
    assert (again.ran, again.counter, again.ok) == (first.ran, first.counter, first.ok)
