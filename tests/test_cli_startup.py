"""Start-up a person does not notice (issue 12): `mpseal --help` took 0.18 s against
mpremote's 0.075 s, because click and every command module were imported to list them."""

from __future__ import annotations

import importlib
import statistics
import subprocess
import sys
import time

from conftest import BIN, MPSEAL

from mpseal.cli import group
from mpseal.cli.help_text import HELP
from mpseal.cli.main import render_help


def test_help_text_is_what_click_renders() -> None:
    assert render_help() == HELP, "run: python -m mpseal.cli.main --write-help"


def test_every_command_is_found_without_importing_the_others() -> None:
    found = {}
    for module in group.COMMAND_MODULES:
        for cmd in importlib.import_module(module).COMMANDS:
            found[cmd.name] = module
    assert found == group.LAZY_COMMANDS


def test_help_imports_neither_click_nor_any_command() -> None:
    res = subprocess.run(
        [sys.executable, "-X", "importtime", str(MPSEAL), "--help"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0 and res.stdout == HELP
    imported = {ln.rsplit("|", 1)[-1].strip() for ln in res.stderr.splitlines()}
    assert not {m for m in imported if m.split(".")[0] in ("click", "rich", "cryptography")}
    assert not {
        m
        for m in imported
        if m.startswith("mpseal.")
        and m not in ("mpseal.cli", "mpseal.cli.main", "mpseal.cli.help_text")
    }, imported


def _median_seconds(argv: list[str], n: int = 7) -> float:
    times = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(argv, capture_output=True, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def test_help_starts_no_slower_than_mpremote() -> None:
    """Measured in one run, interleaved: the ratio holds on a busy machine too."""
    mpseal = _median_seconds([str(MPSEAL), "--help"])
    mpremote = _median_seconds([str(BIN / "mpremote"), "--help"])
    print(
        f"mpseal --help {mpseal * 1000:.0f} ms, mpremote --help {mpremote * 1000:.0f} ms, "
        f"ratio {mpseal / mpremote:.2f}"
    )
    assert mpseal <= mpremote * 1.1
