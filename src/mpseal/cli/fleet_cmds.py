"""``mpseal provision`` and ``mpseal registry``: identities for many devices, and their records."""

from __future__ import annotations

import itertools
import json
import threading
import tomllib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import click

from mpseal.cli.common import (
    emit_json,
    err_console,
    out_console,
    passphrase_from_env_or_prompt,
    project_option,
)
from mpseal.errors import BadDataError, ConfigError, MpsealError
from mpseal.fsutil import read_limited
from mpseal.packaging.package import read_release_key
from mpseal.packaging.project import Project

SECRETS_LIMIT = 16 * 1024


def _db_option(f: Any) -> Any:
    return click.option(
        "--db",
        "db_url",
        help="Registry database URL (default: SQLite file "
        "mpseal.db in the project; PostgreSQL: postgresql+psycopg://...)",
    )(f)


def _registry(project_dir: Path, db_url: str | None) -> Any:
    from mpseal.fleet.registry import Registry, default_url

    if db_url is None:
        db_url = default_url(Project.load(project_dir).root)
    return Registry.open(db_url)


def _string_table(path: Path | None, what: str) -> dict[str, str]:
    if path is None:
        return {}
    raw = read_limited(path, SECRETS_LIMIT, what)
    try:
        data = json.loads(raw) if path.suffix == ".json" else tomllib.loads(raw.decode())
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"{path} is not valid {'JSON' if path.suffix == '.json' else 'TOML'}: "
            f"{str(e).splitlines()[0]}"
        ) from None
    if not isinstance(data, dict) or not all(isinstance(v, str) for v in data.values()):
        raise ConfigError(f"{path}: {what} must be a table of names to strings")
    return data


@contextmanager
def _connect(target: str) -> Iterator[Any]:
    """``sim:DIR`` is a virtual board (its VM on a pty, or a virtual Pico powered on for
    the session); anything else a serial port."""
    from mpseal.device.pico import is_pico_folder

    if target.startswith("sim:") and is_pico_folder(Path(target[4:])):
        from mpseal.device.picoboard import PicoBoard

        with PicoBoard(Path(target[4:])).session() as transport:
            yield transport
    elif target.startswith("sim:"):
        from mpseal.device.sim import VirtualBoard
        from mpseal.device.simlink import connect

        transport, link = connect(VirtualBoard(Path(target[4:])))
        try:
            yield transport
        finally:
            transport.close()
            link.close()
    else:
        from mpseal.device.serialboard import SerialTransport

        transport = SerialTransport(target)
        try:
            yield transport
        finally:
            transport.close()


