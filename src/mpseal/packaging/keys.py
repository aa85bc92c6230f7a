"""``mpseal keys``: add, rotate and revoke role keys as a chain of signed trust root versions.

Every change makes trust root version N+1, signed by a threshold of the version-N
root role AND of its own root role (``trustroot.sign_update``), keeps it as
``keys/roots/<N+1>.mpsr`` (the update server serves every version, so a device
several rotations behind steps through them) and installs it as the project's
trust root. Devices accept nothing else: a thief holding fewer than a threshold
of root keys cannot rewrite who is trusted (T2).

Private keys stay where the project keeps them: a role's main key at its
``[keys]`` path (``keys/release.pem``, ``keys/timestamp.pem``,
``keys/offline/root.pem``), further keys of the role next to it as
``<name>-<keyid16>.pem``, and keys that left the trust root in ``retired/``
beside them (never deleted: an auditor may want them).

Write order, so an interruption loses no key: the new private key, then
``roots/<N+1>.mpsr``, then the trust root, then the renames of retired keys.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from mpseal.crypto.keys import PrivateKeySigner, PublicKey, Signer
from mpseal.errors import ConfigError, UsageError
from mpseal.formats import trustroot
from mpseal.formats.trustroot import ROLES, TrustRoot
from mpseal.fsutil import read_limited, write_atomic
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.project import PassphraseSource, Project, no_passphrase

KEY_MODE = 0o600
DIR_MODE = 0o700
RETIRED = "retired"


@dataclass(frozen=True)
class KeyFile:
    """A private key the project holds for a role."""

    keyid: str
    path: Path
    signer: PrivateKeySigner


@dataclass(frozen=True)
class KeyChange:
    """What one ``add``/``rotate``/``revoke`` did."""

    action: str
    role: str
    old_version: int
    root: TrustRoot  # the new trust root, as installed
    root_file: Path  # keys/roots/<N+1>.mpsr
    added: tuple[str, ...] = ()  # keyids that joined the role
    removed: tuple[str, ...] = ()  # keyids that left the role
    key_file: Path | None = None  # the new private key, when generated here
    retired: tuple[Path, ...] = ()  # private key files moved to retired/
    retiring: tuple[str, ...] = ()  # keyids still named, to revoke once devices moved on

    def summary(self) -> dict[str, object]:
        return {
            "action": self.action,
            "role": self.role,
            "old_version": self.old_version,
            "version": self.root.version,
            "root_file": str(self.root_file),
            "added": list(self.added),
            "removed": list(self.removed),
            "key_file": str(self.key_file) if self.key_file else None,
            "retired": [str(p) for p in self.retired],
            "retiring": list(self.retiring),
            "threshold": self.root.roles[self.role].threshold
            if self.role in self.root.roles
            else None,
        }


def default_key_path(project: Project, role: str) -> Path:
    """Where the project keeps ``role``'s main private key (its ``[keys]`` entry)."""
    cfg = project.config
    rel = {"root": cfg.root_key, "release": cfg.release_key, "timestamp": cfg.timestamp_key}
    if role not in rel:
        raise UsageError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")
    return project.path(rel[role])


def root_versions(project: Project) -> list[int]:
    """The trust root versions kept in ``keys/roots/``, oldest first."""
    folder = project.roots_dir
    if not folder.is_dir():
        return []
    return sorted(int(p.stem) for p in folder.glob("*.mpsr") if p.stem.isdigit())


def archive_root(project: Project, root: TrustRoot | None = None) -> Path:
    """Make sure ``keys/roots/<N>.mpsr`` holds the current trust root; return its path."""
    root = root or project.trust_root()
    path = project.roots_dir / f"{root.version}.mpsr"
    if path.is_file():
        kept = read_limited(path, DEFAULT_LIMITS.root_max_length, "kept trust root")
        if kept != root.raw:
            raise ConfigError(
                f"{path} differs from the project's trust root of the same version; "
                "one of them was changed by hand: restore the right one"
            )
        return path
    write_atomic(path, root.raw, exclusive=True)
    return path


def role_signers(
    project: Project,
    role: str,
    passphrase: PassphraseSource = no_passphrase,
    root: TrustRoot | None = None,
) -> list[Signer]:
    """Private keys of the trust root's ``role`` the project holds, a threshold of them.

    The update server signs timestamps with ``role_signers(project, "timestamp", ...)``.
    """
    root = root or project.trust_root()
    r = root.role(role)
    held: dict[str, Signer] = {kf.keyid: kf.signer for kf in key_files(project, role, passphrase)}
    chosen: list[Signer] = [held[k] for k in r.keyids if k in held][: r.threshold]
    if len(chosen) < r.threshold:
        raise ConfigError(
            f"the {role} role needs {r.threshold} signatures; this project holds {len(chosen)} of "
            f"its keys (in {default_key_path(project, role).parent})"
        )
    return chosen


