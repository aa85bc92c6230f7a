"""``mpseal serve``, ``mpseal release ...``, ``mpseal device revoke``: the update server and its
admin API. Thin: parse, call ``mpseal.server``, print."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from mpseal.cli.common import (
    emit_json,
    err_console,
    out_console,
    passphrase_from_env_or_prompt,
    project_option,
)
from mpseal.errors import ConfigError

if TYPE_CHECKING:
    from mpseal.server.client import AdminClient

TOKEN_ENV = "MPSEAL_ADMIN_TOKEN"
PATH = click.Path(path_type=Path)


def _project(folder: Path) -> Any:
    from mpseal.packaging.project import Project

    try:
        return Project.load(folder)
    except ConfigError:
        return None


@click.command()
@project_option("Project whose keys and trust roots to serve (default: here).")
@click.option(
    "--db",
    "db_url",
    help="Database URL (default: sqlite:///<project>/mpseal.db; "
    "postgresql+psycopg://... for several servers).",
)
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", type=click.IntRange(1, 65535), default=8443, show_default=True)
@click.option(
    "--workers",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Server processes sharing the port and the database.",
)
@click.option(
    "--artifacts", type=PATH, help="Artifact folder (default: <project>/server/artifacts)."
)
@click.option(
    "--artifact-base-url",
    help="Refused: devices do not follow redirects; put a CDN "
    "in front of the whole server instead.",
)
@click.option("--roots", type=PATH, help="Trust roots folder <N>.mpsr (default: the project's).")
@click.option("--trust-root", type=PATH, help="Trust root file if the roots folder is empty.")
@click.option("--timestamp-key", type=PATH, help="Timestamp signing key (default: the project's).")
@click.option(
    "--timestamp-expiry",
    type=click.IntRange(60, 30 * 86400),
    default=86400,
    show_default=True,
    help="Seconds a signed timestamp is valid.",
)
@click.option(
    "--cache-seconds",
    type=click.FloatRange(0, 10),
    default=1.0,
    show_default=True,
    help="Cache of devices and releases; bounds how late a revocation takes effect.",
)
@click.option("--tls-cert", type=PATH, help="Server certificate (PEM).")
@click.option("--tls-key", type=PATH, help="Server private key (PEM).")
@click.option(
    "--client-ca",
    type=PATH,
    help="Fleet CA (PEM): devices may authenticate with a client certificate.",
)
@click.option(
    "--admin-token-env",
    default=TOKEN_ENV,
    show_default=True,
    help="Environment variable holding the admin token(s), comma-separated.",
)
@click.option(
    "--access-log",
    is_flag=True,
    help="Log every request (checks are then all answered through the app, which logs "
    "them: ~20-30% more CPU a check).",
)
@click.option(
    "--halt-min-attempts",
    type=click.IntRange(1),
    default=5,
    show_default=True,
    help="Halt policy: devices that must have reported before a release can halt.",
)
@click.option(
    "--halt-max-failure-ratio",
    type=click.FloatRange(0, 1),
    default=0.2,
    show_default=True,
    help="Halt policy: share of those devices allowed to fail.",
)
@click.option(
    "--halt-min-cohort-share",
    type=click.FloatRange(0, 1),
    default=0.001,
    show_default=True,
    help="Halt policy: failed devices needed, as a share of the release's cohort.",
)
@click.option(
    "--trial-window",
    type=click.IntRange(60),
    default=3600,
    show_default=True,
    help="Seconds a trial boot may stay unconfirmed before it counts as failed.",
)
@click.option(
    "--report-rate",
    type=click.FloatRange(0.1),
    default=10.0,
    show_default=True,
    help="Reports per minute a device may send (per server process), after a burst.",
)
@click.option("--report-burst", type=click.IntRange(1), default=20, show_default=True)
@click.option(
    "--event-retention-days",
    type=click.FloatRange(1 / 24),
    default=90.0,
    show_default=True,
    help="Events (reports, registry changes) are kept this long.",
)
@click.option(
    "--directory-max",
    type=click.IntRange(0),
    default=2_000_000,
    show_default=True,
    help="Device credentials each worker keeps in memory (PostgreSQL; ~250 bytes each) "
    "so checks need no lookup; a larger fleet, or 0, looks every device up.",
)
@click.option(
    "--max-connections",
    type=click.IntRange(16),
    default=2048,
    show_default=True,
    help="Open connections per worker; beyond, the oldest idle one is closed.",
)
@click.option(
    "--header-timeout",
    type=click.FloatRange(0.5, 300),
    default=10.0,
    show_default=True,
    help="Seconds a request's headers may take to arrive.",
)
@click.option(
    "--keep-alive-timeout",
    type=click.FloatRange(0.5, 3600),
    default=30.0,
    show_default=True,
    help="Seconds an idle kept-alive connection stays open.",
)
@click.option(
    "--max-header-bytes",
    type=click.IntRange(1024, 1 << 20),
    default=16384,
    show_default=True,
    help="Size limit of a request line and its headers (431).",
)
@click.option(
    "--max-headers",
    type=click.IntRange(8, 1000),
    default=64,
    show_default=True,
    help="How many headers a request may have (431).",
)
@click.option(
    "--renewal-ca",
    type=click.Path(file_okay=False, exists=True, path_type=Path),
    help="CA folder (mpseal ca init) whose issuing CA renews device certificates "
    "online (POST /v1/device/reenroll). Without it issuance stays offline.",
)
@click.option(
    "--renewal-days",
    type=click.IntRange(1, 3650),
    default=30,
    show_default=True,
    help="Lifetime of a certificate issued online (devices renew at two thirds).",
)
def serve(
    project_dir: Path,
    db_url: str | None,
    host: str,
    port: int,
    workers: int,
    artifacts: Path | None,
    artifact_base_url: str | None,
    roots: Path | None,
    trust_root: Path | None,
    timestamp_key: Path | None,
    timestamp_expiry: int,
    cache_seconds: float,
    tls_cert: Path | None,
    tls_key: Path | None,
    client_ca: Path | None,
    admin_token_env: str,
    access_log: bool,
    halt_min_attempts: int,
    halt_max_failure_ratio: float,
    halt_min_cohort_share: float,
    trial_window: int,
    report_rate: float,
    report_burst: int,
    event_retention_days: float,
    directory_max: int,
    max_connections: int,
    header_timeout: float,
    keep_alive_timeout: float,
    max_header_bytes: int,
    max_headers: int,
    renewal_ca: Path | None = None,
    renewal_days: int = 30,
) -> None:
    """Run the update server (device API and admin API) with uvicorn."""
    from mpseal.fleet.registry import default_url
    from mpseal.server.config import ServerSettings, admin_token_hash
    from mpseal.server.run import ConnectionLimits, RunOptions
    from mpseal.server.run import serve as run_server

    project = _project(project_dir)
    if project is None and not (roots and timestamp_key):
        raise ConfigError(
            f"no mpseal.toml in {project_dir.resolve()} or above: run in a project "
            "or give --roots, --timestamp-key, --db and --artifacts"
        )
    base = project.root if project is not None else project_dir.resolve()
    tokens = [t.strip() for t in os.environ.get(admin_token_env, "").split(",") if t.strip()]
    key_path = timestamp_key or project.path(project.config.timestamp_key)
    settings = ServerSettings(
        database_url=db_url or default_url(base),
        artifacts_dir=str(artifacts or base / "server" / "artifacts"),
        roots_dir=str(roots or project.roots_dir),
        trust_root_file=str(trust_root)
        if trust_root
        else (str(project.path(project.config.trust_root)) if project is not None else None),
        timestamp_key=str(key_path),
        admin_token_hashes=tuple(admin_token_hash(t) for t in tokens),
        artifact_base_url=artifact_base_url,
        timestamp_expiry_seconds=timestamp_expiry,
        cache_seconds=cache_seconds,
        halt_min_attempts=halt_min_attempts,
        halt_max_failure_ratio=halt_max_failure_ratio,
        halt_min_cohort_share=halt_min_cohort_share,
        trial_window_seconds=trial_window,
        report_rate_per_minute=report_rate,
        report_burst=report_burst,
        event_retention_days=event_retention_days,
        directory_entries_max=directory_max,
        renewal_ca_dir=str(renewal_ca) if renewal_ca else None,
        renewal_days=renewal_days,
    )
    passphrase = None
    issuing_key = renewal_ca / "issuing-key.pem" if renewal_ca else None
    if issuing_key is not None and not issuing_key.is_file():
        raise ConfigError(
            f"--renewal-ca {renewal_ca}: no issuing-key.pem (a folder made by 'mpseal ca init')"
        )
    if b"ENCRYPTED" in Path(key_path).read_bytes()[:4096] or (
        issuing_key is not None and b"ENCRYPTED" in issuing_key.read_bytes()[:4096]
    ):
        passphrase = passphrase_from_env_or_prompt("timestamp")
    scheme = "https" if tls_cert else "http"
    options = RunOptions(
        host=host,
        port=port,
        workers=workers,
        tls_cert=tls_cert,
        tls_key=tls_key,
        client_ca=client_ca,
        access_log=access_log,
        keep_alive_timeout=keep_alive_timeout,
        limits=ConnectionLimits(
            head_bytes_max=max_header_bytes,
            headers_max=max_headers,
            header_timeout=header_timeout,
            connections_max=max_connections,
        ),
    )

    def announce() -> None:  # only once the keys, the TLS files and the database were checked
        if not tokens:
            err_console.print(
                f"mpseal: ${admin_token_env} is empty: the admin API refuses every call"
            )
        err_console.print(
            f"mpseal: serving {scheme}://{host}:{port} ({workers} worker(s)); "
            f"database {settings.database_url.split('@')[-1]}"
        )

    run_server(settings, options, passphrase, announce)


# -- the admin API -----------------------------------------------------------------------


def _admin_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--json", "as_json", is_flag=True, help="Print JSON.")(fn)
    fn = click.option(
        "--ca",
        type=PATH,
        envvar="MPSEAL_SERVER_CA",
        help="CA file to check the server's TLS certificate ($MPSEAL_SERVER_CA).",
    )(fn)
    fn = click.option(
        "--server",
        envvar="MPSEAL_SERVER",
        required=True,
        help="Update server URL ($MPSEAL_SERVER).",
    )(fn)
    return fn


def _client(server: str, ca: Path | None) -> AdminClient:
    from mpseal.server.client import AdminClient

    return AdminClient(server, os.environ.get(TOKEN_ENV, ""), ca=ca)


def _ref_options(fn: Callable[..., None]) -> Callable[..., None]:
    fn = click.option("--channel", help="Only releases of this channel.")(fn)
    fn = click.option("--board", help="Only releases for this board.")(fn)
    fn = click.option("--app", help="Only releases of this app.")(fn)
    return click.argument("version")(fn)


def _show(release: dict[str, Any], verb: str) -> None:
    r = release
    out_console.print(
        f"{verb} release {r['id']}: {r['app']} {r['version']} for {r['board']} "
        f"[{r['channel']}] state {r['state']}, {r['percent']:g}%"
        + (f", groups {', '.join(r['groups'])}" if r["groups"] else "")
        + (f", {len(r['pins'])} pinned" if r["pins"] else ""),
        markup=False,
    )
    if r.get("halt_reason"):
        out_console.print(f"  halted: {r['halt_reason']}", markup=False)
    halts = r.get("halts") or []
    if halts and r["state"] != "halted":
        h = halts[-1]
        out_console.print(
            f"  halted {str(h['halted_at'])[:19]}: {h['reason']}; resumed by "
            f"{h.get('resumed_by')}: {h.get('resume_reason')}",
            markup=False,
        )


@click.group()
def release() -> None:
    """Publish releases and steer their rollout on an update server."""


@release.command()
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--channel", default="stable", show_default=True)
@_admin_options
def publish(
    files: tuple[Path, ...], channel: str, server: str, ca: Path | None, as_json: bool
) -> None:
    """Upload artifacts; the server verifies each and offers it to no one until promoted.

    Several files are a set: one app and version built for several boards
    (dist/<app>-<version>-<board>.mpseal), checked here before any is uploaded;
    'release promote VERSION' then widens the rollout of the whole set.
    """
    _check_set(files)
    published = []
    with _client(server, ca) as client:
        for file in files:
            rel = client.publish(file, channel)
            published.append(rel)
            if not as_json:
                _show(rel, "Published")
    if as_json:
        emit_json(published[0] if len(published) == 1 else {"releases": published})


def _check_set(files: tuple[Path, ...]) -> None:
    """Several artifacts must be one app and version, each for another board."""
    from mpseal.errors import UsageError
    from mpseal.formats import artifact
    from mpseal.fsutil import read_limited
    from mpseal.limits import DEFAULT_LIMITS

    if len(files) < 2:
        return
    seen: dict[str, Path] = {}
    first = None
    for file in files:
        m = artifact.decode(
            read_limited(file, DEFAULT_LIMITS.artifact_max_length, "artifact")
        ).manifest
        if first is None:
            first = (m.app, m.version)
        elif (m.app, m.version) != first:
            raise UsageError(
                f"{file} is {m.app} {m.version}, not {first[0]} {first[1]}: a set "
                "is one app and version for several boards"
            )
        if m.board in seen:
            raise UsageError(f"{file} and {seen[m.board]} are both for {m.board}")
        seen[m.board] = file


@release.command()
@_ref_options
@click.option("--percent", type=click.FloatRange(0, 100), help="Offer to this share of devices.")
@click.option("--group", help="Offer to every device of this group.")
@click.option("--pin", "pin", help="Offer to this device (hardware id).")
@_admin_options
def promote(
    version: str,
    app: str | None,
    board: str | None,
    channel: str | None,
    percent: float | None,
    group: str | None,
    pin: str | None,
    server: str,
    ca: Path | None,
    as_json: bool,
) -> None:
    """Widen a release's rollout: --percent P, --group G or --pin HWID."""
    from mpseal.errors import UsageError
    from mpseal.server.client import ReleaseRef

    change = {
        k: v for k, v in (("percent", percent), ("group", group), ("pin", pin)) if v is not None
    }
    if len(change) != 1:
        raise UsageError("give exactly one of --percent, --group or --pin")
    with _client(server, ca) as client:
        targets = _resolve_set(client, ReleaseRef(version, app, board, channel))
        rels = [client.promote(int(t["id"]), **change) for t in targets]
    _show_all(rels, "Promoted", as_json)