@click.command()
@click.option("-p", "--port", "ports", multiple=True, help="Serial port of a board (repeat).")
@click.option(
    "--sim",
    "sims",
    multiple=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Folder of a virtual board (repeat).",
)
@project_option("Project: trust root, board and lockdown profile.")
@click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    help="CA folder from 'mpseal ca init' (default: <project>/ca).",
)
@click.option(
    "--anchor",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Server trust anchor (DER, from 'mpseal cert anchor') the device will load.",
)
@click.option(
    "--secrets",
    "secrets_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML/JSON of secrets (Wi-Fi password, tokens): sealed for each device.",
)
@click.option(
    "--config",
    "config_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="TOML/JSON of plain device settings (server URL, ...).",
)
@click.option(
    "--artifact",
    type=click.Path(dir_okay=False, path_type=Path),
    help="A release to stage through the device's guard.",
)
@click.option("--group", default="default", show_default=True, help="Rollout group.")
@click.option(
    "--channel",
    default="stable",
    show_default=True,
    help="Release channel the device follows (written to its config.json).",
)
@click.option(
    "--days",
    type=click.IntRange(1, 20 * 365),
    default=5 * 365,
    show_default=True,
    help="Device certificate validity.",
)
@click.option("--no-guard", is_flag=True, help="Identity only (old firmware, flat filesystem).")
@click.option(
    "--keygen",
    type=click.Choice(["host", "device"]),
    default="host",
    show_default=True,
    help="Who makes the device's key: this host, or the device itself (it sends a "
    "CSR; the private key never leaves it).",
)
@click.option("--force", is_flag=True, help="Re-issue even for fully provisioned devices.")
@click.option("-j", "--jobs", type=click.IntRange(1, 64), default=4, show_default=True)
@_db_option
@click.option("--json", "as_json", is_flag=True)
def provision(
    ports: tuple[str, ...],
    sims: tuple[Path, ...],
    project_dir: Path,
    ca_dir: Path | None,
    anchor: Path | None,
    secrets_file: Path | None,
    config_file: Path | None,
    artifact: Path | None,
    group: str,
    channel: str,
    days: int,
    no_guard: bool,
    keygen: str,
    force: bool,
    jobs: int,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Give each device its own key, certificate, sealed secrets, trust root and guard.

    Resumable and idempotent: run it again on the same boards and fully provisioned
    ones are skipped, interrupted ones redone with a fresh key.
    """
    from mpseal.fleet.provision import ProvisionPlan, provision_device
    from mpseal.limits import DEFAULT_LIMITS
    from mpseal.pki.ca import load_issuing_ca

    targets = list(ports) + [f"sim:{s}" for s in sims]
    if not targets:
        raise click.UsageError("name at least one --port or --sim")
    project = Project.load(project_dir)
    registry = _registry(project_dir, db_url)
    plan = ProvisionPlan(
        board=project.config.board.name,
        profile=project.config.profile,
        trust_root=project.trust_root().raw,
        ca=load_issuing_ca(ca_dir or project.root / "ca", passphrase_from_env_or_prompt),
        server_anchor=read_limited(anchor, 8192, "server anchor") if anchor else None,
        config=dict(_string_table(config_file, "config")),
        secrets=_string_table(secrets_file, "secrets"),
        artifact=(
            read_limited(artifact, DEFAULT_LIMITS.artifact_max_length, "artifact")
            if artifact
            else None
        ),
        cert_days=days,
        group=group,
        guard=not no_guard,
        app=project.config.name,
        channel=channel,
        keygen=keygen,
        release_key=read_release_key(artifact) if artifact else None,
    )
    lock = threading.Lock()

    def say(target: str, text: str) -> None:
        if not as_json:
            with lock:
                err_console.print(f"{target}: {text}", markup=False)

    def one(target: str) -> dict[str, Any]:
        try:
            with _connect(target) as transport:
                res = provision_device(
                    transport,
                    plan,
                    registry,
                    force=force,
                    on_step=lambda hw, step: say(target, f"{hw} {step}"),
                )
            say(target, f"{res.hardware_id} {res.outcome}")
            return {
                "target": target,
                "hardware_id": res.hardware_id,
                "outcome": res.outcome,
                "fingerprint": res.fingerprint,
                "bytes": res.bytes_written,
            }
        except MpsealError as e:
            say(target, f"FAILED: {e}")
            return {
                "target": target,
                "outcome": "failed",
                "error": str(e),
                "refused": isinstance(e, BadDataError),
            }

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        results = list(pool.map(one, targets))
    counts = {
        k: sum(r["outcome"] == k for r in results) for k in ("provisioned", "skipped", "failed")
    }
    if as_json:
        emit_json({"devices": results, **counts})
    else:
        out_console.print(
            f"{counts['provisioned']} provisioned, {counts['skipped']} already "
            f"done, {counts['failed']} failed (of {len(results)})",
            markup=False,
        )
    if counts["failed"]:
        # 3 when every failure was a refusal (a board that cannot run it, bad data), else 4
        refused = all(r.get("refused") for r in results if r["outcome"] == "failed")
        raise SystemExit(3 if refused else 4)


@click.group()
def registry() -> None:
    """The device registry: devices, certificates, events; revocation."""


@registry.command(name="list")
@project_option()
@click.option("--state", type=click.Choice(["provisioning", "active", "revoked"]))
@_db_option
@click.option("--json", "as_json", is_flag=True)
def list_devices(project_dir: Path, state: str | None, db_url: str | None, as_json: bool) -> None:
    """List devices (streamed page by page: memory stays flat at a million devices)."""
    from mpseal.fleet.registry import InventoryFilter

    rows = (
        {
            "hardware_id": d["hardware_id"],
            "board": d["board"],
            "state": d["state"],
            "group": d["group"],
        }
        for d in _registry(project_dir, db_url).iter_inventory(InventoryFilter(state=state))
    )
    n = 0
    if as_json:  # the same JSON array as before, written as it is read
        from mpseal.cli import common

        first = next(rows, None)  # a database error comes before any output
        common._json_emitted = True  # begun: a later failure adds no second document
        click.echo("[", nl=False)
        for r in itertools.chain([first] if first else [], rows):
            click.echo(("," if n else "") + "\n  " + json.dumps(r, sort_keys=True), nl=False)
            n += 1
        click.echo("\n]" if n else "]")
        return
    for r in rows:
        out_console.print(
            f"{r['hardware_id']:20} {r['board']:10} {r['state']:13} {r['group']}", markup=False
        )
        n += 1
    out_console.print(f"{n} devices", markup=False)


@registry.command()
@click.argument("hardware_id")
@click.option("--reason", default="", help="Why (kept in the event log).")
@project_option()
@_db_option
def revoke(hardware_id: str, reason: str, project_dir: Path, db_url: str | None) -> None:
    """Revoke a device and all its certificates (the update server refuses it from then on)."""
    from mpseal.fleet.auditlog import record_local

    reg = _registry(project_dir, db_url)
    n = reg.revoke_device(hardware_id, reason)
    record_local(
        reg, "revoke", f"device {hardware_id}", {"reason": reason, "certificates_revoked": n}
    )
    out_console.print(
        f"Revoked {hardware_id} and {n} certificate(s). The device itself is not "
        "told: its TLS stack has no CRL; the server refuses it.",
        markup=False,
    )


@registry.command()
@project_option()
@click.option(
    "--within-days",
    type=click.FloatRange(0, 3650),
    default=10.0,
    show_default=True,
    help="Certificates that end within this many days (10: a third of 30).",
)
@click.option(
    "--lapsed-days",
    type=click.FloatRange(0, 3650),
    default=365.0,
    show_default=True,
    help="And those that ended at most this many days ago.",
)
@click.option("--limit", type=click.IntRange(1, 5000), default=1000, show_default=True)
@_db_option
@click.option("--json", "as_json", is_flag=True)
def expiry(
    project_dir: Path,
    within_days: float,
    lapsed_days: float,
    limit: int,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Active devices whose newest certificate lapses soon, missed its renewal, or expired."""
    import datetime as dt

    from mpseal.fleet.certstore import expiry as lapsing

    now = dt.datetime.now(dt.UTC)
    rows, more = lapsing(
        _registry(project_dir, db_url),
        now,
        dt.timedelta(days=within_days),
        dt.timedelta(days=lapsed_days),
        limit,
    )
    if as_json:
        click.echo(
            json.dumps(
                {"now": now.isoformat(), "more": more, "certificates": [r.to_dict() for r in rows]},
                indent=2,
            )
        )
        return
    for r in rows:
        out_console.print(
            f"{r.hardware_id:20} {r.state:16} {r.not_after:%Y-%m-%d %H:%M} {r.serial}", markup=False
        )
    out_console.print(
        f"{len(rows)}{'+ (more: raise --limit)' if more else ''} device(s) "
        "with a certificate ending before "
        f"{now + dt.timedelta(days=within_days):%Y-%m-%d}",
        markup=False,
    )


@registry.command(name="import")
@click.argument("file", type=click.Path(dir_okay=False, exists=True, path_type=Path))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["csv", "jsonl"]),
    help="Default: from the file name (.csv, else JSON lines).",
)
@click.option("--board", help="Board of every device whose row names none.")
@click.option(
    "--group",
    default="default",
    show_default=True,
    help="Rollout group of every device whose row names none.",
)
@click.option("--activate", is_flag=True, help="Record the devices as active at once.")
@project_option()
@_db_option
@click.option("--json", "as_json", is_flag=True)
def import_cmd(
    file: Path,
    fmt: str | None,
    board: str | None,
    group: str,
    activate: bool,
    project_dir: Path,
    db_url: str | None,
    as_json: bool,
) -> None:
    """Register identities issued elsewhere, all or nothing (CSV with a header line, or JSON
    lines): hardware_id, fingerprint (SHA-256 of the certificate), serial, not_after, and
    optionally board, group, subject, token_sha256."""
    import time

    from mpseal.fleet.registry import parse_import

    reg = _registry(project_dir, db_url)
    started = time.monotonic()
    try:
        with file.open(encoding="utf-8", newline="") as f:
            n = reg.import_identities(
                parse_import(
                    f, fmt or ("csv" if file.suffix.lower() == ".csv" else "jsonl"), board, group
                ),
                activate=activate,
            )
    except UnicodeDecodeError:
        raise BadDataError(f"{file} is not UTF-8 text") from None
    seconds = time.monotonic() - started
    from mpseal.fleet.auditlog import record_local

    record_local(reg, "import", f"{n} devices from {file.name}", {"activate": activate})
    if as_json:
        emit_json(
            {
                "imported": n,
                "state": "active" if activate else "provisioning",
                "seconds": round(seconds, 3),
            }
        )
    else:
        out_console.print(
            f"Imported {n} device(s) as {'active' if activate else 'provisioning'}"
            f" in {seconds:.1f} s",
            markup=False,
        )


@registry.command()
@click.argument("hardware_ids", nargs=-1)
@click.option(
    "--file",
    "ids_file",
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="Hardware ids, one per line.",
)
@click.option("--all", "all_", is_flag=True, help="Every device still provisioning.")
@project_option()
@_db_option
def activate(
    hardware_ids: tuple[str, ...],
    ids_file: Path | None,
    all_: bool,
    project_dir: Path,
    db_url: str | None,
) -> None:
    """Bulk activation: devices recorded as provisioning become active."""
    from mpseal.errors import UsageError

    ids = list(hardware_ids)
    if ids_file is not None:
        ids += [x.strip() for x in ids_file.read_text().splitlines() if x.strip()]
    if all_ == bool(ids):
        raise UsageError("give hardware ids (or --file), or --all")
    from mpseal.fleet.auditlog import record_local

    reg = _registry(project_dir, db_url)
    n = reg.activate(None if all_ else ids)
    record_local(
        reg,
        "activate",
        "every device provisioning" if all_ else f"{len(ids)} devices",
        {"activated": n},
    )
    out_console.print(f"Activated {n} device(s)", markup=False)


COMMANDS = [provision, registry]
