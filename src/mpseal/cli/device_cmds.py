"""``mpseal probe`` and ``mpseal install``: a board on USB, as a developer meets it."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import click

from mpseal.cli.common import emit_json, err_console, out_console, progress_bar, project_option
from mpseal.cli.fleet_cmds import _connect
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.package import read_release_key
from mpseal.packaging.project import Project


def _target(port: str | None, sim_dir: Path | None) -> str:
    if (port is None) == (sim_dir is None):
        raise click.UsageError("name the board: --port PORT (or --sim DIR for a virtual board)")
    return port if port is not None else f"sim:{sim_dir}"


def _board_options(f: Any) -> Any:
    f = click.option(
        "--sim",
        "sim_dir",
        type=click.Path(file_okay=False, path_type=Path),
        help="A virtual board's folder instead of a port.",
    )(f)
    return click.option(
        "-p", "--port", help="Serial port of the board (/dev/ttyACM0, socket://host:port)."
    )(f)


def _mount_option(f: Any) -> Any:
    from mpseal.device.probe import MOUNT_PATHS

    return click.option(
        "--mount",
        type=click.Choice(["auto", *MOUNT_PATHS]),
        default="auto",
        show_default=True,
        help="Force the guard's mount path in device.json "
        "(e.g. verified-files, the stock-firmware path, on a board with "
        "VfsRom); auto: the guard's own choice.",
    )(f)


def _facts_lines(facts: Any) -> list[str]:
    mpy = f".mpy {facts.mpy.text}, arch {facts.mpy.arch}" if facts.mpy else "no .mpy version"
    rom = (
        "no vfs.rom_ioctl"
        if facts.rom is None
        else f"{facts.rom.count} ROMFS partition(s), first {facts.rom.size // 1024} KiB"
        + (" (block device)" if facts.rom.block_device else "")
    )
    flash = (
        f"{facts.flash.free // 1024} KiB free of {facts.flash.block * facts.flash.blocks // 1024}"
        f" KiB ({facts.root_fs or 'no filesystem'} at /)"
        if facts.writable_fs and facts.flash
        else "no writable filesystem at /"
    )
    yes = {True: "yes", False: "no"}
    return [
        f"firmware   MicroPython {facts.version_text} on {facts.platform}"
        + (f" ({facts.machine})" if facts.machine else ""),
        f"code       {mpy}",
        f"mount      vfs.VfsRom {yes[facts.vfsrom]}; {rom}",
        (
            f"crypto     hashlib.sha256 {yes[facts.sha256]}; cryptolib AES-CBC "
            f"{yes[facts.aes_cbc]}; ssl {yes[facts.ssl]}"
        ),
        f"identity   {'machine.unique_id' if facts.unique_id == 'machine' else facts.unique_id or 'none'}",
        f"heap       {facts.mem_free // 1024} KiB free",
        f"flash      {flash}",
    ]


@click.command()
@_board_options
@click.option(
    "--artifact",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also say whether the board can run this release, and how it mounts it.",
)
@_mount_option
@click.option("--json", "as_json", is_flag=True)
def probe(
    port: str | None, sim_dir: Path | None, artifact: Path | None, mount: str, as_json: bool
) -> None:
    """Show what the board's firmware has (nothing is written to the board).

    With --artifact: exit 3 and name what is missing if the board cannot run it.
    """
    from mpseal.device.install import SLOT_FILES, check
    from mpseal.device.probe import needs_for, probe_board

    target = _target(port, sim_dir)
    blob = (
        read_limited(artifact, DEFAULT_LIMITS.artifact_max_length, "artifact") if artifact else None
    )
    with _connect(target) as transport:
        facts = probe_board(transport)
        decision = None
        if blob is not None:
            from mpseal.device.guard_install import guard_files
            from mpseal.formats import artifact as artifact_mod

            man = artifact_mod.decode(blob).manifest
            files = guard_files(man.board, "field", b"", mount)
            _, decision = check(
                transport, needs_for(man.board, blob, files), [*files, *SLOT_FILES], mount
            )
    if as_json:
        emit_json(
            {
                "port": target,
                "board": facts.to_dict(),
                **({"release": decision.to_dict()} if decision else {}),
            }
        )
        return
    for line in _facts_lines(facts):
        out_console.print(line, markup=False)
    if decision is not None:
        out_console.print(
            f"release    can run; the guard mounts it as {decision.mount}", markup=False
        )
        for note in decision.notes:
            out_console.print(f"note       {note}", markup=False)


@click.command()
@click.argument("artifact", type=click.Path(dir_okay=False, path_type=Path))
@_board_options
@project_option("Project whose trust root and lockdown profile the board gets.")
@click.option(
    "--profile",
    type=click.Choice(["dev", "field", "sealed"]),
    help="Lockdown profile for the board (default: the project's).",
)
@_mount_option
@click.option(
    "--replace-root", is_flag=True, help="Replace a different trust root already on the board."
)
@click.option("--reset", is_flag=True, help="Reset the board afterwards: it boots the release.")
@click.option("--json", "as_json", is_flag=True)
def install(
    artifact: Path,
    port: str | None,
    sim_dir: Path | None,
    project_dir: Path,
    profile: str | None,
    mount: str,
    replace_root: bool,
    reset: bool,
    as_json: bool,
) -> None:
    """Install a release on a board: the guard if needed, trust root, config, and the
    release staged through the guard (it boots on trial at the next reset).

    The board is probed first: one that cannot run the release is refused with what is
    missing (exit 3) and nothing is written. An encrypted release goes with its key
    wrapped for this board's id (the .key file `mpseal build` wrote beside it).
    """
    from mpseal.device.install import install as do_install

    target = _target(port, sim_dir)
    project = Project.load(project_dir)
    blob = read_limited(artifact, DEFAULT_LIMITS.artifact_max_length, "artifact")
    root = project.trust_root()
    tty = not as_json and sys.stderr.isatty()

    def say(step: str) -> None:
        if tty:
            err_console.print(f"{target}: {step} done", markup=False)

    with progress_bar("writing", not as_json) as bar, _connect(target) as transport:
        task = bar.add_task("writing", total=None) if bar is not None else None

        def progress(done: int, total: int) -> None:
            if bar is not None:
                bar.update(task, completed=done, total=total)

        result = do_install(
            transport,
            blob,
            root,
            profile=profile or project.config.profile,
            mount=mount,
            replace_root=replace_root,
            reset=reset,
            on_step=say,
            progress=progress,
            release_key=read_release_key(artifact),
        )
    if as_json:
        emit_json({"port": target, "installed": str(artifact), **result.to_dict()})
        return
    out_console.print(
        f"Installed {result.app} {result.version} (counter {result.counter}) in slot "
        f"{result.slot}: the board's guard verified it; mount {result.decision.mount}; "
        f"{len(result.written)} file(s) written, {len(result.unchanged)} already current",
        markup=False,
    )
    for note in result.decision.notes:
        out_console.print(f"note: {note}", markup=False)
    if result.guard_at == "romfs":
        out_console.print(
            "note: the guard's boot modules are also at the head of the ROMFS partition: "
            "they run in place from flash (less RAM); the app's image is mirrored after them",
            markup=False,
        )
    if "/main.py" in result.replaced:
        out_console.print(
            "note: the board's own /main.py was replaced: it now starts the "
            "guard, which runs the release",
            markup=False,
        )
    out_console.print(
        "The board was reset: it boots the release on trial."
        if result.reset
        else "It boots on trial at the next reset (--reset does that).",
        markup=False,
    )


COMMANDS = [probe, install]
