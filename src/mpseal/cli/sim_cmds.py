"""``mpseal sim``: the virtual board (MicroPython unix VM + littlefs flash image)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import click

from mpseal.cli.common import emit_json, out_console, project_option
from mpseal.device.picoboard import PicoBoard, open_sim
from mpseal.device.sim import DEFAULT_FLASH, VirtualBoard
from mpseal.device.vm import POWERED_OFF
from mpseal.errors import ConfigError, MpsealError, PolicyError, TransportError, UsageError
from mpseal.formats.boards import BOARDS
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.package import read_release_key
from mpseal.packaging.project import Project

sim_dir_option = click.option(
    "--sim",
    "sim_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default="sim/default",
    show_default=True,
    help="Folder of the virtual board.",
)


run_for_option = click.option(
    "--run-for",
    type=click.FloatRange(0.5, 24 * 3600),
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="Power off an app that is still running after this long (field/sealed apps never return).",
)


@click.group()
def sim() -> None:
    """Virtual boards: real MicroPython (unix port) with a littlefs flash image, or a
    virtual Raspberry Pi Pico (stock firmware in an RP2040 emulator: --board rp2)."""


@sim.command()
@sim_dir_option
@click.option(
    "--board",
    type=click.Choice(sorted(BOARDS)),
    default="unix",
    show_default=True,
    help="unix: the unix-port VM (other names: the VM claiming to be that board); "
    "rp2: a virtual Raspberry Pi Pico running the stock RPI_PICO firmware in "
    "the RP2040 emulator rp2040js.",
)
@click.option(
    "--flash-size",
    type=click.IntRange(64 * 1024),
    default=DEFAULT_FLASH,
    show_default=True,
    help="Flash size in bytes (multiple of 4096; the Pico: 2 MiB).",
)
@click.option("--heapsize", help="MicroPython heap, e.g. 64K (default: the VM's 2M).")
@click.option(
    "--romfs",
    is_flag=True,
    help="rp2: the RPI_PICO_ROMFS image (a 256 KiB ROMFS partition, vfs.VfsRom).",
)
@click.option(
    "--firmware-dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="rp2: folder of the stock firmware images (default: $MPSEAL_FIRMWARE_DIR, "
    "else ../shared/firmware beside the repository).",
)
def create(
    sim_dir: Path,
    board: str,
    flash_size: int,
    heapsize: str | None,
    romfs: bool,
    firmware_dir: Path | None,
) -> None:
    """Create a virtual board with an empty littlefs flash."""
    if board == "rp2":
        if flash_size != DEFAULT_FLASH or heapsize:
            raise UsageError(
                "the virtual Pico has the Pico's 2 MiB flash and 264 KiB RAM: "
                "no --flash-size or --heapsize"
            )
        pico = PicoBoard.create(sim_dir, romfs=romfs, firmware=firmware_dir)
        out_console.print(
            f"Created virtual Raspberry Pi Pico {sim_dir} (stock "
            f"{pico.pico.info.firmware} v1.28.0 in rp2040js, 2048 KiB flash, "
            f"unique id {pico.hardware_id})",
            markup=False,
        )
        return
    if romfs or firmware_dir:
        raise UsageError("--romfs and --firmware-dir are for --board rp2 (the virtual Pico)")
    VirtualBoard.create(sim_dir, board=board, flash_size=flash_size, heapsize=heapsize)
    out_console.print(f"Created virtual board {sim_dir} ({board}, {flash_size // 1024} KiB flash)")


@sim.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@sim_dir_option
@project_option("Project whose trust root and lockdown profile the board gets.")
@click.option("--json", "as_json", is_flag=True)
def install(file: Path, sim_dir: Path, project_dir: Path, as_json: bool) -> None:
    """Stage an artifact through the board's boot guard (it runs on trial at the next boot).

    An encrypted release goes with its key wrapped for this board (the .key file that
    `mpseal build` wrote beside the artifact)."""
    board = open_sim(sim_dir)
    project = Project.load(project_dir)
    blob = read_limited(file, DEFAULT_LIMITS.artifact_max_length, "artifact")
    result = board.install(
        blob,
        project.trust_root(),
        profile=project.config.profile,
        release_key=read_release_key(file),
    )
    if as_json:
        emit_json({"installed": str(file), **result})
        return
    out_console.print(
        f"Staged {result['app']} {result['version']} (counter {result['counter']}) "
        f"in slot {result['slot']} of {sim_dir}: the device's guard verified its "
        "signature and image hash; it runs on trial at the next boot"
    )


def _boot(
    sim_dir: Path, heapsize: str | None, max_boots: int, as_json: bool, run_for: float = 10.0
) -> None:
    board = open_sim(sim_dir)
    if isinstance(board, PicoBoard):
        if heapsize:
            raise UsageError("the virtual Pico has the Pico's RAM: no --heapsize")
        report = board.boot(max_boots=max_boots, run_for=run_for)
    else:
        report = board.boot(max_boots=max_boots, heapsize=heapsize, run_for=run_for)
    if as_json:
        emit_json(
            {
                "boots": report.boots,
                "outcome": report.outcome,
                "exit_codes": report.exit_codes,
                "guard": report.guard_lines,
                "output": report.output,
            }
        )
    else:
        sys.stdout.write(report.output)
        off = " (still running: powered off)" if report.exit_codes[-1:] == [POWERED_OFF] else ""
        out_console.print(f"[dim]-- {report.boots} boot(s), {report.outcome}{off}[/]")
    if report.outcome == "idle":
        why = [
            ln[len("locked idle: ") :]
            for ln in report.guard_lines
            if ln.startswith("locked idle: ")
        ]
        raise PolicyError(
            f"the board is locked idle: {why[-1]}"
            if why
            else "the board has no valid image to run (locked idle); 'mpseal sim status' shows why"
        )
    if report.crashes():
        raise TransportError(f"the app crashed on the board: {report.crashes()[-1]}")
    if report.outcome == "crashed":  # main.py itself raised: the guard never took over
        last = [
            ln.strip()
            for ln in report.output.splitlines()
            if ln.strip() and not ln.startswith(("[mpseal] ", " ", "Traceback"))
        ]
        raise TransportError(
            "the board crashed before its guard ran: " + (last[-1][:200] if last else "no message")
        )
    broken = [ln for ln in report.guard_lines if ln.startswith("guard failed")]
    if broken:  # the guard itself stopped (e.g. out of RAM): not a good boot
        raise TransportError(
            f"the board's boot guard failed: {broken[-1][len('guard failed: ') :]}"
        )


@sim.command()
@sim_dir_option
@click.option("--heapsize", help="Override the heap, e.g. 32K.")
@click.option("--max-boots", type=click.IntRange(1, 50), default=6, show_default=True)
@run_for_option
@click.option("--json", "as_json", is_flag=True)
def boot(
    sim_dir: Path, heapsize: str | None, max_boots: int, run_for: float, as_json: bool
) -> None:
    """Power the board on: the guard verifies, runs the app, follows resets until it settles."""
    _boot(sim_dir, heapsize, max_boots, as_json, run_for)


@sim.command()
@sim_dir_option
@click.option("--heapsize", help="Override the heap, e.g. 32K.")
@run_for_option
def run(sim_dir: Path, heapsize: str | None, run_for: float) -> None:
    """Run the installed app on the board (the same as 'boot'): prints the app's output."""
    _boot(sim_dir, heapsize, 6, False, run_for)


