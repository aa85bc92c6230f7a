"""``mpseal audit`` (open interfaces of a live device) and ``mpseal inspect-device`` (warranty)."""

from __future__ import annotations

import sys
from pathlib import Path

import click
from rich.table import Table
from rich.text import Text

from mpseal.cli.common import emit_json, err_console, out_console, project_option
from mpseal.device.console import Timing
from mpseal.device.picoboard import PicoBoard, open_sim
from mpseal.device.sim import VirtualBoard
from mpseal.errors import MpsealError, UsageError
from mpseal.formats import trustroot
from mpseal.formats.boards import BOARDS
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS
from mpseal.lockdown import audit as audit_mod
from mpseal.lockdown import warranty as warranty_mod
from mpseal.lockdown.model import Seen, Tier
from mpseal.lockdown.plan import KEEP_CHOICES, parse_keep
from mpseal.packaging.project import Project

STATUS_STYLE = {Seen.OPEN: "bold red", Seen.CLOSED: "green", Seen.UNKNOWN: "yellow"}
MARK_STYLE = {
    "ok": "green",
    "info": "dim",
    "attempt": "yellow",
    "modified": "bold red",
    "unknown": "yellow",
}


def _target(port: str | None, sim_dir: Path | None) -> VirtualBoard | PicoBoard | None:
    if (port is None) == (sim_dir is None):
        raise UsageError("give exactly one of --port PORT or --sim DIR")
    return open_sim(sim_dir) if sim_dir is not None else None


@click.command()
@click.option("--port", help="Serial port of the board: /dev/ttyUSB0, COM3, socket://host:port.")
@click.option(
    "--sim",
    "sim_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A virtual board folder: powered on (boot.py, main.py run), then audited.",
)
@click.option(
    "--board",
    type=click.Choice(sorted(BOARDS)),
    help="The board (default: what the firmware says, else the guard's config).",
)
@click.option(
    "--keep",
    multiple=True,
    metavar="USE[,USE...]",
    help="Uses the product keeps on purpose (not failures): " + ", ".join(KEEP_CHOICES) + ".",
)
@click.option(
    "--fail-on",
    type=click.Choice([t.value for t in Tier if t != Tier.T4]),
    default="T3",
    show_default=True,
    help="Fail on open holes usable by an attacker of this tier or a weaker one.",
)
@click.option(
    "--line",
    type=click.Choice(["usb", "uart"]),
    help="Which REPL this line is (default: usb on boards with native USB).",
)
@click.option(
    "--wait",
    type=click.FloatRange(0.2, 60),
    default=2.0,
    show_default=True,
    help="Seconds to wait for a prompt after Ctrl-C.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def audit(
    port: str | None,
    sim_dir: Path | None,
    board: str | None,
    keep: tuple[str, ...],
    fail_on: str,
    line: str | None,
    wait: float,
    as_json: bool,
) -> None:
    """Find which interfaces of a live device are open, by probing it.

    Reports every interface of the board: open / closed / unknown, the probe that
    decided and its raw result, the threat tier, how to close it and whether that
    is reversible. A locked-down board shows no REPL: the audit says so (exit 1).

    Exit codes: 0 nothing open; 1 REPL unreachable, nothing open seen (expected
    after lockdown); 10/11/12/13 open holes whose weakest attacker is T3/T2/T1/T0;
    2 usage, 4 the line could not be opened.
    """
    timing = Timing(ctrl_c=wait)
    options = audit_mod.AuditOptions(
        board=board, keep=parse_keep(keep), fail_on=Tier(fail_on), line=line, timing=timing
    )
    sim = _target(port, sim_dir)
    report = (
        audit_mod.audit_sim(sim, options)
        if sim is not None
        else audit_mod.audit_port(str(port), options)
    )
    if as_json:
        emit_json(report.to_dict())
    else:
        _print_audit(report, f"sim {sim_dir}" if sim is not None else str(port))
    sys.exit(report.exit_code)  # run_command's non-standalone click would drop ctx.exit's code


def _print_audit(r: audit_mod.AuditReport, where: str) -> None:
    facts = r.facts
    head = Text(
        f"Audit of {where}: board {r.board or 'unknown'} ({r.board_source}), {r.line} line",
        style="bold",
    )
    out_console.print(head)
    if facts:
        impl = facts.get("impl") or facts.get("version")
        out_console.print(
            Text(
                f"  firmware: {facts.get('platform')} {impl}"
                f"{'  uname: ' + str(facts['uname']) if 'uname' in facts else ''}"
            )
        )
        out_console.print(
            Text(
                f"  unique id: {facts.get('id', 'none')}   free heap: "
                f"{facts.get('mem_free', '?')}   sys.path: {facts.get('path')}"
            )
        )
    if r.modules:
        path = facts.get("path")
        frozen = isinstance(path, list) and ".frozen" in path
        out_console.print(
            Text(
                f"  modules ({'frozen ones on .frozen' if frozen else 'built in'})"
                f": {', '.join(r.modules)}",
                style="dim",
            )
        )
    g = r.guard
    if g.installed:
        st = g.state or {}
        out_console.print(
            Text(
                f"  mpseal guard: profile {g.profile or '?'}, board {g.board}, "
                f"committed slot {st.get('committed')}, counter "
                f"{st.get('counter')}, unlocks {st.get('unlocks')}"
            )
        )
        for ln in g.log[-5:]:
            out_console.print(Text(f"    log: {ln}", style="dim"))
    elif r.reachable:
        out_console.print(Text("  mpseal guard: not installed"))
    for ln in r.power_on[-6:]:
        out_console.print(Text(f"  at power-on: [mpseal] {ln}", style="dim"))
    table = Table(show_lines=True, expand=False)
    for col in ("interface", "tier", "status", "how it was checked", "how to close it"):
        table.add_column(col, overflow="fold")
    for f in r.findings:
        status = Text(f.status.value + (" (kept)" if f.kept else ""), style=STATUS_STYLE[f.status])
        checked = Text()
        if f.reason:
            checked.append(f.reason + "\n")
        for e in f.evidence:
            checked.append(f"{e.kind}: {e.probe}\n", style="cyan")
            checked.append(f"  -> {e.result}\n")
        close = "\n".join(audit_mod.lever_label(lv) for lv in f.levers) or "nothing on this board"
        table.add_row(
            Text(f"{f.interface.id}\n{f.interface.title}"),
            f.tier.value,
            status,
            checked,
            Text(close),
        )
    out_console.print(table)
    for note in r.notes:
        err_console.print(Text(f"note: {note}", style="yellow"))
    style = "bold red" if r.worst is not None else "bold green" if r.reachable else "bold yellow"
    out_console.print(Text(f"{r.verdict()} (exit {r.exit_code})", style=style))


