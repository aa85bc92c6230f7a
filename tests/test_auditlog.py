"""The audit log of admin actions: every action through the admin API (so the CLI) is
recorded with the token's id (never the token), and `mpseal audit-log verify` detects an
edited row and a deleted row (threat tier: write access to the database, see
fleet/auditlog.py)."""

from __future__ import annotations

import hashlib
import json
from dataclasses import replace
from pathlib import Path

import sqlalchemy as sa
from server_support import (
    ADMIN_TOKEN,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
)

from mpseal.fleet.auditlog import AuditLog
from mpseal.fleet.registry import Registry
from mpseal.server.config import admin_token_hash


def _actions(db_url: str, tmp: Path) -> None:
    keys = make_keys(tmp / "keys")
    register(db_url, 3)
    with running_server(config_for(db_url, keys, tmp)) as srv, srv.admin() as admin:
        r = admin.post("/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2))
        assert r.status_code == 201, r.text
        rid = r.json()["release"]["id"]
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 10}).status_code == 200
        )
        assert admin.post(f"/v1/admin/releases/{rid}/pause").status_code == 200
        assert admin.post(f"/v1/admin/releases/{rid}/resume").status_code == 200
        assert (
            admin.post("/v1/admin/devices/dev-00001/revoke", json={"reason": "stolen"}).status_code
            == 200
        )
        # a refused request leaves no row
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 200}).status_code
            == 400
        )


def test_every_admin_action_is_recorded_with_the_token_id(
    db_url: str, tmp_path: Path, mpseal
) -> None:
    _actions(db_url, tmp_path)
    log = AuditLog(Registry.open(db_url))
    everything = list(reversed(log.page()))
    assert everything[0].action == "config" and everything[0].actor == "server"
    entries = everything[1:]
    assert [e.action for e in entries] == ["publish", "promote", "pause", "resume", "revoke"]
    token_id = "token:" + hashlib.sha256(ADMIN_TOKEN.encode()).hexdigest()[:16]
    assert {e.actor for e in entries} == {token_id}
    assert entries[1].detail == {"percent": 10.0}
    assert entries[4].target == "device dev-00001" and entries[4].detail["reason"] == "stolen"
    with Registry.open(db_url).engine.connect() as conn:
        dump = json.dumps(
            [list(r) for r in conn.execute(sa.text("SELECT * FROM audit_log"))], default=str
        )
    assert ADMIN_TOKEN not in dump  # the token itself is never stored
    res = mpseal("audit-log", "verify", "--db", db_url, "--json")
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["rows"] == 6 and out["head"] == entries[-1].hash


def test_key_and_ca_changes_seen_by_the_server_are_recorded(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'mpseal.db'}"
    keys = make_keys(tmp_path / "keys")
    with running_server(config_for(db_url, keys, tmp_path)):
        pass
    with running_server(config_for(db_url, keys, tmp_path)):
        pass  # nothing changed: no new row
    second = admin_token_hash("another-admin-token-" + "x" * 20)
    cfg = config_for(db_url, keys, tmp_path)
    with running_server(replace(cfg, admin_token_hashes=(*cfg.admin_token_hashes, second))):
        pass
    entries = [e for e in reversed(AuditLog(Registry.open(db_url)).page()) if e.action == "config"]
    assert len(entries) == 2, [e.detail for e in entries]
    assert entries[0].detail["trust_root_version"] == 1
    assert entries[1].detail["changed"] == ["admin_tokens"]
    assert "token:" + second[:16] in entries[1].detail["admin_tokens"]  # type: ignore[operator]


def test_audit_log_edited_row_detected(db_url: str, mpseal) -> None:
    log = AuditLog(Registry.open(db_url))
    for i in range(4):
        log.append("token:abc", "promote", f"release {i}", {"percent": i})
    with log.registry.engine.begin() as conn:  # the intruder makes row 2 say 50 %
        conn.execute(
            sa.text("UPDATE audit_log SET detail = :d WHERE id = 2"), {"d": '{"percent":50}'}
        )
    res = mpseal("audit-log", "verify", "--db", db_url)
    assert res.returncode == 3
    assert "row 2 was edited" in res.stderr


def test_audit_log_deleted_row_detected(db_url: str, mpseal) -> None:
    log = AuditLog(Registry.open(db_url))
    for i in range(4):
        log.append("token:abc", "revoke", f"device d{i}")
    head = log.verify().head
    with log.registry.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE id = 3"))
    res = mpseal("audit-log", "verify", "--db", db_url)
    assert res.returncode == 3 and "row 3 is missing" in res.stderr
    # the newest row removed: found against the head recorded before
    with log.registry.engine.begin() as conn:
        conn.execute(sa.text("DELETE FROM audit_log WHERE id >= 3"))
    assert mpseal("audit-log", "verify", "--db", db_url).returncode == 0
    res = mpseal("audit-log", "verify", "--db", db_url, "--head", head)
    assert res.returncode == 3 and "rows were removed" in res.stderr


def test_audit_log_concurrent_writers_keep_one_chain(db_url: str) -> None:
    from concurrent.futures import ThreadPoolExecutor

    log = AuditLog(Registry.open(db_url))
    with ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda i: log.append("token:x", "pause", f"release {i}"), range(40)))
    assert log.verify().rows == 40


def test_offline_registry_commands_are_recorded_as_the_local_user(tmp_path: Path, mpseal) -> None:
    """`mpseal registry revoke/activate` write the database directly (no server sees them):
    they append their own rows, naming the OS user and host."""
    db_url = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db_url, 2)
    res = mpseal("registry", "revoke", "dev-00001", "--db", db_url, "--reason", "stolen")
    assert res.returncode == 0, res.stderr
    entries = AuditLog(Registry.open(db_url)).page()
    assert entries[0].action == "revoke" and entries[0].target == "device dev-00001"
    assert entries[0].actor.startswith("local:") and entries[0].detail["reason"] == "stolen"
    assert mpseal("audit-log", "verify", "--db", db_url).returncode == 0