@sim.command()
@sim_dir_option
@click.option("--json", "as_json", is_flag=True)
def status(sim_dir: Path, as_json: bool) -> None:
    """Show the guard's state, what each slot holds, and the end of its boot log."""
    st = open_sim(sim_dir).status()
    if as_json:
        emit_json(st)
        return
    for line in status_lines(st):
        out_console.print(line, markup=False)


def status_lines(st: dict[str, Any]) -> list[str]:
    """The guard's status in words a person reads (the dicts are for --json)."""
    state = st.get("state")
    slots = st.get("slots")
    if not isinstance(state, dict):
        state = {}
    if not isinstance(slots, dict):
        slots = {}
    lines = []
    if not state:
        lines.append("state:     fresh board (nothing installed yet)")
    else:
        committed, trial = state.get("committed"), state.get("trial")
        lines.append(f"committed: slot {committed}" if committed else "committed: none")
        if trial:
            lines.append(
                f"trial:     slot {trial} (try {state.get('tries', 0)}): the next boot "
                "runs it; the app must confirm it"
            )
        lines.append(f"counter:   {state.get('counter', 0)} (releases below it are refused)")
        if state.get("unlocks"):
            lines.append(f"unlocks:   {state['unlocks']} service unlock(s) used")
    if st.get("damaged"):
        lines.append(f"note:      {st['damaged']} damaged state copy ignored")
    for slot in ("a", "b"):
        info = slots.get(slot) or {}
        if not isinstance(info, dict) or not info or info.get("refused") == "slot is empty":
            text = "empty"
        elif "refused" in info:
            text = f"refused: {info['refused']}"
        else:
            text = (
                f"{info.get('app', '?')} {info.get('version', '?')} (counter "
                f"{info.get('counter', '?')})"
            )
        running = " [running]" if state.get("committed") == slot and not state.get("trial") else ""
        lines.append(f"slot {slot}:    {text}{running}")
    log = st.get("log") or []
    if log:
        lines.append("boot log (newest last):")
        lines += [f"  {line}" for line in log]
    return lines