@click.command("inspect-device")
@click.option("--port", help="Serial port of the board.")
@click.option(
    "--sim",
    "sim_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="A virtual board folder: powered on, then inspected.",
)
@project_option("The project whose releases and trust roots are official.")
@click.option(
    "--expect-firmware",
    metavar="FINGERPRINT",
    help="The firmware fingerprint an official unit reports (from an earlier run).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_device(
    port: str | None,
    sim_dir: Path | None,
    project_dir: Path,
    expect_firmware: str | None,
    as_json: bool,
) -> None:
    """Warranty check: is this device running our official release, unmodified?

    Compares what the device reports (firmware, guard, trust root, the releases in
    its slots, the guard's log of refused images) with the project's dist/*.mpseal
    and trust roots. Without Secure Boot a modified firmware can lie to this check
    (docs/warranty.md).

    Exit codes: 0 official; 1 official, tampering attempt recorded; 5 unknown (e.g.
    the REPL is closed); 6 modified; 2 usage, 4 the line could not be opened.
    """
    sim = _target(port, sim_dir)
    official, skipped = _official(Project.load(project_dir), expect_firmware)
    report = (
        warranty_mod.inspect_sim(sim, official)
        if sim is not None
        else warranty_mod.inspect_port(str(port), official)
    )
    if as_json:
        doc = report.to_dict()
        doc["official_releases"] = [r.name for r in official.releases]
        doc["skipped_artifacts"] = skipped
        emit_json(doc)
    else:
        _print_warranty(
            report, f"sim {sim_dir}" if sim is not None else str(port), official, skipped
        )
    sys.exit(report.exit_code)  # run_command's non-standalone click would drop ctx.exit's code


def _official(
    project: Project, expect_firmware: str | None
) -> tuple[warranty_mod.Official, list[str]]:
    current = project.trust_root()
    roots = [current]
    if project.roots_dir.is_dir():
        for path in sorted(project.roots_dir.glob("*.mpsr")):
            try:
                root = trustroot.parse(
                    read_limited(path, DEFAULT_LIMITS.root_max_length, "trust root")
                )
            except MpsealError:
                continue
            if root.raw != current.raw and all(root.raw != r.raw for r in roots):
                roots.append(root)
    roots[1:] = sorted(roots[1:], key=lambda r: -r.version)
    artifacts = []
    if project.dist_dir.is_dir():
        for path in sorted(project.dist_dir.glob("*.mpseal")):
            artifacts.append(
                (path.name, read_limited(path, DEFAULT_LIMITS.artifact_max_length, path.name))
            )
    return warranty_mod.official_set(roots, artifacts, project.config.board.name, expect_firmware)


def _print_warranty(
    r: warranty_mod.WarrantyReport, where: str, official: warranty_mod.Official, skipped: list[str]
) -> None:
    out_console.print(
        Text(
            f"Warranty check of {where} against {len(official.releases)} official "
            f"release(s) and {len(official.roots)} trust root version(s)",
            style="bold",
        )
    )
    if r.facts:
        out_console.print(Text(f"  device id: {r.facts.get('id', 'none')}"))
    for s in r.slots:
        if s.present:
            out_console.print(
                Text(
                    f"  slot {s.slot}{' (running)' if s.running else ''}: "
                    f"{s.app} {s.version} counter {s.counter}; {s.signature or s.problem}"
                )
            )
    table = Table(show_lines=False)
    table.add_column("checked")
    table.add_column("result")
    table.add_column("detail", overflow="fold")
    for e in r.evidence:
        table.add_row(
            Text(e.what), Text(e.mark.value, style=MARK_STYLE[e.mark.value]), Text(e.detail)
        )
    out_console.print(table)
    for note in skipped:
        err_console.print(Text(f"note: not official: {note}", style="yellow"))
    style = {"official": "bold green", "modified": "bold red"}.get(r.verdict.value, "bold yellow")
    out_console.print(Text(f"{r.summary()} (exit {r.exit_code})", style=style))
    out_console.print(Text(f"What this cannot prove: {warranty_mod.CANNOT_PROVE}", style="dim"))


COMMANDS = [audit, inspect_device]