def _resolve_set(client: AdminClient, ref: Any) -> list[dict[str, Any]]:
    """The releases a version names: one, or one set (the same app and channel, one per
    board, from 'release publish' of several files). Anything else must be narrowed."""
    from mpseal.errors import UsageError

    try:
        return [client.resolve(ref)]
    except UsageError:
        found = [
            r
            for r in client.releases(ref.channel)
            if r["version"] == ref.version
            and (ref.app is None or r["app"] == ref.app)
            and (ref.board is None or r["board"] == ref.board)
        ]
        boards = [r["board"] for r in found]
        if (
            len(found) > 1
            and len({(r["app"], r["channel"]) for r in found}) == 1
            and len(set(boards)) == len(boards)
        ):
            return found
        raise


def _show_all(rels: list[dict[str, Any]], verb: str, as_json: bool) -> None:
    if as_json:
        emit_json(rels[0] if len(rels) == 1 else {"releases": rels})
        return
    for rel in rels:
        _show(rel, verb)


@release.command()
@_ref_options
@click.option("--min-attempts", type=click.IntRange(1), help="Devices that must have reported.")
@click.option(
    "--max-failure-ratio", type=click.FloatRange(0, 1), help="Share of them allowed to fail."
)
@click.option(
    "--min-cohort-share",
    type=click.FloatRange(0, 1),
    help="Failed devices needed, as a share of the devices offered the release.",
)
@_admin_options
def policy(
    version: str,
    app: str | None,
    board: str | None,
    channel: str | None,
    min_attempts: int | None,
    max_failure_ratio: float | None,
    min_cohort_share: float | None,
    server: str,
    ca: Path | None,
    as_json: bool,
) -> None:
    """Set a release's own halt policy (an option left out: the server's setting)."""
    from mpseal.server.client import ReleaseRef

    with _client(server, ca) as client:
        target = client.resolve(ReleaseRef(version, app, board, channel))
        rel = client.set_policy(
            int(target["id"]),
            {
                "min_attempts": min_attempts,
                "max_failure_ratio": max_failure_ratio,
                "min_cohort_share": min_cohort_share,
            },
        )
    if as_json:
        emit_json(rel)
    else:
        _show(rel, "Halt policy set for")