def key_files(
    project: Project, role: str, passphrase: PassphraseSource = no_passphrase
) -> list[KeyFile]:
    """Every private key file of ``role`` in the project: the main one and ``<name>-*.pem``."""
    main = default_key_path(project, role)
    paths = [main] if main.is_file() else []
    paths += sorted(p for p in main.parent.glob(f"{main.stem}-*.pem") if p.is_file())
    out = []
    for path in paths:
        signer = project.load_signer(str(path), role, passphrase)
        out.append(KeyFile(signer.public_key.keyid, path, signer))
    return out


def add_key(
    project: Project,
    role: str,
    *,
    threshold: int | None = None,
    public: PublicKey | None = None,
    passphrase: PassphraseSource = no_passphrase,
    new_passphrase: bytes | None = None,
    extra_signers: Sequence[Signer] = (),
) -> KeyChange:
    """Add a key to ``role``: a new one generated here, or ``public`` (an HSM's, say).

    ``threshold`` sets the role's new threshold (default: unchanged, 1 for a new role).
    """
    passphrase = _asking_once(passphrase)
    old = project.trust_root()
    _check_role(role)
    current = list(old.roles[role].keyids) if role in old.roles else []
    signer = PrivateKeySigner.generate() if public is None else None
    key = public or signer.public_key  # type: ignore[union-attr]
    _check_new_key(old, role, key)
    if len(current) >= DEFAULT_LIMITS.signatures_max_count:
        raise UsageError(
            f"role {role!r} already has {len(current)} keys, the limit; revoke one first"
        )
    t = threshold if threshold is not None else (old.roles[role].threshold if current else 1)
    new = _rebuild(old, role, [*current, key.keyid], t, extra={key.keyid: key})
    change = _publish(project, old, new, role, passphrase, extra_signers, signer, new_passphrase)
    key_file = _promote(project, role, change.key_file)
    return KeyChange(
        "add", role, old.version, change.root, change.root_file, (key.keyid,), (), key_file, ()
    )


def rotate_key(
    project: Project,
    role: str,
    *,
    public: PublicKey | None = None,
    passphrase: PassphraseSource = no_passphrase,
    new_passphrase: bytes | None = None,
    extra_signers: Sequence[Signer] = (),
    immediate: bool = False,
) -> KeyChange:
    """Replace ``role``'s keys by one new key (generated here, or ``public``).

    The release role rotates in the order a fleet survives (unless ``immediate``): the
    new root names the old and the new key, builds are signed by the new key only, and
    the old key leaves the root in a later step ('mpseal keys revoke'), once devices run
    a release signed by the new key. A device verifies its running release against every
    root it takes: a root without the key of the running release would leave it nothing
    to boot, so it holds that root back (runtime/mpseal_ota.py).
    """
    passphrase = _asking_once(passphrase)
    old = project.trust_root()
    _check_role(role)
    old_ids = tuple(old.roles[role].keyids) if role in old.roles else ()
    held = key_files(project, role, passphrase)  # before anything changes: fail early
    signer = PrivateKeySigner.generate() if public is None else None
    key = public or signer.public_key  # type: ignore[union-attr]
    _check_new_key(old, role, key)
    staged = role == "release" and not immediate and bool(old_ids)
    if staged and old.roles[role].threshold != 1:
        raise UsageError(
            f"the release role needs {old.roles[role].threshold} signatures: "
            "rotate its keys one at a time ('mpseal keys add', a release signed "
            "by the new set, then 'mpseal keys revoke'), or give --immediate"
        )
    keyids = [*old_ids, key.keyid] if staged else [key.keyid]
    new = _rebuild(old, role, keyids, 1, extra={key.keyid: key})
    change = _publish(project, old, new, role, passphrase, extra_signers, signer, new_passphrase)
    retired = _retire(project, role, [kf for kf in held if kf.keyid in old_ids])
    key_file = _promote(project, role, change.key_file)
    return KeyChange(
        "rotate",
        role,
        old.version,
        change.root,
        change.root_file,
        (key.keyid,),
        () if staged else old_ids,
        key_file,
        retired,
        retiring=old_ids if staged else (),
    )


