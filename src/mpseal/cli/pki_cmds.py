"""``mpseal ca ...`` and ``mpseal cert ...``: parse, call ``mpseal.pki``, print."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import click
from cryptography import x509

from mpseal.cli.common import emit_json, out_console, passphrase_from_env_or_prompt
from mpseal.errors import BadDataError, UsageError
from mpseal.pki import anchor as anchors
from mpseal.pki import ca as ca_mod
from mpseal.pki import certs, expiry, lint
from mpseal.pki import device as device_model
from mpseal.pki.files import read_certs, write_public

ROLE = click.Choice(["server", "client"])
TIERS = (
    "Tiers: device certificates prove identity to your server and TLS with a checked "
    "anchor stops the network (T1); an offline root limits a stolen issuing key (T2). "
    "A key in plain flash is readable with esptool/SWD (T3) unless the port's flash "
    "encryption is on."
)


def escape(text: str) -> str:
    """Untrusted text (names from certificates) printed literally, never as rich markup."""
    from rich.markup import escape as rich_escape  # rich only for human output

    return rich_escape(text)


def _table(*columns: str) -> Any:
    from rich.table import Table

    return Table(*columns)


def _cert_info(cert: x509.Certificate) -> dict[str, object]:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        sans = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        sans += [f"IP:{n}" for n in san.get_values_for_type(x509.IPAddress)]
    except x509.ExtensionNotFound:
        sans = []
    return {
        "subject": cert.subject.rfc4514_string(),
        "issuer": cert.issuer.rfc4514_string(),
        "serial": format(cert.serial_number, "x"),
        "sans": sans,
        "not_before": cert.not_valid_before_utc.isoformat(),
        "not_after": cert.not_valid_after_utc.isoformat(),
    }


# --- ca ------------------------------------------------------------------------------------


@click.group()
def ca() -> None:
    """Your product's own CA: an offline root and an issuing CA (ECDSA P-256)."""


@ca.command("init")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--name", default="mpseal fleet", show_default=True, help="CA name prefix.")
@click.option("--org", help="Organization (O=) in the CA names.")
@click.option(
    "--root-days",
    type=click.IntRange(30, 40 * 365),
    default=20 * 365,
    show_default=True,
    help="Root validity.",
)
@click.option(
    "--issuing-days",
    type=click.IntRange(30, 40 * 365),
    default=10 * 365,
    show_default=True,
    help="Issuing CA validity.",
)
@click.option(
    "--encrypt-keys",
    is_flag=True,
    help="Protect both CA keys with a passphrase ($MPSEAL_PASSPHRASE or a prompt).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ca_init(
    folder: Path,
    name: str,
    org: str | None,
    root_days: int,
    issuing_days: int,
    encrypt_keys: bool,
    as_json: bool,
) -> None:
    """Create a root and an issuing CA in FOLDER; refuses to overwrite anything."""
    passphrase = passphrase_from_env_or_prompt("new CA") if encrypt_keys else None
    if encrypt_keys and not passphrase:
        raise UsageError("an empty passphrase protects nothing; give a real one")
    res = ca_mod.init_ca(folder, ca_mod.CaOptions(name, org, root_days, issuing_days), passphrase)
    if as_json:
        emit_json(
            {
                "folder": str(res.folder),
                "files": [str(p) for p in res.files],
                "root": _cert_info(res.root),
                "issuing": _cert_info(res.issuing),
            }
        )
        return
    out_console.print(f"Created CA in {escape(str(res.folder))}")
    out_console.print(
        f"  root     {escape(res.root.subject.rfc4514_string())}  until "
        f"{res.root.not_valid_after_utc:%Y-%m-%d}"
    )
    out_console.print(f"           key {ca_mod.ROOT_KEY}: move it off this machine (offline, T2)")
    out_console.print(
        f"  issuing  {escape(res.issuing.subject.rfc4514_string())}  until "
        f"{res.issuing.not_valid_after_utc:%Y-%m-%d}"
    )
    out_console.print("  devices trust root.der; servers check device certs with ca-chain.pem")
    if not encrypt_keys:
        out_console.print("  [yellow]CA keys are not passphrase-protected (use --encrypt-keys)[/]")