def _state_command(action: str, doc: str, reason_help: str) -> click.Command:
    @_ref_options
    @click.option("--reason", default="", help=reason_help)
    @_admin_options
    def cmd(
        version: str,
        app: str | None,
        board: str | None,
        channel: str | None,
        reason: str,
        server: str,
        ca: Path | None,
        as_json: bool,
    ) -> None:
        from mpseal.server.client import ReleaseRef

        with _client(server, ca) as client:
            targets = _resolve_set(client, ReleaseRef(version, app, board, channel))
            rels = [client.set_state(int(t["id"]), action, reason) for t in targets]
        _show_all(rels, "Paused" if action == "pause" else "Resumed", as_json)

    cmd.__doc__ = doc
    return click.command(name=action)(cmd)


release.add_command(
    _state_command(
        "pause",
        "Stop offering a release (devices mid-update finish).",
        "Why (kept in the audit log).",
    )
)
release.add_command(
    _state_command(
        "resume",
        "Offer a paused release again, or one the server halted (that needs --reason).\n\n"
        "After a halt the devices that failed it are still not offered it again, and the\n"
        "halt counts afresh from the resume: the failures that halted it do not halt it\n"
        "again; new ones past the policy's limit do.",
        "Why (kept in the audit log and the release's halt history); needed to resume "
        "a release the server halted.",
    )
)