def revoke_key(
    project: Project,
    role: str,
    keyid: str,
    *,
    threshold: int | None = None,
    passphrase: PassphraseSource = no_passphrase,
    extra_signers: Sequence[Signer] = (),
) -> KeyChange:
    """Remove key ``keyid`` (or a unique prefix of 8+ hex digits) from ``role``."""
    passphrase = _asking_once(passphrase)
    old = project.trust_root()
    _check_role(role)
    r = old.role(role)
    full = _resolve_keyid(r.keyids, keyid, role)
    remaining = [k for k in r.keyids if k != full]
    if not remaining:
        raise UsageError(
            f"{full[:16]} is the only {role} key: revoking it leaves nobody to sign; "
            f"use 'mpseal keys rotate --role {role}'"
        )
    if threshold is None:
        if r.threshold > len(remaining):
            raise UsageError(
                f"role {role!r} would keep {len(remaining)} keys but needs {r.threshold} "
                f"signatures; give --threshold {len(remaining)} or add a key first"
            )
        threshold = r.threshold
    held = key_files(project, role, passphrase)
    new = _rebuild(old, role, remaining, threshold)
    change = _publish(project, old, new, role, passphrase, extra_signers, None, None)
    retired = _retire(project, role, [kf for kf in held if kf.keyid == full])
    _promote(project, role, None)
    return KeyChange(
        "revoke", role, old.version, change.root, change.root_file, (), (full,), None, retired
    )


# -- internals ----------------------------------------------------------------------------


def _asking_once(passphrase: PassphraseSource) -> PassphraseSource:
    """One prompt per role, however many of its key files are read."""
    cache: dict[str, bytes | None] = {}

    def ask(role: str) -> bytes | None:
        if role not in cache:
            cache[role] = passphrase(role)
        return cache[role]

    return ask


def _check_role(role: str) -> None:
    if role not in ROLES:
        raise UsageError(f"unknown role {role!r}; roles are {', '.join(ROLES)}")


def _check_new_key(root: TrustRoot, role: str, key: PublicKey) -> None:
    for name, r in root.roles.items():
        if key.keyid in r.keyids:
            if name == role:
                raise UsageError(f"key {key.keyid[:16]} is already a {role} key")
            raise UsageError(
                f"key {key.keyid[:16]} is already the {name} role's key; every role "
                "needs its own key (a stolen online key must not sign for another)"
            )


def _resolve_keyid(keyids: Sequence[str], text: str, role: str) -> str:
    text = text.lower()
    if len(text) < 8 or any(c not in "0123456789abcdef" for c in text):
        raise UsageError(
            f"key id {text[:20]!r} must be at least 8 hex digits (see 'mpseal keys list')"
        )
    found = [k for k in keyids if k.startswith(text)]
    if not found:
        raise UsageError(f"the {role} role has no key {text[:16]} (see 'mpseal keys list')")
    if len(found) > 1:
        raise UsageError(f"key id prefix {text} names {len(found)} {role} keys; give more digits")
    return found[0]


def _rebuild(
    old: TrustRoot,
    role: str,
    keyids: Sequence[str],
    threshold: int,
    extra: dict[str, PublicKey] | None = None,
) -> TrustRoot:
    pool = {**old.keys, **(extra or {})}
    role_keys = {name: [pool[k] for k in r.keyids] for name, r in old.roles.items()}
    thresholds = {name: r.threshold for name, r in old.roles.items()}
    role_keys[role] = [pool[k] for k in keyids]
    thresholds[role] = threshold
    return trustroot.build(old.version + 1, role_keys, thresholds, old.tls_anchors)


@dataclass(frozen=True)
class _Published:
    root: TrustRoot
    root_file: Path
    key_file: Path | None


