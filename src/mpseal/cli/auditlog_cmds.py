"""``mpseal audit-log``: read and verify the server's hash-chained log of admin actions."""

from __future__ import annotations

from pathlib import Path

import click

from mpseal.cli.common import emit_json, out_console
from mpseal.cli.fleet_cmds import _db_option, _registry

_PROJECT = click.option(
    "-C", "--project", "project_dir", type=click.Path(file_okay=False, path_type=Path), default="."
)


@click.group(name="audit-log")
def audit_log() -> None:
    """The log of admin actions kept by `mpseal serve` (who, what, when; hash-chained)."""


@audit_log.command()
@_PROJECT
@_db_option
@click.option(
    "--head",
    "expect_head",
    help="The head hash recorded earlier: also detects "
    "rows removed from the end or a rewritten chain.",
)
@click.option("--json", "as_json", is_flag=True)
def verify(project_dir: Path, db_url: str | None, expect_head: str | None, as_json: bool) -> None:
    """Check every row's hash and the chain; exit 3 naming the first row that does not fit."""
    from mpseal.fleet.auditlog import AuditLog

    result = AuditLog(_registry(project_dir, db_url)).verify(expect_head)
    if as_json:
        emit_json({"ok": True, "rows": result.rows, "head": result.head})
    else:
        out_console.print(
            f"audit log verified: {result.rows} rows, head {result.head}", highlight=False
        )


@audit_log.command(name="list")
@_PROJECT
@_db_option
@click.option("--limit", type=click.IntRange(1, 500), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def list_entries(project_dir: Path, db_url: str | None, limit: int, as_json: bool) -> None:
    """The newest actions first."""
    from mpseal.fleet.auditlog import AuditLog

    entries = AuditLog(_registry(project_dir, db_url)).page(None, limit)
    if as_json:
        emit_json({"entries": [e.to_dict() for e in entries]})
        return
    for e in entries:
        out_console.print(
            f"{e.seq:>6} {e.to_dict()['at']} {e.actor} {e.action} {e.target} {e.detail}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


COMMANDS = [audit_log]