@release.command(name="list")
@click.option("--channel", help="Only this channel.")
@_admin_options
def list_releases(channel: str | None, server: str, ca: Path | None, as_json: bool) -> None:
    """Releases with their rollout and how many devices updated or failed."""
    from rich.table import Table

    with _client(server, ca) as client:
        rels = client.releases(channel)
    if as_json:
        emit_json(rels)
        return
    table = Table(
        "id",
        "app",
        "version",
        "board",
        "channel",
        "state",
        "rollout",
        "updated",
        "failed",
        "in progress",
        "why halted",
    )
    for r in rels:
        rollout = ", ".join(
            [f"{r['percent']:g}%"]
            + [f"group {g}" for g in r["groups"]]
            + ([f"{len(r['pins'])} pinned"] if r["pins"] else [])
        )
        c = r["counts"]
        table.add_row(
            str(r["id"]),
            r["app"],
            r["version"],
            r["board"],
            r["channel"],
            r["state"],
            rollout,
            str(c["updated"]),
            str(c["failed"]),
            str(c["in_progress"]),
            r.get("halt_reason") or "",
        )
    out_console.print(table)


@click.group()
def device() -> None:
    """Devices on the update server."""


@device.command()
@click.argument("hardware_id")
@click.option("--reason", default="", help="Why (kept in the registry's event log).")
@_admin_options
def revoke(hardware_id: str, reason: str, server: str, ca: Path | None, as_json: bool) -> None:
    """Revoke a device and all its certificates: every server refuses it (403)."""
    with _client(server, ca) as client:
        res = client.revoke(hardware_id, reason)
    if as_json:
        emit_json(res)
    else:
        out_console.print(
            f"Revoked {res['hardware_id']} ({res['certificates_revoked']} "
            "certificate(s)); servers refuse it within their cache time (1 s)",
            markup=False,
        )