@ca.command("rotate")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option(
    "--issuing-days",
    type=click.IntRange(30, 40 * 365),
    default=None,
    help="Validity of the new issuing CA (default: as long as the old one's).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ca_rotate(folder: Path, issuing_days: int | None, as_json: bool) -> None:
    """A new issuing CA under the same root (needs the offline root key back in FOLDER).

    Devices trust the root, so nothing changes for them; servers must load the new
    ca-chain.pem, which keeps every retired issuing CA until it expires."""
    res = ca_mod.rotate_issuing_ca(folder, issuing_days, passphrase_from_env_or_prompt)
    if as_json:
        emit_json(
            {
                "folder": str(res.folder),
                "old": _cert_info(res.old),
                "new": _cert_info(res.new),
                "chain": [_cert_info(c) for c in res.chain],
            }
        )
        return
    out_console.print(f"Rotated the issuing CA of {escape(str(res.folder))}")
    out_console.print(
        f"  new      serial {res.new.serial_number:x}  until {res.new.not_valid_after_utc:%Y-%m-%d}"
    )
    out_console.print(
        f"  retired  serial {res.old.serial_number:x} (its key is deleted; its "
        "certificates stay valid until they expire or are revoked)"
    )
    out_console.print(
        "  reload the server's client-CA file: ca-chain.pem now lists "
        f"{len(res.chain) - 1} issuing CA(s) and the root"
    )
    out_console.print(f"  [yellow]move {ca_mod.ROOT_KEY} off this machine again[/]")


# --- cert ----------------------------------------------------------------------------------


@click.group()
def cert() -> None:
    """Device and server certificates, trust anchors, and what the device's mbedTLS accepts."""


@cert.command("issue")
@click.argument("name")
@click.option(
    "--ca",
    "ca_dir",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    help="CA folder from 'mpseal ca init'.",
)
@click.option(
    "--role", type=ROLE, required=True, help="server (serverAuth) or client (a device: clientAuth)."
)
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="DNS:NAME|IP:ADDR",
    help="Subject alternative name (repeat). Servers default to NAME.",
)
@click.option(
    "--csr",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Take the public key from this CSR (the key stays with its owner).",
)
@click.option(
    "--days",
    type=click.IntRange(1, 40 * 365),
    help="Validity (default: 397 for servers, 1825 for devices).",
)
@click.option("--org", help="Organization (O=).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Output folder.",
)
@click.option("--file-stem", help="Output file name stem (default: NAME).")
@click.option("--force", is_flag=True, help="Replace existing certificate files (never keys).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cert_issue(
    name: str,
    ca_dir: Path,
    role: str,
    sans: tuple[str, ...],
    csr: Path | None,
    days: int | None,
    org: str | None,
    out: Path,
    file_stem: str | None,
    force: bool,
    as_json: bool,
) -> None:
    """Issue a server or device certificate NAME: DER + PEM, key generated here or from --csr."""
    req = certs.LeafRequest(name, "server" if role == "server" else "client", sans, days, org)
    paths = certs.leaf_paths(out, file_stem or name)
    issuing = ca_mod.load_issuing_ca(ca_dir, passphrase_from_env_or_prompt)
    key = None
    if csr is not None:
        public_key = certs.read_csr(csr).public_key()
    else:
        certs.refuse_existing([paths["key_pem"], paths["key_der"]])
        key = certs.generate_key()
        public_key = key.public_key()
    leaf = certs.issue(issuing, req, public_key)
    written = certs.write_leaf(paths, leaf, issuing, key, force)
    if as_json:
        emit_json(
            {"certificate": _cert_info(leaf), "files": {k: str(v) for k, v in written.items()}}
        )
        return
    info = _cert_info(leaf)
    names = ", ".join(map(str, info["sans"])) or "-"  # type: ignore[call-overload]
    out_console.print(
        f"Issued {role} certificate {info['subject']} until "
        f"{leaf.not_valid_after_utc:%Y-%m-%d}, names {names}",
        markup=False,
    )
    for kind, path in written.items():
        out_console.print(f"  {kind:9} {path}", markup=False)
    if role == "client":
        out_console.print(
            f"  device: ctx.load_cert_chain(<{paths['cert_der'].name} bytes>, "
            f"<{paths['key_der'].name} bytes>); servers check it with "
            "ca-chain.pem",
            markup=False,
        )
    else:
        out_console.print(
            f"  server: {paths['chain_pem'].name} + its key; devices load "
            f"{ca_dir / 'root.der'} as anchor",
            markup=False,
        )