def _publish(
    project: Project,
    old: TrustRoot,
    new: TrustRoot,
    role: str,
    passphrase: PassphraseSource,
    extra_signers: Sequence[Signer],
    new_signer: PrivateKeySigner | None,
    new_passphrase: bytes | None,
) -> _Published:
    """Sign ``new`` as the step after ``old`` and write key, archived root and trust root."""
    available: dict[str, Signer] = {
        kf.keyid: kf.signer for kf in key_files(project, "root", passphrase)
    }
    for s in extra_signers:
        available[s.public_key.keyid] = s
    if new_signer is not None and role == "root":
        available[new_signer.public_key.keyid] = new_signer
    raw = trustroot.sign_update(old, new, _root_signers(project, old, new, available))
    root_file = project.roots_dir / f"{new.version}.mpsr"
    if root_file.exists():
        raise ConfigError(
            f"{root_file} already exists but the trust root is version {old.version}: an earlier "
            f"change was interrupted; install that file as {project.config.trust_root} or remove it"
        )
    archive_root(project, old)
    key_file = None
    if new_signer is not None:
        main = default_key_path(project, role)
        key_file = main.parent / f"{main.stem}-{new_signer.public_key.keyid[:16]}.pem"
        write_atomic(key_file, new_signer.to_pem(new_passphrase), mode=KEY_MODE, exclusive=True)
    write_atomic(root_file, raw, exclusive=True)
    write_atomic(project.path(project.config.trust_root), raw)
    return _Published(project.trust_root(), root_file, key_file)


def _root_signers(
    project: Project, old: TrustRoot, new: TrustRoot, available: dict[str, Signer]
) -> list[Signer]:
    """A threshold of the old root role and of the new one, as few signatures as will do."""
    chosen: list[str] = []
    both = set(new.role("root").keyids)
    for doc in (old, new):
        role = doc.role("root")
        # Keys in both roles first: one signature then counts twice.
        order = sorted(role.keyids, key=lambda k: k not in both)
        have = [k for k in order if k in chosen]
        for k in order:
            if len(have) >= role.threshold:
                break
            if k in available and k not in chosen:
                chosen.append(k)
                have.append(k)
        if len(have) < role.threshold:
            folder = default_key_path(project, "root").parent
            raise ConfigError(
                f"trust root {new.version} needs {role.threshold} signatures of the root keys of "
                f"version {doc.version}; this project holds {len(have)} of them in {folder}: "
                "bring the offline root keys back to sign"
            )
    return [available[k] for k in chosen]


def _move(src: Path, dest: Path) -> None:
    """Rename without ever replacing a file (keys are never overwritten)."""
    try:
        os.link(src, dest)
    except FileExistsError:
        raise UsageError(f"{dest} already exists; refusing to overwrite a key") from None
    os.unlink(src)


def _retire(project: Project, role: str, files: Sequence[KeyFile]) -> tuple[Path, ...]:
    out = []
    for kf in files:
        folder = kf.path.parent / RETIRED
        folder.mkdir(mode=DIR_MODE, exist_ok=True)
        with contextlib.suppress(OSError):
            folder.chmod(DIR_MODE)
        dest = folder / f"{default_key_path(project, role).stem}-{kf.keyid[:16]}.pem"
        _move(kf.path, dest)
        out.append(dest)
    return tuple(out)


def _promote(project: Project, role: str, preferred: Path | None) -> Path | None:
    """If the role's main key path is free, move a key of the role there (the new one first)."""
    main = default_key_path(project, role)
    if main.exists():
        return preferred
    root = project.trust_root()
    if role not in root.roles:
        return preferred
    candidates = [preferred] if preferred is not None else []
    candidates += sorted(main.parent.glob(f"{main.stem}-*.pem"))
    for path in candidates:
        if path.stem.rsplit("-", 1)[-1] in {k[:16] for k in root.roles[role].keyids}:
            _move(path, main)
            return main if path == preferred else preferred
    return preferred


def set_tls_anchors(
    project: Project,
    anchors: Sequence[bytes],
    *,
    passphrase: PassphraseSource = no_passphrase,
    extra_signers: Sequence[Signer] = (),
) -> KeyChange:
    """A new trust root naming ``anchors`` (DER certificates, tried in order) as the update
    server's TLS anchors; its keys and roles unchanged. Devices take it through the update
    server like any root step, then pin these anchors instead of their provisioned file.

    To move a fleet to a server certificate under another anchor: name [old, new] here,
    wait until the fleet has this root, switch the server's certificate, then name [new]."""
    passphrase = _asking_once(passphrase)
    old = project.trust_root()
    if list(old.tls_anchors) == [bytes(a) for a in anchors]:
        raise UsageError("the trust root already names exactly these TLS anchors")
    role_keys = {name: [old.keys[k] for k in r.keyids] for name, r in old.roles.items()}
    thresholds = {name: r.threshold for name, r in old.roles.items()}
    new = trustroot.build(old.version + 1, role_keys, thresholds, tuple(anchors))
    change = _publish(project, old, new, "root", passphrase, extra_signers, None, None)
    return KeyChange("anchor", "root", old.version, change.root, change.root_file)
