"""``mpseal keys``: list, add, rotate and revoke the keys the trust root names."""

from __future__ import annotations

from pathlib import Path

import click

from mpseal.cli.common import emit_json, out_console, passphrase_from_env_or_prompt, project_option
from mpseal.crypto.keys import PublicKey
from mpseal.errors import UsageError
from mpseal.formats.trustroot import ROLES
from mpseal.fsutil import read_limited
from mpseal.packaging import keys as keys_mod
from mpseal.packaging.project import Project

PROJECT_OPTION = project_option("Project folder (default: here or a parent).")
ROLE_OPTION = click.option(
    "--role", type=click.Choice(ROLES), required=True, help="The role whose keys change."
)
JSON_OPTION = click.option("--json", "as_json", is_flag=True, help="Print a JSON summary.")


@click.group()
def keys() -> None:
    """The trust root's keys: every change is a new trust root version, N+1.

    Version N+1 is signed by a threshold of the version-N root keys AND of its own
    root keys, kept as keys/roots/<N+1>.mpsr for devices to step through, and
    installed as the project's trust root. Root keys stop a stolen online key (T2).
    """


@keys.command(name="list")
@PROJECT_OPTION
@JSON_OPTION
def list_keys(project_dir: Path, as_json: bool) -> None:
    """Roles, their key ids and thresholds, and the trust root versions kept."""
    project = Project.load(project_dir)
    root = project.trust_root()
    versions = keys_mod.root_versions(project)
    if as_json:
        emit_json(
            {
                "version": root.version,
                "roots": versions,
                "roles": {
                    name: {"threshold": r.threshold, "keyids": list(r.keyids)}
                    for name, r in root.roles.items()
                },
            }
        )
        return
    out_console.print(
        f"Trust root version {root.version} ({project.config.trust_root}); "
        f"kept versions: {', '.join(map(str, versions)) or 'none'}",
        markup=False,
    )
    for name in ROLES:
        r = root.roles.get(name)
        if r is None:
            out_console.print(f"  {name:<9}  (no such role)", markup=False)
            continue
        out_console.print(f"  {name:<9}  threshold {r.threshold} of {len(r.keyids)}", markup=False)
        for keyid in r.keyids:
            out_console.print(f"    {keyid}", markup=False)


def _public_key(path: Path | None) -> PublicKey | None:
    if path is None:
        return None
    return PublicKey.from_pem(read_limited(path, 16 * 1024, "public key"))


def _new_passphrase(encrypt: bool) -> bytes | None:
    if not encrypt:
        return None
    passphrase = passphrase_from_env_or_prompt("new")
    if not passphrase:
        raise UsageError("an empty passphrase protects nothing; give a real one")
    return passphrase


@keys.command()
@PROJECT_OPTION
@click.option(
    "--tls-anchor",
    "anchor_files",
    multiple=True,
    required=True,
    type=click.Path(dir_okay=False, exists=True, path_type=Path),
    help="A certificate (PEM or DER) the device's TLS pins for the update server; "
    "repeat for several (tried in order, at most 4).",
)
@JSON_OPTION
def anchor(project_dir: Path, anchor_files: tuple[Path, ...], as_json: bool) -> None:
    """Name the update server's TLS anchors in a new trust root (signed by the root keys):
    the fleet follows a server certificate change without reflashing."""
    import hashlib

    from cryptography.hazmat.primitives.serialization import Encoding

    from mpseal.pki.files import read_certs

    ders = []
    for path in anchor_files:
        certs = read_certs(path, "TLS anchor")
        if len(certs) != 1:
            raise UsageError(f"{path}: one certificate per --tls-anchor, not {len(certs)}")
        ders.append(certs[0].public_bytes(Encoding.DER))
    change = keys_mod.set_tls_anchors(
        Project.load(project_dir), ders, passphrase=passphrase_from_env_or_prompt
    )
    if as_json:
        emit_json(
            {
                **change.summary(),
                "tls_anchors": [hashlib.sha256(d).hexdigest() for d in change.root.tls_anchors],
            }
        )
        return
    out_console.print(
        f"Trust root {change.old_version} -> {change.root.version}: "
        f"{len(ders)} TLS anchor(s); kept as {change.root_file}; devices step to "
        "it through the update server",
        markup=False,
    )


