"""``mpseal audit-log``: read and verify the server's hash-chained log of admin actions,
from its database (``--db``, the project's) or through a running server's admin API
(``--server``, with $MPSEAL_ADMIN_TOKEN)."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import click

from mpseal.cli.common import emit_json, out_console, project_option
from mpseal.cli.fleet_cmds import _db_option, _registry

_PROJECT = project_option()


def _server_options(fn: Any) -> Any:
    fn = click.option(
        "--ca",
        type=click.Path(dir_okay=False, path_type=Path),
        envvar="MPSEAL_SERVER_CA",
        help="CA file to check the server's TLS certificate ($MPSEAL_SERVER_CA).",
    )(fn)
    return click.option(
        "--server",
        help="Ask this update server (its admin API, $MPSEAL_ADMIN_TOKEN) "
        "instead of reading the database.",
    )(fn)


def _client(server: str, ca: Path | None) -> Any:
    from mpseal.cli.server_cmds import _client as admin_client

    return admin_client(server, ca)


@click.group(name="audit-log")
def audit_log() -> None:
    """The log of admin actions kept by `mpseal serve` (who, what, when; hash-chained)."""


@audit_log.command()
@_PROJECT
@_db_option
@_server_options
@click.option(
    "--head",
    "expect_head",
    help="The head hash recorded earlier: also detects "
    "rows removed from the end or a rewritten chain.",
)
@click.option("--json", "as_json", is_flag=True)
def verify(
    project_dir: Path,
    db_url: str | None,
    server: str | None,
    ca: Path | None,
    expect_head: str | None,
    as_json: bool,
) -> None:
    """Check every row's hash and the chain; exit 3 naming the first row that does not fit."""
    from mpseal.errors import IntegrityError
    from mpseal.fleet.auditlog import AuditLog

    if server:
        with _client(server, ca) as client:
            res = client.verify_audit_log(expect_head)
        if not res.get("ok"):
            raise IntegrityError(str(res.get("error") or "the audit log does not verify"))
        rows, head = int(res["rows"]), str(res["head"])
    else:
        result = AuditLog(_registry(project_dir, db_url)).verify(expect_head)
        rows, head = result.rows, result.head
    if as_json:
        emit_json({"ok": True, "rows": rows, "head": head})
    else:
        out_console.print(f"audit log verified: {rows} rows, head {head}", highlight=False)


@audit_log.command(name="list")
@_PROJECT
@_db_option
@_server_options
@click.option("--limit", type=click.IntRange(1, 100_000), default=50, show_default=True)
@click.option("--action", help="Only this action (publish, promote, pause, resume, halt, ...).")
@click.option("--json", "as_json", is_flag=True)
def list_entries(
    project_dir: Path,
    db_url: str | None,
    server: str | None,
    ca: Path | None,
    limit: int,
    action: str | None,
    as_json: bool,
) -> None:
    """The newest actions first."""
    from mpseal.fleet.auditlog import PAGE_MAX, AuditLog

    rows: list[dict[str, Any]] = []
    if server:
        with _client(server, ca) as client:
            rows = list(itertools.islice(client.audit_log(action, min(limit, PAGE_MAX)), limit))
    else:
        log = AuditLog(_registry(project_dir, db_url))
        before = None
        while len(rows) < limit:
            want = min(limit - len(rows), PAGE_MAX)
            page = log.page(before, want, action)
            rows += [e.to_dict() for e in page]
            if len(page) < want:
                break
            before = page[-1].seq
    if as_json:
        emit_json({"entries": rows})
        return
    for e in rows:
        out_console.print(
            f"{e['seq']:>6} {e['at']} {e['actor']} {e['action']} {e['target']} {e['detail']}",
            highlight=False,
            markup=False,
            soft_wrap=True,
        )


COMMANDS = [audit_log]
