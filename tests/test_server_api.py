"""The update server for real (uvicorn on 127.0.0.1, httpx as the client), on SQLite and on a
real PostgreSQL: publish, check, download with Range resume, report, revocation, admin auth,
and hostile requests that must end in a clean one-line 4xx."""

from __future__ import annotations

import hashlib
import json
import socket
import time
from pathlib import Path

import httpx
import pytest
from server_support import (
    ADMIN_TOKEN,
    Keys,
    config_for,
    make_artifact,
    make_keys,
    register,
    running_server,
)

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.formats.updatemeta import parse_timestamp
from mpseal.server.openapi import render

DOCS = Path(__file__).resolve().parents[1] / "docs"


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def check_body(hw: str, version: str = "1.0.0", counter: int = 1, **kw: object) -> dict:
    return {
        "hardware_id": hw,
        "board": "esp32",
        "app": "hello",
        "version": version,
        "counter": counter,
        "timestamp_version": 0,
        **kw,
    }


def assert_one_line_error(resp: httpx.Response, status: int) -> str:
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert list(body) == ["error"] and "\n" not in body["error"]
    assert "Traceback" not in resp.text
    return body["error"]


def test_publish_promote_check_download_resume_report(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 3)
    with (
        running_server(config_for(db_url, keys, tmp_path)) as srv,
        srv.admin() as admin,
        httpx.Client(base_url=srv.url, timeout=30) as dev,
    ):
        blob = make_artifact(keys.release, "1.1.0", counter=2, size=200_000)
        rel = admin.post("/v1/admin/releases", content=blob).json()["release"]
        assert (rel["state"], rel["percent"], rel["size"]) == ("active", 0.0, len(blob))
        hw = "dev-00000"
        h = fleet.headers(hw)
        # Published is not offered: nobody is in the rollout yet.
        first = dev.post("/v1/device/check", json=check_body(hw), headers=h).json()
        assert first == {"update": False, "timestamp": "timestamp/stable.mpst", "root_version": 1}

        admin.post(f"/v1/admin/releases/{rel['id']}/promote", json={"percent": 100})
        answer = dev.post("/v1/device/check", json=check_body(hw), headers=h).json()
        assert answer["update"] is True
        target = answer["target"]
        assert target["path"] == f"artifacts/{hashlib.sha256(blob).hexdigest()}.mpseal"
        # What the server offers is exactly what the signed timestamp names.
        raw = dev.get("/v1/timestamp/stable.mpst", headers=h).content
        ts = parse_timestamp(raw, keys.trust_root)
        assert [t.to_dict() for t in ts.targets] == [target] and ts.version > first.get(
            "timestamp_version", 0
        )
        assert (
            dev.get("/v1/roots/1.mpsr", headers=h).content
            == (keys.roots_dir / "1.mpsr").read_bytes()
        )

        # A download cut after 77,777 bytes resumes with Range and completes the file.
        url = "/v1/" + target["path"]
        whole = dev.get(url, headers=h)
        assert whole.status_code == 200 and whole.content == blob
        assert whole.headers["accept-ranges"] == "bytes"
        cut = 77_777
        rest = dev.get(url, headers={**h, "Range": f"bytes={cut}-"})
        assert rest.status_code == 206
        assert rest.headers["content-range"] == f"bytes {cut}-{len(blob) - 1}/{len(blob)}"
        assert blob[:cut] + rest.content == blob

        for event in ("downloaded", "staged", "booted", "confirmed"):
            r = dev.post(
                "/v1/device/report",
                headers=h,
                json={
                    "hardware_id": hw,
                    "event": event,
                    "version": "1.1.0",
                    "app": "hello",
                    "board": "esp32",
                },
            )
            assert r.json() == {"recorded": True}  # names no release
        listed = admin.get("/v1/admin/releases").json()["releases"]
        assert listed[0]["counts"]["updated"] == 1 and listed[0]["counts"]["attempts"] == 1
        # Updated: nothing more to offer.
        again = dev.post("/v1/device/check", json=check_body(hw, "1.1.0", 2), headers=h).json()
        assert again["update"] is False