def _report(change: keys_mod.KeyChange, as_json: bool, encrypted: bool) -> None:
    if as_json:
        emit_json(change.summary())
        return
    out_console.print(
        f"Trust root {change.old_version} -> {change.root.version}: {change.action} {change.role}",
        markup=False,
    )
    for keyid in change.added:
        out_console.print(f"  added   {keyid[:16]}", markup=False)
    for keyid in change.removed:
        out_console.print(f"  removed {keyid[:16]}", markup=False)
    if change.key_file:
        out_console.print(f"  private key {change.key_file}", markup=False)
        if not encrypted:
            out_console.print(
                "  [yellow]the new key is not passphrase-protected (use --encrypt-key)[/]"
            )
    for path in change.retired:
        out_console.print(f"  retired {path}", markup=False)
    out_console.print(
        f"  kept as {change.root_file}; devices step to it through the update server", markup=False
    )
    for keyid in change.retiring:
        out_console.print(
            f"  still named {keyid[:16]} (old {change.role} key): devices running "
            "releases it signed keep booting",
            markup=False,
        )
    if change.retiring:
        out_console.print(
            "Next: build and publish a release (signed by the new key); once the "
            "fleet runs it ('mpseal release list'), retire the old key:\n"
            + "\n".join(
                f"  mpseal keys revoke --role {change.role} {k[:16]}" for k in change.retiring
            ),
            markup=False,
        )


@keys.command()
@PROJECT_OPTION
@ROLE_OPTION
@click.option(
    "--threshold", type=click.IntRange(1, 8), help="The role's new threshold (default: unchanged)."
)
@click.option(
    "--public",
    "public_pem",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Add this existing public key (PEM; an HSM's, say) instead of a new one.",
)
@click.option(
    "--encrypt-key",
    is_flag=True,
    help="Protect the new private key with a passphrase ($MPSEAL_PASSPHRASE or a prompt).",
)
@JSON_OPTION
def add(
    project_dir: Path,
    role: str,
    threshold: int | None,
    public_pem: Path | None,
    encrypt_key: bool,
    as_json: bool,
) -> None:
    """Add a key to a role (a timestamp key goes to keys/timestamp.pem)."""
    project = Project.load(project_dir)
    public = _public_key(public_pem)
    new_pass = _new_passphrase(encrypt_key and public is None)
    change = keys_mod.add_key(
        project,
        role,
        threshold=threshold,
        public=public,
        passphrase=passphrase_from_env_or_prompt,
        new_passphrase=new_pass,
    )
    _report(change, as_json, new_pass is not None)


@keys.command()
@PROJECT_OPTION
@ROLE_OPTION
@click.option(
    "--public",
    "public_pem",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Rotate to this existing public key (PEM) instead of a new one.",
)
@click.option(
    "--encrypt-key",
    is_flag=True,
    help="Protect the new private key with a passphrase ($MPSEAL_PASSPHRASE or a prompt).",
)
@click.option(
    "--immediate",
    is_flag=True,
    help="Release role: drop the old key at once (devices must already run a "
    "release the new key signed, or they hold the new root back).",
)
@JSON_OPTION
def rotate(
    project_dir: Path,
    role: str,
    public_pem: Path | None,
    encrypt_key: bool,
    immediate: bool,
    as_json: bool,
) -> None:
    """Replace a role's key(s) with one new key; the old private keys move to retired/.

    The release key rotates in the order a fleet survives: the new trust root names the
    old and the new key, builds are signed by the new one, and 'mpseal keys revoke'
    retires the old one once the fleet runs a release the new key signed.
    """
    project = Project.load(project_dir)
    public = _public_key(public_pem)
    new_pass = _new_passphrase(encrypt_key and public is None)
    change = keys_mod.rotate_key(
        project,
        role,
        public=public,
        passphrase=passphrase_from_env_or_prompt,
        new_passphrase=new_pass,
        immediate=immediate,
    )
    _report(change, as_json, new_pass is not None)


@keys.command()
@PROJECT_OPTION
@ROLE_OPTION
@click.argument("keyid")
@click.option(
    "--threshold",
    type=click.IntRange(1, 8),
    help="The role's new threshold, when fewer keys remain than it needs.",
)
@JSON_OPTION
def revoke(project_dir: Path, role: str, keyid: str, threshold: int | None, as_json: bool) -> None:
    """Remove key KEYID (8+ hex digits) from a role; its private key moves to retired/."""
    project = Project.load(project_dir)
    change = keys_mod.revoke_key(
        project, role, keyid, threshold=threshold, passphrase=passphrase_from_env_or_prompt
    )
    _report(change, as_json, True)


COMMANDS = [keys]
