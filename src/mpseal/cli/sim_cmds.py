"""``mpseal sim``: the virtual board (MicroPython unix VM + littlefs flash image)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from mpseal.build.project import Project
from mpseal.cli.common import emit_json, out_console
from mpseal.device.sim import DEFAULT_FLASH, VirtualBoard
from mpseal.formats.boards import BOARDS
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS

sim_dir_option = click.option(
    "--sim", "sim_dir", type=click.Path(file_okay=False, path_type=Path), default="sim/default",
    show_default=True, help="Folder of the virtual board.")


@click.group()
def sim() -> None:
    """The virtual board: real MicroPython (unix port) with a littlefs flash image."""


@sim.command()
@sim_dir_option
@click.option("--board", type=click.Choice(sorted(BOARDS)), default="unix", show_default=True,
              help="Board the virtual device claims to be (the VM runs x64 code).")
@click.option("--flash-size", type=click.IntRange(64 * 1024), default=DEFAULT_FLASH,
              show_default=True, help="Flash size in bytes (multiple of 4096).")
@click.option("--heapsize", help="MicroPython heap, e.g. 64K (default: the VM's 2M).")
def create(sim_dir: Path, board: str, flash_size: int, heapsize: str | None) -> None:
    """Create a virtual board with an empty littlefs flash."""
    VirtualBoard.create(sim_dir, board=board, flash_size=flash_size, heapsize=heapsize)
    out_console.print(f"Created virtual board {sim_dir} ({board}, {flash_size // 1024} KiB flash)")


@sim.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@sim_dir_option
@click.option("-C", "--project", "project_dir", type=click.Path(file_okay=False, path_type=Path),
              default=".", help="Project whose trust root the board carries.")
@click.option("--json", "as_json", is_flag=True)
def install(file: Path, sim_dir: Path, project_dir: Path, as_json: bool) -> None:
    """Verify an artifact for this board and copy it (and the trust root) onto its flash."""
    board = VirtualBoard(sim_dir)
    project = Project.load(project_dir)
    blob = read_limited(file, DEFAULT_LIMITS.artifact_max_length, "artifact")
    rel = board.install(blob, project.trust_root())
    m = rel.manifest
    if as_json:
        emit_json({"installed": str(file), "app": m.app, "version": m.version,
                   "security_counter": m.counter})
        return
    out_console.print(f"Installed {m.app} {m.version} (counter {m.counter}) on {sim_dir} "
                      "after checking its signature and image hash")


@sim.command()
@sim_dir_option
@click.option("--heapsize", help="Override the heap, e.g. 32K.")
def run(sim_dir: Path, heapsize: str | None) -> None:
    """Mount the installed image in the MicroPython VM and run the app's main()."""
    board = VirtualBoard(sim_dir)
    res = board.run(heapsize=heapsize, stream=True)
    if res.returncode != 0:
        sys.stderr.write(res.stderr)
        raise click.ClickException(f"the app ended with an error (VM exit code {res.returncode})")


@sim.command(name="ls")
@click.argument("folder", default="/")
@sim_dir_option
@click.option("--json", "as_json", is_flag=True)
def ls(folder: str, sim_dir: Path, as_json: bool) -> None:
    """List a folder of the virtual board's flash."""
    entries = VirtualBoard(sim_dir).listdir(folder)
    if as_json:
        emit_json([{"name": n, "dir": d, "size": s} for n, d, s in entries])
        return
    for name, is_dir, size in entries:
        out_console.print(f"{name}/" if is_dir else f"{name}  {size}")


COMMANDS = [sim]
