"""The virtual Raspberry Pi Pico: stock MicroPython v1.28.0 RPI_PICO in rp2040js.

What a user of a real Pico relies on, checked on the stock image: it boots to the
REPL on its USB serial port, raw REPL and raw-paste work (mpseal's transport and
mpremote), littlefs keeps files across soft reset, machine.reset(), the watchdog and
power cycles, each board has its own machine.unique_id(), and a power cut at the
N-th flash write leaves the flash with exactly the N-1 writes before it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpseal.device.pico import CPU_HZ, VirtualPico
from mpseal.device.serialboard import SerialTransport


def _mpremote() -> str:
    return shutil.which("mpremote") or str(Path(sys.executable).parent / "mpremote")


@pytest.fixture(scope="module")
def pico(tmp_path_factory: pytest.TempPathFactory):
    board = VirtualPico.create(tmp_path_factory.mktemp("pico") / "board")
    board.start()
    board.wait_repl(30)
    yield board
    board.stop()


@pytest.fixture
def link(pico: VirtualPico):
    transport = SerialTransport(pico.path)
    yield transport
    transport.close()


def test_boots_to_repl_banner_on_usb_serial(tmp_path: Path) -> None:
    board = VirtualPico.create(tmp_path / "b")
    try:
        t0 = time.monotonic()
        board.start()
        board.wait_repl(30)
        wall = time.monotonic() - t0
        banner = board.output.decode()
        assert "MicroPython v1.28.0" in banner and "Raspberry Pi Pico with RP2040" in banner
        counters = board.counters()
        # A fresh board formats its littlefs at first boot: flash writes went through.
        assert counters.writes > 0 and counters.cycles > 0
        assert wall < 20, f"boot to REPL took {wall:.1f} s wall"
        pid = board.pid
    finally:
        board.stop()
    assert not Path(f"/proc/{pid}").exists(), "stop() left the emulator's node process"


def test_raw_repl_and_raw_paste_through_mpseal_transport(link: SerialTransport) -> None:
    caps = link.capabilities()
    assert caps.raw_paste
    assert (
        link.exec("import sys; print(sys.implementation._machine)").strip()
        == "Raspberry Pi Pico with RP2040"
    )
    data = bytes(range(256)) * 40  # 10 KB through raw-paste
    link.write_file("/blob.bin", data)
    assert link.read_file("/blob.bin", 20000) == data


def test_littlefs_keeps_files_across_soft_reset(pico: VirtualPico, link: SerialTransport) -> None:
    link.write_file("/soft.txt", b"kept")
    link.soft_reset()
    assert link.exec("print(open('/soft.txt').read())").strip() == "kept"
    assert link.eval("'mpx_id' in globals()") is False  # the heap really was reset


def test_machine_reset_restarts_the_chip_and_keeps_flash(pico: VirtualPico) -> None:
    with SerialTransport(pico.path) as link:
        link.write_file("/reset.txt", b"before reset")
        resets = pico.counters().resets
        pico.send(b"\x03\x02import machine; machine.reset()\r")
        assert pico.wait_event("reset", 20, count=resets + 1)
        pico.wait_repl(20)
    with SerialTransport(pico.path) as link:
        assert link.exec("print(open('/reset.txt').read())").strip() == "before reset"
        assert (
            link.eval("__import__('machine').reset_cause() == __import__('machine').WDT_RESET")
            is True
        )


def test_watchdog_timeout_resets_the_chip(pico: VirtualPico) -> None:
    resets = pico.counters().resets
    # An app that enables the WDT and stops feeding it: the chip must restart.
    pico.send(b"\x03\x02from machine import WDT; w = WDT(timeout=200)\r")
    assert pico.wait_event("reset", 20, count=resets + 1), "the watchdog never reset it"
    assert any(e.get("reason") == "timer" for e in pico.events if e.get("event") == "reset")
    pico.wait_repl(20)


def test_power_cycle_keeps_files_and_reports_power_on(pico: VirtualPico) -> None:
    with SerialTransport(pico.path) as link:
        link.write_file("/power.txt", b"survives")
    pico.power_cycle()
    pico.wait_repl(30)
    assert pico.counters().resets == 0
    with SerialTransport(pico.path) as link:
        assert link.exec("print(open('/power.txt').read())").strip() == "survives"
        assert (
            link.eval("__import__('machine').reset_cause() == __import__('machine').PWRON_RESET")
            is True
        )


def test_two_boards_have_distinct_unique_ids(pico: VirtualPico, tmp_path: Path) -> None:
    other = VirtualPico.create(tmp_path / "other")
    try:
        other.start()
        other.wait_repl(30)
        with SerialTransport(other.path) as link:
            theirs = link.eval("__import__('machine').unique_id()")
    finally:
        other.stop()
    with SerialTransport(pico.path) as link:
        ours = link.eval("__import__('machine').unique_id()")
    assert ours == pico.unique_id and theirs == other.unique_id
    assert ours != theirs and ours != bytes(8)


def test_mpremote_talks_to_it(pico: VirtualPico, tmp_path: Path) -> None:
    src = tmp_path / "m.txt"
    src.write_bytes(b"from mpremote")
    mpremote = _mpremote()
    res = subprocess.run(
        [
            mpremote,
            "connect",
            pico.path,
            "fs",
            "cp",
            str(src),
            ":m.txt",
            "+",
            "exec",
            "print(open('m.txt').read())",
        ],
        check=False,
        capture_output=True,
        timeout=60,
    )
    assert res.returncode == 0, res.stderr.decode()
    assert b"from mpremote" in res.stdout


def test_cycle_counter_counts_emulated_cycles(pico: VirtualPico) -> None:
    with SerialTransport(pico.path) as link:
        link.exec("def spin(n):\n for i in range(n): pass\nspin(10)")
        c0 = pico.counters()
        us = link.eval(
            "(lambda t: (spin(100000), __import__('time').ticks_diff("
            "__import__('time').ticks_us(), t))[1])(__import__('time').ticks_us())",
            timeout=60,
        )
        c1 = pico.counters()
    assert isinstance(us, int)
    on_device = us * CPU_HZ // 1_000_000
    host = c1.cycles - c0.cycles
    # The host's counter spans the device's timed region plus the exec around it.
    assert on_device <= host + CPU_HZ // 1000 and host < on_device * 1.5 + 20_000_000
    assert 200 < on_device / 100000 < 2000  # cycles per empty loop iteration


WRITER = b"""\
import os
for i in range(3):
    with open('/f%d.txt' % i, 'w') as f:
        f.write('data %d ' % i * 200)
