"""The admin read API for logs on the real server (SQLite and PostgreSQL): the audit log
and a device's log lines as JSON keyset pages under the admin token, the audit chain
verified over HTTP, and the same through the CLI (`mpseal audit-log list --server`,
`mpseal device logs`, `mpseal release resume --reason`)."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
from server_support import (
    ADMIN_TOKEN,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
)

from mpseal.fleet import devicelogs
from mpseal.fleet.registry import Registry

ENV = {"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}


def _all(admin: httpx.Client, path: str, key: str, limit: int) -> list[dict]:
    out, params = [], {"limit": str(limit)}
    while True:
        body = admin.get(path, params=params).json()
        out += body[key]
        if body["next"] is None:
            return out
        assert len(body[key]) == limit
        params = {"limit": str(limit), "before": str(body["next"])}


def test_admin_reads_audit_log_and_device_logs_in_pages(
    db_url: str, tmp_path: Path, mpseal
) -> None:
    keys = make_keys(tmp_path / "keys")
    register(db_url, 2)
    reg = Registry.open(db_url)
    dev = reg.find_device("dev-00000")
    assert dev is not None
    for i in range(5):
        devicelogs.append(reg, dev.id, [("guard", f"boot {i}"), ("app", f"app line {i}")])
    reg.engine.dispose()
    with running_server(config_for(db_url, keys, tmp_path)) as srv, srv.admin() as admin:
        url = srv.url
        r = admin.post("/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2))
        assert r.status_code == 201, r.text
        rid = r.json()["release"]["id"]
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 10})
        admin.post(f"/v1/admin/releases/{rid}/pause", json={"reason": "a look at the chart"})
        res = mpseal(
            "release", "resume", "1.1.0", "--reason", "chart is fine", "--server", url,
            "--json", env=ENV,
        )  # fmt: skip
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["state"] == "active"

        # The audit log, newest first, page by page; the chain verifies over HTTP.
        first = admin.get("/v1/admin/audit-log", params={"limit": 2}).json()
        assert [e["action"] for e in first["entries"]] == ["resume", "pause"]
        assert first["next"] == first["entries"][-1]["seq"]
        assert first["entries"][0]["detail"]["reason"] == "chart is fine"
        assert first["entries"][1]["detail"]["reason"] == "a look at the chart"
        entries = _all(admin, "/v1/admin/audit-log", "entries", 2)
        assert [e["action"] for e in entries] == ["resume", "pause", "promote", "publish", "config"]
        assert [e["seq"] for e in entries] == [5, 4, 3, 2, 1]
        ok = admin.get("/v1/admin/audit-log/verify").json()
        assert ok == {"ok": True, "rows": 5, "head": entries[0]["hash"]}
        wrong = admin.get("/v1/admin/audit-log/verify", params={"head": "0" * 64}).json()
        assert wrong["ok"] is False and "head" in wrong["error"]
        only = admin.get("/v1/admin/audit-log", params={"action": "promote"}).json()
        assert [e["detail"] for e in only["entries"]] == [{"percent": 10.0}]

        # A device's log lines, newest first, page by page.
        page = admin.get("/v1/admin/devices/dev-00000/logs", params={"limit": 3}).json()
        assert page["hardware_id"] == "dev-00000"
        assert [(x["source"], x["line"]) for x in page["lines"]] == [
            ("app", "app line 4"),
            ("guard", "boot 4"),
            ("app", "app line 3"),
        ]
        lines = _all(admin, "/v1/admin/devices/dev-00000/logs", "lines", 3)
        assert [x["line"] for x in lines][::2] == [f"app line {i}" for i in range(4, -1, -1)]
        assert admin.get("/v1/admin/devices/dev-00001/logs").json() == {
            "hardware_id": "dev-00001",
            "lines": [],
            "next": None,
        }

        # Refused: no token, bad parameters, a device that is not there.
        assert httpx.get(f"{url}/v1/admin/audit-log").status_code == 401
        assert httpx.get(f"{url}/v1/admin/devices/dev-00000/logs").status_code == 401
        for params in ({"limit": "0"}, {"limit": "501"}, {"before": "x"}, {"nope": "1"}):
            assert admin.get("/v1/admin/audit-log", params=params).status_code == 400, params
        assert admin.get("/v1/admin/audit-log", params={"action": "../x"}).status_code == 400
        assert admin.get("/v1/admin/audit-log/verify", params={"head": "zz"}).status_code == 400
        assert admin.get("/v1/admin/devices/dev-00000/logs?limit=1001").status_code == 400
        assert admin.get("/v1/admin/devices/no-such/logs").status_code == 404
        r = admin.post(f"/v1/admin/releases/{rid}/pause", json={"why": "x"})
        assert r.status_code == 400

        # The same through the CLI.
        res = mpseal("audit-log", "list", "--server", url, "--limit", "3", "--json", env=ENV)
        assert res.returncode == 0, res.stderr
        got = json.loads(res.stdout)["entries"]
        assert [e["action"] for e in got] == ["resume", "pause", "promote"]
        res = mpseal("audit-log", "verify", "--server", url, "--json", env=ENV)
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["rows"] == 5
        res = mpseal("device", "logs", "dev-00000", "--server", url, "--limit", "3", env=ENV)
        assert res.returncode == 0, res.stderr
        shown = [ln.split(" ", 1)[1] for ln in res.stdout.splitlines()]
        assert shown == ["[app] app line 3", "[guard] boot 4", "[app] app line 4"]  # oldest first
        res = mpseal("device", "logs", "no-such", "--server", url, env=ENV)
        assert res.returncode != 0 and "no device no-such" in res.stderr