@cert.command("csr")
@click.argument("name")
@click.option(
    "--san",
    "sans",
    multiple=True,
    metavar="DNS:NAME|IP:ADDR",
    help="Subject alternative name (repeat; default: NAME if it is a host name).",
)
@click.option("--org", help="Organization (O=).")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=".",
    show_default=True,
    help="Output folder.",
)
@click.option("--file-stem", help="Output file name stem (default: NAME).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cert_csr(
    name: str,
    sans: tuple[str, ...],
    org: str | None,
    out: Path,
    file_stem: str | None,
    as_json: bool,
) -> None:
    """A P-256 key (stays here, 0600) and a CSR to send to a public CA."""
    paths = certs.leaf_paths(out, file_stem or name)
    key = certs.generate_key()
    written = certs.write_csr(paths, certs.make_csr(name, sans, org, key), key)
    if as_json:
        emit_json({"files": {k: str(v) for k, v in written.items()}})
        return
    out_console.print(
        f"Key {written['key_pem']} (and .der for the device), 0600: it never leaves this machine",
        markup=False,
    )
    out_console.print(
        f"Send {written['csr_pem']} to your CA; check what comes back with 'mpseal cert lint'",
        markup=False,
    )


@cert.command("der")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    help="Output folder (default: next to each input).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cert_der(files: tuple[Path, ...], out: Path | None, as_json: bool) -> None:
    """Convert PEM certificates, chains and keys to the DER files the device loads."""
    results = []
    for src in files:
        results += certs.pem_to_der(src, out or src.parent, passphrase_from_env_or_prompt)
    if as_json:
        emit_json(
            [
                {"file": str(r.path), "kind": r.kind, "subject": r.subject, "written": r.written}
                for r in results
            ]
        )
        return
    for r in results:
        note = "" if r.written else " (unchanged)"
        out_console.print(f"  {r.kind:11} {r.path}{note}  {r.subject}", markup=False)
    if any(r.kind == "private key" for r in results):
        out_console.print(
            "  [yellow]DER keys are unencrypted (the device has no passphrase); "
            "they are 0600 here and need flash encryption on the device (T3)[/]"
        )


