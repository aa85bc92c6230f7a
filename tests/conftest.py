"""Shared fixtures: a fresh mpseal project, the CLI as a real subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent

# The virtual Pico's flash chip timing (45 ms a sector erase, in emulated time) is waited
# out in wall time whenever the emulated CPU idles: about half the wall time of a Pico
# test that writes. Behaviour does not depend on it (cuts count operations); the tests
# that measure it ask for it (test_pico_emulator's flash timing test, benchmarks/).
os.environ.setdefault("MPSEAL_PICO_FLASH_TIMING", "0")
MPSEAL = BIN / "mpseal"


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str


def run_mpseal(
    *args: str | os.PathLike[str],
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 120,
) -> Run:
    """Run the installed ``mpseal`` console script exactly as a user would."""
    full_env = {k: v for k, v in os.environ.items() if k != "MPSEAL_PASSPHRASE"}
    full_env.update({"COLUMNS": "200", **(env or {})})
    proc = subprocess.run(
        [str(MPSEAL), *map(str, args)],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    return Run(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def mpseal():
    return run_mpseal


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A new project for the unix board (the virtual board's VM), built once."""
    folder = tmp_path / "proj"
    res = run_mpseal("init", folder, "--board", "unix", "--name", "hello")
    assert res.returncode == 0, res.stderr
    return folder


@pytest.fixture
def built(project: Path) -> Path:
    res = run_mpseal("build", "-C", project)
    assert res.returncode == 0, res.stderr
    return project / "dist" / "hello-1.0.0.mpseal"


# -- Boards on a serial line (tests/serial_boards.py) -------------------------------
# The micro:bit firmware in QEMU and the virtual board, behind the same transport.
# QEMU missing is a failure with the install hint, never a skip.

from serial_boards import MicrobitBoard, SerialBoard, VirtualBoardOnPty, qemu_microbit  # noqa: E402


@pytest.fixture
def microbit_pty():
    """The pty of a fresh micro:bit (MicroPython 1.9.2) in QEMU, at its REPL; killed after."""
    with qemu_microbit() as pts:
        yield pts


@pytest.fixture(params=["microbit", "virtual"])
def serial_board(request, tmp_path: Path):
    """Each test runs on the micro:bit in QEMU and on the virtual board over a pty."""
    if request.param == "microbit":
        with qemu_microbit() as pts:
            board: SerialBoard = MicrobitBoard(pts)
            try:
                yield board
            finally:
                board.close()
    else:
        board = VirtualBoardOnPty(tmp_path / "board")
        try:
            yield board
        finally:
            board.close()


# -- A real PostgreSQL server (tests/postgres.py), one per test session ------------------

from postgres import postgres_server  # noqa: E402


@pytest.fixture(scope="session")
def pg_url():
    with postgres_server() as url:
        yield url


@pytest.fixture(params=["sqlite", "postgresql"])
def db_url(request, tmp_path: Path) -> str:
    """Each registry/server test runs on SQLite (the default) and on a real PostgreSQL."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mpseal.db'}"
    url = request.getfixturevalue("pg_url")
    # A clean schema for each test on the shared server.
    import sqlalchemy as sa

    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    return url


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Files with a test marked ``slow`` run first (stable order otherwise).

    scripts/check runs whole files per pytest-xdist worker (``--dist loadfile``) with
    ``--no-loadscope-reorder``, so this order is the order workers take files in: the long
    ones (the virtual Pico, power cuts, the browser) start at once and the short ones fill
    in behind them, instead of one long file running alone at the end.
    """
    slow = {item.path for item in items if item.get_closest_marker("slow")}
    items.sort(key=lambda item: item.path not in slow)
