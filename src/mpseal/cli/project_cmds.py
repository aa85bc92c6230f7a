"""``mpseal init``, ``build``, ``inspect``, ``verify``."""

from __future__ import annotations

import hashlib
import os
import sys
import time
from pathlib import Path
from typing import Any

import click

from mpseal.cli.common import (
    emit_json,
    err_console,
    out_console,
    passphrase_from_env_or_prompt,
    progress_bar,
    project_option,
)
from mpseal.errors import UsageError
from mpseal.formats.boards import BOARDS
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.project import Project

NOT_PROTECTED = (
    "Not protected: a .mpy still shows names and strings and can be disassembled; it stops a "
    "curious owner (T0), not a reader of the flash (T3). The signature stops a network or mirror "
    "(T1) only on a device that checks it (the boot guard)."
)


@click.command()
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--board",
    type=click.Choice(sorted(BOARDS)),
    required=True,
    help="Target board: sets the port, .mpy version and native arch.",
)
@click.option("--name", help="App name (default: the folder name).")
@click.option(
    "--encrypt-keys",
    is_flag=True,
    help="Protect the private keys with a passphrase ($MPSEAL_PASSPHRASE or a prompt).",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def init(folder: Path, board: str, name: str | None, encrypt_keys: bool, as_json: bool) -> None:
    """Create a product project: mpseal.toml, an example app, signing keys and trust root."""
    from mpseal.packaging.init import init_project

    passphrase = passphrase_from_env_or_prompt("new") if encrypt_keys else None
    if encrypt_keys and not passphrase:
        raise UsageError("an empty passphrase protects nothing; give a real one")
    res = init_project(folder, board, name=name, passphrase=passphrase)
    if as_json:
        emit_json(
            {
                "folder": str(res.folder),
                "files": [str(p) for p in res.files],
                "root_keyid": res.root_keyid,
                "release_keyid": res.release_keyid,
                "timestamp_keyid": res.timestamp_keyid,
            }
        )
        return
    out_console.print(f"Created project in {res.folder} for board {board}")
    out_console.print(
        f"  root key    {res.root_keyid[:16]}  keys/offline/root.pem "
        "(offline: move it off this machine after init)"
    )
    out_console.print(f"  release key {res.release_keyid[:16]}  keys/release.pem")
    out_console.print(
        f"  timestamp   {res.timestamp_keyid[:16]}  keys/timestamp.pem "
        "(the update server's online key)"
    )
    out_console.print("  trust root  keys/trust-root.mpsr (the device carries this)")
    if not encrypt_keys:
        out_console.print("  [yellow]keys are not passphrase-protected (use --encrypt-keys)[/]")
    out_console.print(f"Next: cd {folder} && mpseal build")


@click.command()
@project_option("Project folder (default: here or a parent).")
@click.option(
    "-b",
    "--board",
    "boards",
    multiple=True,
    metavar="BOARD[,BOARD...]",
    help="Build for these boards (repeat or comma-separate; default: [build] board).",
)
@click.option("-j", "--jobs", type=click.IntRange(1, 256), help="Parallel compilers.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")
def build(project_dir: Path, boards: tuple[str, ...], jobs: int | None, as_json: bool) -> None:
    """Compile the app with mpy-cross, pack a ROMFS image, sign it: dist/<app>-<version>.mpseal.

    A product on several boards ([build] board = ["esp32", "rp2"], or --board) gets one
    artifact per board, dist/<app>-<version>-<board>.mpseal, each checked against the
    board's filesystem budget for A/B updates.
    """
    from mpseal.packaging.sources import collect

    project = Project.load(project_dir)
    names = [n.strip() for b in boards for n in b.split(",") if n.strip()]
    names = (
        list(dict.fromkeys(names))
        or [b.name for b in project.config.boards]
        or [project.config.board.name]
    )
    targets = [project.for_board(n) for n in names]
    sources = collect(targets[0])  # the same files for every board
    if sources.dropped and not as_json:
        shown = ", ".join(sources.dropped[:5]) + (", ..." if len(sources.dropped) > 5 else "")
        err_console.print(
            f"note: {len(sources.dropped)} file(s) in {project.config.source}/ "
            f"are not packaged (neither .py nor matched by [build] data): {shown}",
            markup=False,
        )
    summaries = []
    signer = None
    for target in targets:
        summary, signer = _build_one(target, sources, signer, jobs, as_json)
        summaries.append(summary)
    if as_json:
        emit_json(summaries[0] if len(summaries) == 1 and not boards else {"builds": summaries})


def _build_one(
    project: Project, sources: Any, signer: Any, jobs: int | None, as_json: bool
) -> tuple[dict[str, Any], Any]:
    from mpseal.packaging import uptodate

    t0 = time.perf_counter()
    inputs = uptodate.fingerprint(project, sources)
    previous = uptodate.check(project, sources, inputs)
    if previous is not None:  # nothing changed: the artifact in dist/ is this build's
        previous.update(
            up_to_date=True,
            compiled=0,
            cache_hits=previous["modules"],
            seconds=round(time.perf_counter() - t0, 3),
        )
        if not as_json:
            out_console.print(
                f"Up to date: {previous['artifact']} ({previous['app']} "
                f"{previous['version']} for {previous['board']}, nothing changed "
                "since it was built)",
                markup=False,
            )
        return previous, signer
    from mpseal.packaging.package import build as build_project

    if signer is None and os.environ.get("MPSEAL_PASSPHRASE") is None and sys.stdin.isatty():
        # (it may ask for a passphrase: before the progress bar, not under it)
        signer = project.release_signer(passphrase_from_env_or_prompt)
    loaded: list[Any] = [signer] if signer is not None else []

    def load_signer() -> Any:  # called by the build while the modules compile
        if not loaded:
            loaded.append(project.release_signer(passphrase_from_env_or_prompt))
        return loaded[0]

    with progress_bar("compiling", enabled=not as_json) as bar:
        task = (
            bar.add_task(f"compiling for {project.config.board.name}", total=None) if bar else None
        )

        def on_total(n: int) -> None:
            if bar is not None and task is not None:
                bar.update(task, total=n)

        def tick(_: str) -> None:
            if bar is not None and task is not None:
                bar.advance(task)

        res = build_project(
            project,
            load_signer,
            progress=tick,
            on_total=on_total,
            jobs=jobs,
            sources=sources,
            inputs=inputs,
        )
    summary = {**res.summary(), "up_to_date": False}
    signer = loaded[0]
    if as_json:
        return summary, signer
    m = res.manifest
    out_console.print(
        f"Built {res.path} ({res.artifact_size} bytes): {m.app} {m.version}, counter {m.counter}, "
        f"board {m.board} (.mpy {m.mpy_version}, {m.arch})",
        markup=False,
    )
    out_console.print(
        f"  {res.modules} modules ({res.compiled} compiled, {res.cache_hits} cached), "
        f"{res.data_files} data files, image {m.image_size} bytes, "
        f"signed by release key {res.keyid[:16]}, {res.seconds:.2f}s",
        markup=False,
    )
    b = res.budget
    if b is not None and b.per_release is not None:
        out_console.print(
            f"  fits {b.board}: {res.artifact_size // 1024 + 1} of "
            f"{b.per_release // 1024} KiB per release ({b.source} "
            f"{b.filesystem // 1024 if b.filesystem else 0} KiB, A/B update "
            "with download)",
            markup=False,
        )
    elif b is not None:
        err_console.print(
            f"note: the filesystem size of {b.board} boards varies; set [build] "
            "filesystem_size to check that updates fit",
            markup=False,
        )
    return summary, signer


def _load_artifact(path: Path) -> bytes:
    return read_limited(path, DEFAULT_LIMITS.artifact_max_length, "artifact")


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def inspect(file: Path, as_json: bool) -> None:
    """Show what is inside an artifact (structure only; use 'verify' to check it)."""
    from rich.table import Table

    from mpseal.formats import artifact, manifest, romfs

    art = artifact.decode(_load_artifact(file))
    man = manifest.parse(art.manifest_bytes)
    files = romfs.read(art.image)
    info = {
        "file": str(file),
        "manifest": man.to_dict(),
        "signatures": [{"keyid": s.keyid} for s in art.signatures],
        "image": {
            "offset": art.image_offset,
            "size": len(art.image),
            "sha256": hashlib.sha256(art.image).hexdigest(),
        },
        "romfs": [{"path": f.path, "size": len(f.data)} for f in files],
        "verified": False,
    }
    if as_json:
        emit_json(info)
        return
    out_console.print(f"[bold]{file}[/]  (not verified: run 'mpseal verify')")
    out_console.print(f"  app {man.app} {man.version}  security counter {man.counter}")
    out_console.print(f"  board {man.board} (port {man.port}, .mpy {man.mpy_version}, {man.arch})")
    out_console.print(
        f"  entry {man.entry}  image {man.image_size} bytes  sha256 {man.image_sha256}"
    )
    for s in art.signatures:
        out_console.print(f"  signed by key {s.keyid}")
    table = Table("path", "size", title="ROMFS image")
    for f in files:
        table.add_row(f.path, str(len(f.data)))
    out_console.print(table)


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@project_option("Project whose trust root to check against.")
@click.option("--board", help="Board the device is (default: the project's).")
@click.option(
    "--min-counter",
    type=click.IntRange(0),
    default=0,
    help="The device's committed security counter (refuse rollbacks below it).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def verify(
    file: Path, project_dir: Path, board: str | None, min_counter: int, as_json: bool
) -> None:
    """Check an artifact as a device would: structure, signature, image hash, board, counter."""
    from mpseal.formats import artifact

    project = Project.load(project_dir)
    board = board or project.config.board.name
    res = artifact.verify(
        _load_artifact(file), project.trust_root(), board=board, min_counter=min_counter
    )
    m = res.manifest
    if as_json:
        emit_json(
            {
                "file": str(file),
                "ok": True,
                "app": m.app,
                "version": m.version,
                "security_counter": m.counter,
                "board": m.board,
                "signed_by": res.keyids,
                "image_sha256": m.image_sha256,
            }
        )
        return
    out_console.print(
        f"OK {file}: {m.app} {m.version} for {m.board}, counter {m.counter}, "
        f"signed by release key {res.keyids[0][:16]}, image hash matches"
    )
    out_console.print(f"[dim]{NOT_PROTECTED}[/]")


@click.command(name="unlock-token")
@click.argument("hardware_id")
@click.option(
    "-n",
    "number",
    type=click.IntRange(1, 2**31 - 1),
    required=True,
    help="Unlock number: higher than any token this device has used (single use).",
)
@click.option(
    "--profile",
    type=click.Choice(["dev", "field"]),
    default="dev",
    show_default=True,
    help="Profile the device boots with, for one boot.",
)
@click.option(
    "-o",
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    required=True,
    help="Token file: put it at /mpseal/unlock.tok or on the SD card as mpseal-unlock.tok.",
)
@project_option()
def unlock_token(hardware_id: str, number: int, profile: str, out: Path, project_dir: Path) -> None:
    """A service unlock token for one device, signed by the offline root key.

    The device's guard accepts it once (each token names a number higher than the
    last one used), for that device only, and boots the given profile for one boot.
    """
    from mpseal.formats import envelope, jsondoc
    from mpseal.fsutil import write_atomic

    if not hardware_id or any(c not in "0123456789abcdef" for c in hardware_id.lower()):
        raise UsageError(f"{hardware_id!r} is not a hardware id (hex of machine.unique_id())")
    project = Project.load(project_dir)
    root = project.load_signer(project.config.root_key, "root", passphrase_from_env_or_prompt)
    payload = jsondoc.dumps(
        {"type": "mpseal-unlock", "device": hardware_id.lower(), "n": number, "profile": profile}
    )
    write_atomic(out, envelope.seal(b"MPSU", payload, [root]).encode(), exclusive=True)
    out_console.print(
        f"Wrote {out}: unlocks {hardware_id} once ({profile} profile for one "
        f"boot, number {number}). Anyone holding it can use it on that device "
        "until a higher number is used: hand it over like a key.",
        markup=False,
    )


COMMANDS = [init, build, inspect, verify, unlock_token]
