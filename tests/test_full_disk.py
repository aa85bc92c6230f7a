"""A full disk is one line and exit 4, and leaves nothing half-written (issue 12).

Each command runs in its own mount namespace (``unshare --mount --map-root-user``) on a
small tmpfs filled up to a few KiB: a real ENOSPC from the kernel, no root needed where
user namespaces are allowed (CI runs as root in a container, where they are), and the
mount vanishes with the namespace. Several fill levels hit different writes.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import MPSEAL

LEVELS_KIB = [0, 4, 8, 12, 20, 32]


@dataclass
class FullDiskRun:
    returncode: int
    stderr: str
    files: list[str]  # every path left on the small disk, after the command
    rerun: int  # the same command again once space is freed (-1: not asked)


def on_full_disk(
    tmp_path: Path,
    leave_kib: int,
    command: list[str],
    *,
    setup: str = "",
    rerun: bool = False,
    size: str = "4m",
) -> FullDiskRun:
    disk = tmp_path / f"disk{leave_kib}"
    disk.mkdir()
    err = tmp_path / f"err{leave_kib}"
    cmd = " ".join(shlex.quote(str(c)) for c in command)
    script = f"""
set -u
mount -t tmpfs -o size={size} tmpfs {shlex.quote(str(disk))}
cd {shlex.quote(str(disk))}
{setup}
avail=$(df --output=avail -k . | tail -1)
n=$((avail - {leave_kib})); [ $n -gt 0 ] || n=0
dd if=/dev/zero of=.fill bs=1k count=$n 2>/dev/null
{cmd} >/dev/null 2>{shlex.quote(str(err))}
echo "rc=$?"
find . -path ./.fill -prune -o -print | sort
rm -f .fill
if [ {int(rerun)} = 1 ]; then {cmd} >/dev/null 2>&1; echo "rerun=$?"; fi
"""
    env = {**os.environ, "COLUMNS": "200"}
    env.pop("MPSEAL_PASSPHRASE", None)
    proc = subprocess.run(
        ["unshare", "--mount", "--map-root-user", "bash", "-c", script],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    rc = int(lines[0].removeprefix("rc="))
    again = int(lines[-1].removeprefix("rerun=")) if rerun else -1
    files = [ln for ln in lines[1:] if not ln.startswith("rerun=") and ln != "."]
    return FullDiskRun(rc, err.read_text(), files, again)


def assert_one_line_exit_4(run: FullDiskRun) -> None:
    assert run.returncode == 4, run.stderr
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpseal: "), run.stderr
    assert "No space left on device" in lines[0]
    assert not [f for f in run.files if f.endswith(".tmp")], run.files


@pytest.fixture(scope="module", autouse=True)
def _needs_unshare() -> None:
    # A missing tool is a failure with the fix, never a skip.
    assert shutil.which("unshare"), "util-linux 'unshare' is needed (apt-get install util-linux)"


@pytest.mark.parametrize("leave", LEVELS_KIB)
def test_init_on_a_full_disk_leaves_no_half_project(tmp_path: Path, leave: int) -> None:
    run = on_full_disk(
        tmp_path, leave, [MPSEAL, "init", "p", "--board", "esp32"], rerun=True, size="256k"
    )
    if run.returncode != 0:
        assert_one_line_exit_4(run)
        assert run.files == [], run.files  # nothing that init would then refuse
        assert run.rerun == 0  # with space again, init just works
    assert leave or run.returncode == 4


@pytest.mark.parametrize("leave", LEVELS_KIB)
def test_ca_init_on_a_full_disk_leaves_no_half_ca(tmp_path: Path, leave: int) -> None:
    run = on_full_disk(tmp_path, leave, [MPSEAL, "ca", "init", "ca"], rerun=True, size="256k")
    if run.returncode != 0:
        assert_one_line_exit_4(run)
        assert run.files == [], run.files
        assert run.rerun == 0
    assert leave or run.returncode == 4


@pytest.mark.parametrize("leave", [0, 4, 8, 12, 16, 24])
def test_build_on_a_full_disk_is_one_line(tmp_path: Path, project: Path, leave: int) -> None:
    setup = f"cp -a {shlex.quote(str(project))} p"
    run = on_full_disk(tmp_path, leave, [MPSEAL, "build", "-C", "p"], setup=setup)
    if run.returncode != 0:
        assert_one_line_exit_4(run)
        assert not [f for f in run.files if f.startswith("./p/dist/")], run.files
    assert leave or run.returncode == 4


def test_sim_create_on_a_full_disk_leaves_no_board(tmp_path: Path) -> None:
    run = on_full_disk(tmp_path, 64, [MPSEAL, "sim", "create", "--sim", "b"], size="1m")
    assert_one_line_exit_4(run)
    assert not [f for f in run.files if f.endswith(("flash.img", "board.json"))], run.files
