"""A fresh virtual Pico (stock RPI_PICO v1.28.0 in rp2040js) with modules in /lib.

For tests that run device code on the real RP2040 firmware: the Cortex-M0+ executes only
Thumb-1, so this is where p256_thumb's assembly proves it uses nothing else.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from mpseal.device.pico import VirtualPico
from mpseal.device.serialboard import SerialTransport


@contextmanager
def pico_with(files: dict[str, bytes]) -> Iterator[SerialTransport]:
    """A raw-REPL link to a new virtual Pico with ``files`` (name -> bytes) in /lib."""
    with tempfile.TemporaryDirectory(prefix="mpseal-pico-") as tmp:
        board = VirtualPico.create(Path(tmp) / "board")
        board.start()
        try:
            board.wait_repl(60)
            with SerialTransport(board.path) as link:
                link.exec("import os\ntry:\n    os.mkdir('/lib')\nexcept OSError:\n    pass\n")
                for name, data in files.items():
                    link.write_file(f"/lib/{name}", data)
                yield link
        finally:
            board.stop()
