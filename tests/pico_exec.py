"""A fresh virtual Pico (stock RPI_PICO v1.28.0 in rp2040js) with modules in /lib.

For tests that run device code on the real RP2040 firmware: the Cortex-M0+ executes only
Thumb-1, so this is where p256_thumb's assembly proves it uses nothing else.
"""

from __future__ import annotations

import re
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


def committed_pico_and_next_release(tmp_path: Path) -> tuple[Path, bytes, bytes]:
    """An ``mpseal init --board rp2`` project's 1.0.0 installed and committed on a new
    virtual Pico (by the CLI, as a user does), and its 1.1.0 (counter 2) built next:
    (the board's folder, the 1.0.0 artifact, the 1.1.0 artifact). The power-cut tests'
    starting point."""
    from conftest import run_mpseal

    project = tmp_path / "proj"
    assert run_mpseal("init", project, "--board", "rp2", "--name", "hello").returncode == 0
    assert run_mpseal("build", "-C", project).returncode == 0
    old = project / "dist" / "hello-1.0.0.mpseal"
    sim = tmp_path / "pico"
    assert run_mpseal("sim", "create", "--board", "rp2", "--sim", sim).returncode == 0
    res = run_mpseal("sim", "install", old, "-C", project, "--sim", sim, timeout=600)
    assert res.returncode == 0, res.stderr
    res = run_mpseal("sim", "boot", "--sim", sim, timeout=600)
    assert res.returncode == 0 and "committed hello 1.0.0" in res.stdout, res.stdout[-800:]
    toml = project / "mpseal.toml"
    text = re.sub(r'(?m)^version = "1.0.0"', 'version = "1.1.0"', toml.read_text())
    toml.write_text(re.sub(r"(?m)^security_counter = 1\b", "security_counter = 2", text))
    assert run_mpseal("build", "-C", project).returncode == 0
    return sim, old.read_bytes(), (project / "dist" / "hello-1.1.0.mpseal").read_bytes()