def test_publish_refuses_tampered_and_foreign_artifacts(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    cfg = config_for(db_url, keys, tmp_path)
    with running_server(cfg) as srv, srv.admin() as admin:
        good = make_artifact(keys.release, "1.0.1")
        tampered = bytearray(good)
        tampered[-10] ^= 1  # one bit of the image
        foreign = make_artifact(PrivateKeySigner.generate(), "1.0.2")
        msg = assert_one_line_error(admin.post("/v1/admin/releases", content=bytes(tampered)), 400)
        assert "altered" in msg
        msg = assert_one_line_error(admin.post("/v1/admin/releases", content=foreign), 400)
        assert "unknown key" in msg
        assert_one_line_error(admin.post("/v1/admin/releases", content=b"not an artifact"), 400)
        assert admin.get("/v1/admin/releases").json()["releases"] == []
        assert not any(cfg.artifacts_dir.iterdir())  # nothing refused was stored
        assert admin.post("/v1/admin/releases", content=good).status_code == 201
        # The same version again is a conflict, not a second release.
        assert_one_line_error(admin.post("/v1/admin/releases", content=good), 409)
        assert [p.name for p in cfg.artifacts_dir.iterdir()] == [
            f"{hashlib.sha256(good).hexdigest()}.mpseal"
        ]


def test_revoked_device_is_refused_on_every_call(db_url: str, keys: Keys, tmp_path: Path) -> None:
    fleet = register(db_url, 2)
    with (
        running_server(config_for(db_url, keys, tmp_path)) as srv,
        srv.admin() as admin,
        httpx.Client(base_url=srv.url) as dev,
    ):
        blob = make_artifact(keys.release, "1.1.0", 2)
        rid = admin.post("/v1/admin/releases", content=blob).json()["release"]["id"]
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})
        leaked, good = "dev-00000", "dev-00001"
        assert (
            dev.post(
                "/v1/device/check", json=check_body(leaked), headers=fleet.headers(leaked)
            ).status_code
            == 200
        )
        r = admin.post(f"/v1/admin/devices/{leaked}/revoke", json={"reason": "token leaked"})
        assert r.json() == {"hardware_id": leaked, "state": "revoked", "certificates_revoked": 1}
        h = fleet.headers(leaked)
        path = f"/v1/artifacts/{hashlib.sha256(blob).hexdigest()}.mpseal"
        for resp in (
            dev.post("/v1/device/check", json=check_body(leaked), headers=h),
            dev.post(
                "/v1/device/report",
                headers=h,
                json={"hardware_id": leaked, "event": "booted", "version": "1.1.0"},
            ),
            dev.get("/v1/timestamp/stable.mpst", headers=h),
            dev.get("/v1/roots/1.mpsr", headers=h),
            dev.get(path, headers=h),
        ):
            assert_one_line_error(resp, 403)
        # Everyone else is unaffected.
        assert (
            dev.post("/v1/device/check", json=check_body(good), headers=fleet.headers(good)).json()[
                "update"
            ]
            is True
        )
        assert_one_line_error(admin.post("/v1/admin/devices/no-such-device/revoke"), 404)


def test_admin_api_needs_the_admin_token(tmp_path: Path, keys: Keys) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fleet = register(url, 1)
    with running_server(config_for(url, keys, tmp_path)) as srv:
        blob = make_artifact(keys.release)
        for headers in (
            {},
            {"Authorization": "Bearer wrong"},
            {"Authorization": f"Basic {ADMIN_TOKEN}"},
            fleet.headers("dev-00000"),
        ):  # a device token is not an admin token
            with httpx.Client(base_url=srv.url, headers=headers) as c:
                assert_one_line_error(c.get("/v1/admin/releases"), 401)
                assert_one_line_error(c.post("/v1/admin/releases", content=blob), 401)
                assert_one_line_error(c.post("/v1/admin/releases/1/pause"), 401)
                assert_one_line_error(c.post("/v1/admin/devices/dev-00000/revoke"), 401)
        with srv.admin() as admin:
            assert admin.get("/v1/admin/releases").status_code == 200