@device.command(name="logs")
@click.argument("hardware_id")
@click.option(
    "--limit",
    type=click.IntRange(1, 100_000),
    default=100,
    show_default=True,
    help="The newest this many lines.",
)
@_admin_options
def logs_cmd(hardware_id: str, limit: int, server: str, ca: Path | None, as_json: bool) -> None:
    """A device's log lines (its boot guard's and its app's) as the server keeps them,
    oldest first (--json: one JSON object per line, newest first)."""
    import itertools
    import json

    with _client(server, ca) as client:
        lines = list(itertools.islice(client.device_logs(hardware_id, min(limit, 1000)), limit))
    if as_json:
        for ln in lines:
            click.echo(json.dumps(ln, sort_keys=True))
        return
    for ln in reversed(lines):
        out_console.print(
            f"{str(ln.get('at'))[:19]} [{ln.get('source')}] {ln.get('line')}",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


@device.command(name="group")
@click.argument("hardware_id")
@click.argument("group")
@_admin_options
def group_cmd(hardware_id: str, group: str, server: str, ca: Path | None, as_json: bool) -> None:
    """Move a device to a rollout group (releases promoted to a group reach it)."""
    with _client(server, ca) as client:
        res = client.set_group(hardware_id, group)
    if as_json:
        emit_json(res)
    else:
        out_console.print(
            f"{res['hardware_id']}: group {res['previous_group']} -> {res['group']}", markup=False
        )


@click.group()
def inventory() -> None:
    """What every device runs and when it was last heard from (from the update server)."""


@inventory.command(name="list")
@click.option("--state", type=click.Choice(["provisioning", "active", "revoked"]))
@click.option("--group", help="Only this rollout group.")
@click.option("--app", help="Only devices running this app.")
@click.option("--version", "version", help="Only devices running this version.")
@click.option(
    "--event",
    help="Only devices whose last update report is this "
    "(downloaded, staged, refused, booted, confirmed, rolled_back, timed_out).",
)
@click.option(
    "--not-seen-for",
    "not_seen_days",
    type=click.FloatRange(0),
    help="Only devices with no check-in for this many days (or never).",
)
@click.option(
    "--seen-within",
    "seen_days",
    type=click.FloatRange(0),
    help="Only devices that checked in within this many days.",
)
@click.option(
    "--expiring-within",
    "expiring_days",
    type=click.FloatRange(0),
    help="Only devices whose certificate expires within this many days.",
)
@click.option("--limit", type=click.IntRange(1), help="Stop after this many devices.")
@_admin_options
def inventory_list(
    state: str | None,
    group: str | None,
    app: str | None,
    version: str | None,
    event: str | None,
    not_seen_days: float | None,
    seen_days: float | None,
    expiring_days: float | None,
    limit: int | None,
    server: str,
    ca: Path | None,
    as_json: bool,
) -> None:
    """List devices page by page as they arrive (--json: one JSON object per line)."""
    import json
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    filters = {
        k: v
        for k, v in (
            ("state", state),
            ("group", group),
            ("app", app),
            ("version", version),
            ("event", event),
            (
                "seen_before",
                (now - timedelta(days=not_seen_days)).isoformat()
                if not_seen_days is not None
                else None,
            ),
            (
                "seen_after",
                (now - timedelta(days=seen_days)).isoformat() if seen_days is not None else None,
            ),
            (
                "expiring_before",
                (now + timedelta(days=expiring_days)).isoformat()
                if expiring_days is not None
                else None,
            ),
        )
        if v is not None
    }
    n = 0
    with _client(server, ca) as client:
        for d in client.inventory(filters, page=min(limit or 1000, 1000)):
            if as_json:
                click.echo(json.dumps(d, sort_keys=True))
            else:
                out_console.print(
                    f"{d['hardware_id']:20} {d['state']:12} {d['group']:10} "
                    f"{d.get('app') or '-':12} {d.get('version') or '-':10} "
                    f"seen {(d.get('last_check_at') or 'never')[:19]:19} "
                    f"{d.get('last_event') or '-':11} cert {(d.get('cert_expires') or '-')[:10]}",
                    markup=False,
                )
            n += 1
            if limit is not None and n >= limit:
                break
    if not as_json:
        err_console.print(f"{n} device(s)")


COMMANDS = [serve, release, device, inventory]
