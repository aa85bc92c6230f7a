"""``mpseal keys``: add, rotate and revoke make trust root chains a device accepts, and refuse
everything else in one line without changing a file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest
from conftest import run_mpseal

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.errors import SignatureError
from mpseal.formats import trustroot
from mpseal.formats.updatemeta import Timestamp, parse_timestamp, sign_timestamp
from mpseal.packaging import keys as keys_mod
from mpseal.packaging.project import Project

NOW = 1_795_000_000


def keys(project: Path, *args: str, env: dict[str, str] | None = None):
    return run_mpseal("keys", *args, "-C", project, env=env)


def keys_json(project: Path, *args: str) -> dict:
    res = keys(project, *args, "--json")
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def snapshot(project: Path) -> dict[Path, bytes]:
    return {p: p.read_bytes() for p in (project / "keys").rglob("*") if p.is_file()}


def chain(project: Path) -> trustroot.TrustRoot:
    """Verify keys/roots/1..N as a device holding version 1 would; the end is the trust root."""
    roots = project / "keys" / "roots"
    versions = sorted(int(p.stem) for p in roots.glob("*.mpsr"))
    assert versions == list(range(1, len(versions) + 1))
    first = trustroot.parse((roots / "1.mpsr").read_bytes())
    newest = trustroot.verify_root_chain(
        first, [(roots / f"{v}.mpsr").read_bytes() for v in versions[1:]]
    )
    assert newest.raw == (project / "keys" / "trust-root.mpsr").read_bytes()
    return newest


def one_line_error(res, code: int, text: str) -> None:
    assert res.returncode == code, res.stderr
    assert text in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def timestamp_verifies(project: Path) -> None:
    """The project's timestamp key signs what its trust root accepts."""
    proj = Project.load(project)
    signers = keys_mod.role_signers(proj, "timestamp")
    raw = sign_timestamp(Timestamp(1, NOW, NOW + 60, proj.trust_root().version), signers)
    parse_timestamp(raw, proj.trust_root(), now=NOW)


def test_init_makes_a_timestamp_role_and_keeps_root_version_1(project: Path) -> None:
    root = chain(project)
    assert root.version == 1 and set(root.roles) == {"root", "release", "timestamp"}
    assert mode(project / "keys/timestamp.pem") == 0o600
    signer = Project.load(project).timestamp_signer()
    assert root.roles["timestamp"].keyids == (signer.public_key.keyid,)
    listed = keys_json(project, "list")
    assert listed["version"] == 1 and listed["roots"] == [1]
    assert listed["roles"]["timestamp"]["keyids"] == [signer.public_key.keyid]
    timestamp_verifies(project)


def test_rotate_timestamp_key(project: Path) -> None:
    old = Project.load(project).timestamp_signer()
    out = keys_json(project, "rotate", "--role", "timestamp")
    assert out["version"] == 2 and out["removed"] == [old.public_key.keyid]
    assert out["key_file"] == str(project / "keys/timestamp.pem")
    new = Project.load(project).timestamp_signer()
    root = chain(project)
    assert root.roles["timestamp"].keyids == (new.public_key.keyid,) == tuple(out["added"])
    retired = project / f"keys/retired/timestamp-{old.public_key.keyid[:16]}.pem"
    assert retired.is_file() and mode(retired) == 0o600 and mode(retired.parent) == 0o700
    timestamp_verifies(project)
    with pytest.raises(SignatureError, match="unknown key"):  # the thief's key is out
        parse_timestamp(sign_timestamp(Timestamp(2, NOW, NOW + 60, 2), [old]), root, now=NOW)


