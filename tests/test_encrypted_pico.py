"""An encrypted release decrypted and booted by the guard on the stock MicroPython v1.28.0
RPI_PICO firmware in the virtual Pico: its cryptolib (AES ECB and CBC; no CTR) unwraps the
key under machine.unique_id() and decrypts each file as the verified-files mount opens it.

One test, about 50 s: an install over the emulated USB serial line and a boot in rp2040js
(the scenario tests of test_pico_guard.py share their board; this one needs its own
encrypted project)."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import run_mpseal
from test_encrypted import SECRET, encrypted_release

from mpseal.device.picoboard import PicoBoard
from mpseal.formats import artifact
from mpseal.packaging.package import read_release_key
from mpseal.packaging.project import Project

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first

MAIN = """\
import recipe
from mpseal_guard import confirm
def main():
    print("running {version}", recipe.SECRET)
    with open("/rom/data/notes.txt") as f:
        print("notes", f.read().strip())
    confirm()
"""


def test_encrypted_release_is_decrypted_and_booted_on_the_stock_rpi_pico(tmp_path: Path) -> None:
    project = tmp_path / "proj"
    assert run_mpseal("init", project, "--board", "rp2", "--name", "hello").returncode == 0
    blob = encrypted_release(project, "1.0", 1, MAIN)
    key = read_release_key(Project.load(project).artifact_path())
    assert key is not None and artifact.decode(blob).manifest.encrypted is not None
    assert SECRET.encode() not in blob
    pico = PicoBoard.create(tmp_path / "pico")
    root = Project.load(project).trust_root()
    pico.install(blob, root, profile="dev", release_key=key)
    report = pico.boot()
    assert report.ran() == [("hello", "1.0", 1)], report.output
    assert f"running 1.0 {SECRET}" in report.output
    assert f"notes notes about {SECRET}" in report.output
    assert any(ln.endswith("(mount: verified-files)") for ln in report.guard_lines)