def raw_request(url: str, request: bytes) -> tuple[int, bytes]:
    """Send bytes as they are (no client-side path normalisation); return status and body."""
    host, port = url.split("//")[1].split(":")
    with socket.create_connection((host, int(port)), timeout=10) as s:
        s.sendall(request)
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body


def test_hostile_requests_get_a_clean_4xx(db_url: str, keys: Keys, tmp_path: Path) -> None:
    fleet = register(db_url, 2)
    cfg = config_for(db_url, keys, tmp_path)
    (tmp_path / "secret.mpseal").write_bytes(b"outside the artifact folder")
    with running_server(cfg) as srv, httpx.Client(base_url=srv.url) as dev:
        hw = "dev-00000"
        h = fleet.headers(hw)
        post = dev.post
        assert_one_line_error(
            post("/v1/device/check", headers=h, content=b"{" + b" " * 10_000 + b"}"), 413
        )
        assert_one_line_error(post("/v1/device/check", headers=h, content=b"\xff\xfe{"), 400)
        assert_one_line_error(post("/v1/device/check", headers=h, content=b"[1, 2]"), 400)
        assert_one_line_error(post("/v1/device/check", headers=h, content=b"[" * 3000), 400)
        assert_one_line_error(post("/v1/device/check", headers=h, content=b""), 400)
        for bad in (
            {"counter": "1"},
            {"counter": True},
            {"counter": -1},
            {"board": "../x"},
            {"app": "a b"},
            {"version": "1.0\n"},
            {"timestamp_version": 1.5},
            {"channel": "../../etc"},
            {"hardware_id": "x" * 65},
        ):
            msg = assert_one_line_error(
                post("/v1/device/check", headers=h, json={**check_body(hw), **bad}), 400
            )
            assert msg
        body = check_body(hw)
        del body["counter"]
        assert_one_line_error(post("/v1/device/check", headers=h, json=body), 400)
        # Another device's hardware id with my token; an unknown token; no credentials.
        assert_one_line_error(
            post("/v1/device/check", headers=h, json=check_body("dev-00001")), 403
        )
        assert_one_line_error(
            post(
                "/v1/device/check", json=check_body(hw), headers={"Authorization": "Bearer nobody"}
            ),
            403,
        )
        assert_one_line_error(post("/v1/device/check", json=check_body(hw)), 401)
        status, _ = raw_request(
            srv.url,
            b"POST /v1/device/check HTTP/1.1\r\nHost: x\r\n"
            b"Content-Length: abc\r\nConnection: close\r\n\r\n{}",
        )
        assert status == 400  # refused by the HTTP parser itself
        assert_one_line_error(
            post(
                "/v1/device/report",
                headers=h,
                json={"hardware_id": hw, "event": "exploded", "version": "1.0.0"},
            ),
            400,
        )
        assert_one_line_error(
            post("/v1/device/check", headers=h, json=check_body(hw, channel="nosuch")), 404
        )
        # Names that try to leave the artifact folder never become paths.
        for name in (
            "..%2Fsecret.mpseal",
            "..%2F..%2Fsecret.mpseal",
            "%2e%2e%2fsecret.mpseal",
            "ABC.mpseal",
            "x" * 64 + ".mpseal",
            "secret.mpseal",
        ):
            r = dev.get(f"/v1/artifacts/{name}", headers=h)
            assert 400 <= r.status_code < 500 and b"outside" not in r.content, name
        for raw_path in (
            b"/v1/artifacts/../../secret.mpseal",
            b"/v1/artifacts/..%2f..%2fsecret",
            b"/v1/roots/../../keys/timestamp.pem",
            b"/v1/timestamp/..%2f..%2fx",
        ):
            status, body_bytes = raw_request(
                srv.url,
                b"GET " + raw_path + b" HTTP/1.1\r\n"
                b"Host: x\r\nAuthorization: Bearer "
                + fleet.tokens[hw].encode()
                + b"\r\nConnection: close\r\n\r\n",
            )
            assert (
                400 <= status < 500
                and b"outside" not in body_bytes
                and b"PRIVATE" not in body_bytes
            ), raw_path
            assert "error" in json.loads(body_bytes)
        assert_one_line_error(dev.get("/v1/roots/0.mpsr", headers=h), 400)
        assert_one_line_error(dev.get("/v1/roots/7.mpsr", headers=h), 404)
        assert_one_line_error(dev.get("/v1/timestamp/UPPER.mpst", headers=h), 400)
        assert_one_line_error(dev.get("/no/such/route"), 404)
        assert_one_line_error(dev.put("/v1/device/check"), 405)
        # An oversized upload is cut off before it is read whole.
        with srv.admin() as admin:
            big = b"\0" * (cfg.limits.artifact_upload_max + 1)
            assert_one_line_error(admin.post("/v1/admin/releases", content=big), 413)
            assert_one_line_error(
                admin.post("/v1/admin/releases/1/promote", json={"percent": 10}), 404
            )
            assert_one_line_error(admin.post("/v1/admin/releases/abc/pause"), 400)