@sim.command()
@sim_dir_option
@click.option("--poll", is_flag=True, help="Keep polling (back-off with jitter) until staged.")
@click.option("--json", "as_json", is_flag=True)
def update(sim_dir: Path, poll: bool, as_json: bool) -> None:
    """Run the board's update client against the server it was provisioned for.

    Provision the board first (mpseal provision --sim DIR --config server.toml) so it
    has an identity, the server's trust anchor and config.json with "server" in it.
    """
    board = open_sim(sim_dir)
    if isinstance(board, PicoBoard):
        raise UsageError(
            "'sim update' runs the update client on the unix-port board only; the "
            "virtual Pico has no network"
        )
    _check_provisioned(board, sim_dir)
    res = board.command("ota", *(["poll", "5", "300"] if poll else []), timeout=24 * 3600)
    replies = [r for r in res.replies() if isinstance(r, dict)]
    if not replies:
        last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or ["no output"]
        raise TransportError(f"the board's update client stopped: {last[0][:200]}")
    result = replies[-1]
    if as_json:
        emit_json(result)
    elif result.get("result") == "staged":
        out_console.print(
            "staged: the board verified and staged a new release; "
            f"'mpseal sim boot --sim {sim_dir}' runs it on trial",
            markup=False,
        )
    elif result.get("result") == "none":
        out_console.print(
            "up to date: the server offers nothing newer for this board", markup=False
        )
    if "refused" in result:
        raise PolicyError(f"the board refused the update: {result['refused']}")
    if "failed" in result:
        raise TransportError(f"the board's update check failed: {result['failed']}")


def _check_provisioned(board: VirtualBoard, sim_dir: Path) -> None:
    """The update client needs what provisioning writes: say so, not 'ENOENT'."""
    hint = (
        f"provision it first: mpseal provision --sim {sim_dir} --config device.toml "
        '(device.toml: server = "https://HOST:PORT")'
    )
    try:
        raw = board.get("/mpseal/config.json")
    except MpsealError:
        raise ConfigError(f"{sim_dir} has no /mpseal/config.json; {hint}") from None
    try:
        cfg = json.loads(raw)
    except ValueError:
        raise ConfigError(f"{sim_dir}: /mpseal/config.json is damaged; {hint}") from None
    if not isinstance(cfg, dict) or not str(cfg.get("server", "")).startswith(
        ("https://", "http://")
    ):
        raise ConfigError(f"{sim_dir}: /mpseal/config.json names no server URL; {hint}")


@sim.command(name="ls")
@click.argument("folder", default="/")
@sim_dir_option
@click.option("--json", "as_json", is_flag=True)
def ls(folder: str, sim_dir: Path, as_json: bool) -> None:
    """List a folder of the virtual board's flash."""
    entries = open_sim(sim_dir).listdir(folder)
    if as_json:
        emit_json([{"name": n, "dir": d, "size": s} for n, d, s in entries])
        return
    for name, is_dir, size in entries:
        out_console.print(f"{name}/" if is_dir else f"{name}  {size}")


COMMANDS = [sim]
