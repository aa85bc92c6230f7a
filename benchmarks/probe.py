#!/usr/bin/env python3
"""What probing a board before writing to it costs: wall time and serial bytes, per board.

``mpseal install`` and ``mpseal provision`` run ``runtime/mpseal_probe.py`` on the board
first (device/probe.py). Measured here on real firmware, one fresh connection each, in
one run: the virtual board (unix port VM, littlefs) on a pty; MicroPython 1.9.2 on a
micro:bit in QEMU (no raw-paste: paced); stock v1.28.0 MPS2-AN385 (Cortex-M3) in QEMU;
stock v1.28.0 RPI_PICO in rp2040js (the virtual Pico). Bytes are counted by mpseal's
transport (tx: host to board); ``execs`` counts the raw REPL round trips (helper
definitions sent length-checked, the probe, freeing the helper). Emulator wall times
vary with the load of the machine; the bytes and execs do not.

Run: .venv/bin/python benchmarks/probe.py [--json] [--boards virtual,microbit,mps2,pico]
Exit status: 0 when measured, 2 if the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from mpseal.device.probe import probe_board
from mpseal.device.serialboard import SerialTransport
from mpseal.errors import MpsealError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


@contextmanager
def virtual(work: Path) -> Iterator[str]:
    from mpseal.device.sim import VirtualBoard
    from mpseal.device.simlink import SimLink

    link = SimLink(VirtualBoard.create(work / "v", flash_size=512 * 1024).flash)
    try:
        yield link.path
    finally:
        link.close()


@contextmanager
def microbit(work: Path) -> Iterator[str]:
    from serial_boards import qemu_microbit

    with qemu_microbit() as pts:
        yield pts


@contextmanager
def mps2(work: Path) -> Iterator[str]:
    from serial_boards import qemu_mps2_an385

    with qemu_mps2_an385() as pts:
        yield pts


@contextmanager
def pico(work: Path) -> Iterator[str]:
    from mpseal.device.pico import VirtualPico

    board = VirtualPico.create(work / "pico")
    try:
        path = board.start()
        board.wait_repl(30)
        yield path
    finally:
        board.stop()


BOARDS: dict[str, Callable[[Path], AbstractContextManager[str]]] = {
    "virtual": virtual,
    "microbit": microbit,
    "mps2": mps2,
    "pico": pico,
}


def measure(name: str, work: Path) -> dict[str, Any]:
    with BOARDS[name](work) as port:
        t = SerialTransport(port)
        try:
            t.exec("print(1)")  # enters the raw REPL
            execs = 0
            plain_exec = t.exec

            def counting_exec(code: str, timeout: float = 10.0) -> str:
                nonlocal execs
                execs += 1
                return plain_exec(code, timeout)

            t.exec = counting_exec  # type: ignore[method-assign]
            tx0, rx0 = t.wire.tx, t.wire.rx
            t0 = time.perf_counter()
            facts = probe_board(t)
            took = time.perf_counter() - t0
            return {
                "board": name,
                "firmware": f"MicroPython {facts.version_text} on {facts.platform}",
                "seconds": round(took, 3),
                "tx_bytes": t.wire.tx - tx0,
                "rx_bytes": t.wire.rx - rx0,
                "execs": execs,
            }
        finally:
            t.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--boards", default=",".join(BOARDS))
    args = ap.parse_args()
    names = [n for n in args.boards.split(",") if n]
    if any(n not in BOARDS for n in names):
        print(f"boards: {', '.join(BOARDS)}", file=sys.stderr)
        return 2
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            try:
                rows.append(measure(name, Path(tmp)))
            except MpsealError as e:
                print(f"probe benchmark: {name}: {e}", file=sys.stderr)
                return 2
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    print(f"{'board':<9} {'firmware':<36} {'probe s':>8} {'tx B':>7} {'rx B':>6} {'execs':>6}")
    for r in rows:
        print(
            f"{r['board']:<9} {r['firmware']:<36} {r['seconds']:>8.2f} {r['tx_bytes']:>7} "
            f"{r['rx_bytes']:>6} {r['execs']:>6}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