def test_openapi_is_served_and_docs_copy_matches(tmp_path: Path, keys: Keys) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    with running_server(config_for(url, keys, tmp_path)) as srv:
        served = httpx.get(f"{srv.url}/openapi.json").json()
    assert served == json.loads(render())
    assert (DOCS / "openapi.json").read_text() == render(), (
        "docs/openapi.json is stale: python -m mpseal.server.openapi > docs/openapi.json"
    )
    paths = set(served["paths"])
    assert {
        "/v1/device/check",
        "/v1/device/report",
        "/v1/timestamp/{channel}.mpst",
        "/v1/roots/{version}.mpsr",
        "/v1/artifacts/{sha256}.mpseal",
    } <= paths


def test_downloads_can_be_redirected_to_a_cdn(tmp_path: Path, keys: Keys) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fleet = register(url, 1)
    cfg = config_for(url, keys, tmp_path, artifact_base_url="https://cdn.example.com/fw/")
    with running_server(cfg) as srv, httpx.Client(base_url=srv.url) as dev:
        name = "ab" * 32 + ".mpseal"
        r = dev.get(f"/v1/artifacts/{name}", headers=fleet.headers("dev-00000"))
        assert r.status_code == 302
        assert r.headers["location"] == f"https://cdn.example.com/fw/{name}"
        # Still only for devices: the redirect is not handed to anyone.
        assert dev.get(f"/v1/artifacts/{name}").status_code == 401


def test_a_new_trust_root_is_served_and_named_at_once(tmp_path: Path, keys: Keys) -> None:
    """'mpseal keys' writes roots/<N+1>.mpsr: devices can fetch it and the timestamp names it
    without waiting for a maintenance round."""
    from mpseal.formats import trustroot

    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fleet = register(url, 1)
    h = fleet.headers("dev-00000")
    with (
        running_server(config_for(url, keys, tmp_path)) as srv,
        httpx.Client(base_url=srv.url) as dev,
    ):
        assert dev.get("/v1/roots/2.mpsr", headers=h).status_code == 404
        old = keys.trust_root
        new = trustroot.TrustRoot(2, old.keys, old.roles)
        (keys.roots_dir / "2.mpsr").write_bytes(trustroot.sign_update(old, new, [keys.root]))
        assert (
            dev.get("/v1/roots/2.mpsr", headers=h).content
            == (keys.roots_dir / "2.mpsr").read_bytes()
        )
        time.sleep(0.3)  # the server's caches (0.2 s in these tests)
        answer = dev.post("/v1/device/check", json=check_body("dev-00000"), headers=h).json()
        assert answer["root_version"] == 2
        raw = dev.get("/v1/timestamp/stable.mpst", headers=h).content
        assert (
            parse_timestamp(
                raw, trustroot.parse((keys.roots_dir / "2.mpsr").read_bytes())
            ).root_version
            == 2
        )