os.rename('/f0.txt', '/g0.txt')
os.remove('/f1.txt')
print('WRITER DONE')
"""


def _replay(image: bytes, ops: list[str]) -> bytes:
    flash = bytearray(image)
    for op in ops:
        kind, off, n, *rest = op.split()
        o, n_ = int(off), int(n)
        if kind == "E":
            flash[o : o + n_] = b"\xff" * n_
        else:
            data = bytes.fromhex(rest[0])
            flash[o : o + n_] = bytes(a & b for a, b in zip(flash[o : o + n_], data, strict=True))
    return bytes(flash)


def test_power_cut_at_write_n_leaves_exactly_n_minus_1_writes(tmp_path: Path) -> None:
    board = VirtualPico.create(tmp_path / "cut")
    try:
        board.start()
        board.wait_repl(30)
        with SerialTransport(board.path) as link:
            link.write_file("/main.py", WRITER)
        board.power_off()
        before = board.flash.read_bytes()
        trace = tmp_path / "trace.txt"
        board.start(trace=trace)
        assert board.wait_output(b"WRITER DONE", 30)
        board.power_off()
        ops = trace.read_text().splitlines()
        assert len(ops) >= 6  # every file write, the rename and the remove reach flash
        assert board.flash.read_bytes() == _replay(before, ops)
        for n in sorted({1, 2, len(ops) // 2, len(ops) - 1, len(ops)}):
            board.flash.write_bytes(before)
            board.start(cut_after=n)
            assert board.wait_off(30), f"no power cut at write {n}"
            assert board.cut is not None and board.cut["writes"] == n - 1
            board.power_off()
            assert board.flash.read_bytes() == _replay(before, ops[: n - 1]), f"cut at {n}"
        # After the last cut the board boots again and littlefs mounts.
        board.start()
        assert board.wait_output(b"WRITER DONE", 30)
        # A cut armed while running counts from then: the host's write is lost part-way.
        board.wait_repl(30)
        done = board.counters().writes
        board.arm_cut(2)
        board.send(b"\x03open('/late.txt', 'w').write('x' * 5000)\r")
        assert board.wait_off(30)
        assert board.cut is not None and board.cut["writes"] == done + 1
    finally:
        board.stop()


def test_flash_writes_take_the_chips_typical_time(tmp_path: Path) -> None:
    """A first boot formats littlefs; with flash timing on, each erase and page program
    adds the W25Q16JV's typical time to the cycle count, exactly."""
    got = {}
    for timing in (False, True):
        board = VirtualPico.create(tmp_path / str(timing), unique_id=bytes(range(8)))
        trace = tmp_path / f"trace-{timing}.txt"
        try:
            board.start(trace=trace, flash_timing=timing)
            board.wait_repl(30)
            got[timing] = board.counters()
        finally:
            board.stop()
    ops = trace.read_text().splitlines()
    expect_ns = 0.0
    for op in ops:
        kind, off, n = op.split()[:3]
        o, size = int(off), int(n)
        if kind == "E":
            a = o
            while a < o + size:
                block = a % 65536 == 0 and o + size - a >= 65536
                expect_ns += 150e6 if block else 45e6
                a += 65536 if block else 4096
        else:
            expect_ns += ((o + size - 1) // 256 - o // 256 + 1) * 0.4e6
    assert ops and got[True].writes == got[False].writes == len(ops)
    assert got[True].cycles - got[False].cycles == round(expect_ns / 8)


def test_romfs_image_partition_is_written_through_rp2_flash(tmp_path: Path) -> None:
    """The RPI_PICO_ROMFS build: vfs.rom_ioctl(2, 0) is an rp2.Flash over the 256 KiB
    partition; rom_ioctl(3|4|5) answer -22 (EINVAL); writeblocks reaches the chip and the
    memory-mapped view reads it back, after a power cycle too."""
    board = VirtualPico.create(tmp_path / "romfs", romfs=True)
    try:
        board.start()
        board.wait_repl(30)
        with SerialTransport(board.path) as link:
            got = link.eval(
                "(lambda v, d: (len(memoryview(d)), v.rom_ioctl(3, 0, 4096), "
                "d.ioctl(6, 0), d.writeblocks(0, b'mpseal-romfs' * 400)))"
                "(__import__('vfs'), __import__('vfs').rom_ioctl(2, 0))"
            )
            assert got == (262144, -22, 0, None)
            assert (
                link.eval("bytes(memoryview(__import__('vfs').rom_ioctl(2, 0))[:12])")
                == b"mpseal-romfs"
            )
        board.power_cycle()
        board.wait_repl(30)
        with SerialTransport(board.path) as link:
            assert (
                link.eval("bytes(memoryview(__import__('vfs').rom_ioctl(2, 0))[4788:4804])")
                == b"mpseal-romfs" + b"\xff" * 4
            )
    finally:
        board.stop()