def test_threshold_2_root_signs_with_both_keys_and_needs_both(project: Path) -> None:
    out = keys_json(project, "add", "--role", "root", "--threshold", "2")
    assert out["version"] == 2 and out["threshold"] == 2
    second = Path(out["key_file"])
    assert second.parent == project / "keys/offline" and mode(second) == 0o600
    assert keys_json(project, "rotate", "--role", "release")["version"] == 3
    assert chain(project).roles["root"].threshold == 2
    # With one root key gone offline for real, no change can be signed.
    second.rename(project / "away.pem")
    before = snapshot(project)
    res = keys(project, "rotate", "--role", "timestamp")
    one_line_error(res, 2, "needs 2 signatures of the root keys of version 3")
    assert snapshot(project) == before
    (project / "away.pem").rename(second)
    assert keys_json(project, "rotate", "--role", "timestamp")["version"] == 4
    chain(project)


def test_rotate_root_key_fast_forward_chain(project: Path) -> None:
    first = trustroot.parse((project / "keys/roots/1.mpsr").read_bytes())
    old_root = first.roles["root"].keyids[0]
    out = keys_json(project, "rotate", "--role", "root")
    assert out["removed"] == [old_root] and out["key_file"] == str(
        project / "keys/offline/root.pem"
    )
    assert (project / f"keys/offline/retired/root-{old_root[:16]}.pem").is_file()
    keys_json(project, "rotate", "--role", "timestamp")
    keys_json(project, "rotate", "--role", "root")
    root = chain(project)
    assert root.version == 4 and old_root not in root.keys
    timestamp_verifies(project)
    # Skipping a version is refused, as on a device.
    roots = project / "keys/roots"
    with pytest.raises(Exception, match="does not follow"):
        trustroot.verify_root_chain(first, [(roots / "3.mpsr").read_bytes()])


def test_revoke(project: Path) -> None:
    out = keys_json(project, "add", "--role", "release")
    assert out["threshold"] == 1
    first = trustroot.parse((project / "keys/roots/1.mpsr").read_bytes())
    old_release = first.roles["release"].keyids[0]
    out = keys_json(project, "revoke", "--role", "release", old_release[:12])
    assert out["removed"] == [old_release] and out["version"] == 3
    root = chain(project)
    assert old_release not in root.keys and len(root.roles["release"].keyids) == 1
    # The remaining key moved to the main path, so builds keep working.
    assert (
        Project.load(project).release_signer().public_key.keyid == root.roles["release"].keyids[0]
    )
    assert (project / f"keys/retired/release-{old_release[:16]}.pem").is_file()
    assert run_mpseal("build", "-C", project).returncode == 0


def test_revoke_refusals_are_one_line_and_change_nothing(project: Path) -> None:
    keys_json(project, "add", "--role", "root", "--threshold", "2")
    before = snapshot(project)
    root = chain(project)
    release = root.roles["release"].keyids[0]
    root_key = root.roles["root"].keyids[0]
    one_line_error(
        keys(project, "revoke", "--role", "release", release), 2, "is the only release key"
    )
    one_line_error(
        keys(project, "revoke", "--role", "root", root_key),
        2,
        "would keep 1 keys but needs 2 signatures; give --threshold 1",
    )
    one_line_error(
        keys(project, "revoke", "--role", "root", "0123456789ab"),
        2,
        "the root role has no key 0123456789ab",
    )
    one_line_error(
        keys(project, "revoke", "--role", "root", "abc"), 2, "must be at least 8 hex digits"
    )
    assert snapshot(project) == before
    out = keys_json(project, "revoke", "--role", "root", root_key, "--threshold", "1")
    assert out["version"] == 3 and chain(project).roles["root"].threshold == 1


