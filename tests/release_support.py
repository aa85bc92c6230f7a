"""Releases and virtual boards for the audit and warranty tests."""

from __future__ import annotations

import os
import re
from pathlib import Path

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.device.sim import VirtualBoard
from mpseal.formats import envelope, jsondoc
from mpseal.packaging.package import build, read_release_key
from mpseal.packaging.project import Project

RETURNING_MAIN = """\
from mpseal_guard import confirm
def main():
    print("running {version}")
    confirm()
"""

# Confirms its trial, then runs for ever: what a product's main loop does.
LOOPING_MAIN = """\
import time
from mpseal_guard import confirm
def main():
    print("running {version}")
    confirm()
    while True:
        time.sleep(1)
"""


def release(
    project: Path,
    version: str,
    counter: int,
    main: str = RETURNING_MAIN,
    profile: str | None = None,
    board: str | None = None,
) -> bytes:
    """Set the project's version/counter/main.py (and profile, board), build, return the
    artifact. ``main`` may name ``{version}``."""
    cfg = project / "mpseal.toml"
    text = cfg.read_text()
    text = re.sub(r'version = "[^"]*"', f'version = "{version}"', text, count=1)
    text = re.sub(r"security_counter = \d+", f"security_counter = {counter}", text)
    if profile:
        text = re.sub(r'profile = "[^"]*"', f'profile = "{profile}"', text)
    if board:
        text = re.sub(r'board = "[^"]*"', f'board = "{board}"', text)
    cfg.write_text(text)
    (project / "app" / "main.py").write_text(main.format(version=version))
    proj = Project.load(project)
    return build(proj, proj.release_signer()).path.read_bytes()


def board_running(
    project: Path, folder: Path, profile: str = "dev", main: str = RETURNING_MAIN
) -> VirtualBoard:
    """A virtual board whose guard (``profile``) runs release 1.0.0 (counter 1), committed."""
    blob = release(project, "1.0.0", 1, main, profile=profile)
    board = VirtualBoard.create(folder, flash_size=1024 * 1024)
    board.install(blob, Project.load(project).trust_root(), profile=profile)
    report = board.boot() if main == RETURNING_MAIN else None
    if report is not None:
        assert report.ran() == [("hello", "1.0.0", 1)], report.output
    return board


def unlock_token(signer: PrivateKeySigner, device_id: str, n: int, profile: str = "dev") -> bytes:
    """A service unlock token (what `mpseal unlock-token` writes), signed by ``signer``."""
    payload = jsondoc.dumps(
        {"type": "mpseal-unlock", "device": device_id, "n": n, "profile": profile}
    )
    return envelope.seal(b"MPSU", payload, [signer]).encode()


def boot_files_in_a_heap_below_the_image(project: Path, board: VirtualBoard) -> None:
    """Release 1.0 (field) of a 256 KB app of eight 32 KB files boots on ``board`` in a heap
    of the guard's code (with its file system, mpseal_appfs) + 224 KB, which cannot hold
    the image: the verified-files mount reads
    each file alone (decrypted alone, when the project encrypts; the key is the build's)."""
    data = project / "app" / "data"
    data.mkdir(exist_ok=True)
    for i in range(8):
        (data / f"part{i}.bin").write_bytes(os.urandom(32 * 1024))
    main = (
        "from mpseal_guard import confirm\ndef main():\n    n = 0\n"
        "    for i in range(8):\n        with open('/rom/data/part%d.bin' % i, 'rb') as f:\n"
        "            n += len(f.read())\n    print('read', n)\n    confirm()\n"
    )
    blob = release(project, "1.0", 1, main, profile="field")
    key = read_release_key(Project.load(project).artifact_path())
    board.install_guard(Project.load(project).trust_root(), "field")
    # its file system too (mpseal_encfs: an encrypted release)
    code = board.command("codemem", "mpseal_appfs", "mpseal_encfs").replies()[-1]
    assert isinstance(code, int)
    board.install(blob, Project.load(project).trust_root(), profile="field", release_key=key)
    heap = f"{(code + 224 * 1024) // 1024}K"  # code + 224 KB: the 256 KB image does not fit
    report = board.boot(heapsize=heap)
    assert "read 262144" in report.output, report.output
    assert any(ln.endswith("(mount: verified-files)") for ln in report.guard_lines)