@cert.command("anchor")
@click.argument("source")
@click.option(
    "--intermediate",
    "mode",
    flag_value="intermediate",
    help="Trust the server's intermediate instead of the root.",
)
@click.option(
    "--pin-leaf",
    "mode",
    flag_value="leaf",
    help="Trust exactly the server's (self-signed) certificate.",
)
@click.option(
    "--ca-bundle",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Roots to look in when the server does not send its root (default: this system's store).",
)
@click.option("--hostname", help="Name the device connects with (default: SOURCE's host).")
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default="anchor.der",
    show_default=True,
    help="Where to write the anchor (DER).",
)
@click.option("--timeout", type=click.FloatRange(0.1, 120), default=10, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cert_anchor(
    source: str,
    mode: str | None,
    ca_bundle: Path | None,
    hostname: str | None,
    out: Path,
    timeout: float,
    as_json: bool,
) -> None:
    """Pick the trust anchor for a server the device calls: SOURCE is a chain file or host:port."""
    path = Path(source)
    hostport = None if path.exists() else anchors.parse_hostport(source)
    if path.exists():
        chain = anchors.read_chain(path)
    elif hostport is not None:
        chain = anchors.fetch_chain(*hostport, timeout=timeout)
        hostname = hostname or hostport[0]
    else:
        raise UsageError(f"{source} is neither a file nor host:port")
    bundle: list[x509.Certificate] = []
    needs_bundle = mode is None and not anchors.self_signed(chain[-1])
    bundle_path = ca_bundle or anchors.default_bundle()
    if needs_bundle and bundle_path is not None:
        bundle = anchors.read_bundle(bundle_path)
    choice = anchors.choose_anchor(
        chain,
        mode or "root",  # type: ignore[arg-type]
        source,
        bundle,
        hostname,
    )
    write_public(out, choice.der)
    end = choice.cert.not_valid_after_utc
    if as_json:
        emit_json(
            {
                "anchor": _cert_info(choice.cert),
                "mode": choice.mode,
                "file": str(out),
                "sha256": choice.fingerprint,
                "tradeoff": choice.tradeoff,
                "warnings": choice.warnings,
                "fetched": hostport is not None,
                "findings": [f.to_dict() for f in choice.findings],
            }
        )
        return
    days = (end - dt.datetime.now(dt.UTC)).days
    out_console.print(
        f"Anchor ({choice.mode}): {choice.cert.subject.rfc4514_string()}", markup=False
    )
    out_console.print(f"  expires {end:%Y-%m-%d} ({days} days)   sha256 {choice.fingerprint}")
    out_console.print(f"  written {out} (DER: ctx.load_verify_locations(cadata=...))", markup=False)
    out_console.print(f"  trade-off: {choice.tradeoff}", markup=False)
    if hostport is not None:
        out_console.print(
            "  [yellow]fetched without verification: compare the fingerprint with "
            "one you got another way[/]"
        )
    for w in choice.warnings:
        out_console.print(f"  [yellow]warning:[/] {escape(w)}")
    for f in choice.findings:
        out_console.print(f"  [red]error {f.code}:[/] {escape(f.message)}: {escape(f.breaks)}")


def _device_clock(value: str) -> dt.datetime | None:
    if value == "unset":
        return None
    try:
        return dt.datetime.strptime(value, "%Y-%m-%d").replace(tzinfo=dt.UTC)
    except ValueError:
        raise UsageError(f"--device-clock must be 'unset' or YYYY-MM-DD, not {value!r}") from None


SEVERITY_STYLE = {"error": "red", "warning": "yellow", "info": "dim"}


@cert.command("lint")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("--hostname", help="Name the device connects to (server certificates).")
@click.option(
    "--role",
    type=click.Choice(lint.ROLES),
    help="How the device uses it (default: inferred per file).",
)
@click.option(
    "--issuer",
    type=click.Path(dir_okay=False, path_type=Path),
    help="The issuing CA or the device's trust anchor (PEM or DER).",
)
@click.option(
    "--device-clock",
    default="unset",
    show_default=True,
    metavar="unset|YYYY-MM-DD",
    help="The device's clock when it connects.",
)
@click.option(
    "--firmware",
    default=None,
    metavar="VERSION|esp32",
    help="The device's firmware (e.g. 1.28, 1.29.0, esp32): whether its mbedTLS "
    "parses PEM and CA bundles. Default: DER only, one anchor (v1.28 and older).",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cert_lint(
    files: tuple[Path, ...],
    hostname: str | None,
    role: str | None,
    issuer: Path | None,
    device_clock: str,
    firmware: str | None,
    as_json: bool,
) -> None:
    """Will these certificates work in MicroPython's mbedTLS? Exit status 3 on any error."""
    try:
        fw = device_model.firmware(firmware) if firmware else device_model.DER_ONLY
    except ValueError as e:
        raise UsageError(f"--firmware: {e}") from None
    options = lint.LintOptions(
        hostname=hostname,
        role=role,  # type: ignore[arg-type]
        issuer=read_certs(issuer, "issuer certificate")[0] if issuer else None,
        device_clock=_device_clock(device_clock),
        firmware=fw,
    )
    findings = [f for path in files for f in lint.lint_file(path, options)]
    n = lint.counts(findings)
    if as_json:
        emit_json(
            {
                "files": [str(p) for p in files],
                "findings": [f.to_dict() for f in findings],
                "counts": n,
                "ok": n["error"] == 0,
            }
        )
    else:
        table = _table("severity", "code", "where", "finding")
        table.show_lines = True
        table.columns[2].overflow = "fold"
        for f in findings:
            style = SEVERITY_STYLE[f.severity]
            table.add_row(
                f"[{style}]{f.severity}[/]",
                f.code,
                escape(f.where),
                f"{escape(f.message)}\n[dim]device:[/] {escape(f.breaks)}\n"
                f"[dim]fix:[/] {escape(f.fix)}",
            )
        if findings:
            out_console.print(table)
        out_console.print(f"{n['error']} errors, {n['warning']} warnings, {n['info']} notes")
    if n["error"]:
        raise BadDataError(
            f"{n['error']} error(s): the device's mbedTLS would refuse "
            "these certificates as they are"
        )


@cert.command("expiry")
@click.argument(
    "folders", nargs=-1, required=True, type=click.Path(file_okay=False, path_type=Path)
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def cert_expiry(folders: tuple[Path, ...], as_json: bool) -> None:
    """List the certificates under FOLDERS, soonest expiry first."""
    report = expiry.scan(list(folders))
    now = dt.datetime.now(dt.UTC)
    if as_json:
        emit_json(
            {
                "certificates": [e.to_dict(now) for e in report.entries],
                "skipped": [{"file": f, "why": w} for f, w in report.skipped],
            }
        )
        return
    table = _table("expires", "days", "subject", "CA", "files")
    for e in report.entries:
        days = e.days_left(now)
        style = "red" if days < 0 else "yellow" if days < 30 else ""
        table.add_row(
            f"{e.not_after:%Y-%m-%d}",
            f"[{style}]{days}[/]" if style else str(days),
            escape(e.subject),
            "yes" if e.is_ca else "",
            escape("\n".join(e.files)),
        )
    out_console.print(table)
    for f, why in report.skipped:
        out_console.print(f"  [yellow]skipped[/] {escape(f)}: {escape(why)}")


COMMANDS = [ca, cert]