def test_add_an_existing_public_key(project: Path, tmp_path: Path) -> None:
    hsm = PrivateKeySigner.generate()
    pem = tmp_path / "hsm.pub.pem"
    pem.write_bytes(hsm.public_key.to_pem())
    out = keys_json(project, "add", "--role", "timestamp", "--public", pem, "--threshold", "2")
    assert out["key_file"] is None and out["added"] == [hsm.public_key.keyid]
    root = chain(project)
    assert root.roles["timestamp"].threshold == 2
    both = [Project.load(project).timestamp_signer(), hsm]
    parse_timestamp(sign_timestamp(Timestamp(1, NOW, NOW + 60, 2), both), root, now=NOW)
    with pytest.raises(SignatureError, match="threshold is 2"):
        parse_timestamp(sign_timestamp(Timestamp(1, NOW, NOW + 60, 2), both[:1]), root, now=NOW)
    before = snapshot(project)
    one_line_error(
        keys(project, "add", "--role", "release", "--public", pem),
        2,
        "already the timestamp role's key",
    )
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----\n")
    one_line_error(
        keys(project, "add", "--role", "release", "--public", bad), 3, "not a PEM public key"
    )
    assert snapshot(project) == before


def test_refuses_to_overwrite_an_interrupted_change(project: Path) -> None:
    """roots/2.mpsr exists but the trust root is still 1: never overwrite either."""
    (project / "keys/roots/2.mpsr").write_bytes(b"left by an interrupted change")
    before = snapshot(project)
    one_line_error(
        keys(project, "rotate", "--role", "timestamp"),
        2,
        "2.mpsr already exists but the trust root is version 1",
    )
    assert snapshot(project) == before


def test_refuses_a_kept_root_that_differs(project: Path) -> None:
    (project / "keys/roots/1.mpsr").write_bytes(b"changed by hand")
    before = snapshot(project)
    one_line_error(
        keys(project, "add", "--role", "release"), 2, "differs from the project's trust root"
    )
    assert snapshot(project) == before


def test_an_old_project_gets_its_timestamp_role_and_key(project: Path) -> None:
    """A project from before timestamps: no timestamp role, no roots/ folder."""
    proj = Project.load(project)
    root = proj.trust_root()
    rootkey = proj.load_signer(proj.config.root_key, "root", lambda _: None)
    doc = trustroot.build(
        1, {n: [root.keys[k] for k in r.keyids] for n, r in root.roles.items() if n != "timestamp"}
    )
    (project / "keys/trust-root.mpsr").write_bytes(trustroot.sign(doc, [rootkey]))
    for p in (project / "keys/roots").iterdir():
        p.unlink()
    (project / "keys/timestamp.pem").unlink()
    out = keys_json(project, "add", "--role", "timestamp")
    assert out["version"] == 2 and out["key_file"] == str(project / "keys/timestamp.pem")
    assert sorted(p.name for p in (project / "keys/roots").iterdir()) == ["1.mpsr", "2.mpsr"]
    chain(project)
    timestamp_verifies(project)


def test_passphrase_protected_keys(tmp_path: Path) -> None:
    folder = tmp_path / "enc"
    env = {"MPSEAL_PASSPHRASE": "correct horse battery staple"}
    assert run_mpseal("init", folder, "--board", "unix", "--encrypt-keys", env=env).returncode == 0
    assert b"ENCRYPTED" in (folder / "keys/timestamp.pem").read_bytes()
    before = snapshot(folder)
    one_line_error(keys(folder, "rotate", "--role", "timestamp"), 2, "MPSEAL_PASSPHRASE")
    one_line_error(
        keys(folder, "rotate", "--role", "timestamp", env={"MPSEAL_PASSPHRASE": "wrong"}),
        2,
        "wrong passphrase",
    )
    assert snapshot(folder) == before
    res = keys(folder, "rotate", "--role", "timestamp", "--encrypt-key", env=env)
    assert res.returncode == 0, res.stderr
    assert b"ENCRYPTED" in (folder / "keys/timestamp.pem").read_bytes()
    chain(folder)


def test_list_text(project: Path) -> None:
    res = keys(project, "list")
    assert res.returncode == 0 and "Trust root version 1" in res.stdout
    assert "timestamp  threshold 1 of 1" in res.stdout


def test_unknown_role_is_a_usage_error(project: Path) -> None:
    res = keys(project, "add", "--role", "admin")
    assert res.returncode == 2 and "admin" in res.stderr
