"""One mutual-TLS connection for a whole update round (issue 11, point 8, the server side):
check, timestamp, root, artifact and report on one kept-alive connection, one handshake."""

from __future__ import annotations

import json
import socket
import ssl
from pathlib import Path

from server_support import config_for, make_artifact, make_keys, register, running_server
from test_server_tls import make_ca, make_leaf

from mpseal.server.run import RunOptions


def _request(conn: ssl.SSLSocket, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
    head = (
        f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {len(body)}\r\n"
        + ("Content-Type: application/json\r\n" if body else "")
        + "\r\n"
    ).encode()
    conn.sendall(head + body)
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = conn.recv(65536)
        assert chunk, "the server closed the connection"
        buf += chunk
    head_raw, rest = buf.split(b"\r\n\r\n", 1)
    lines = head_raw.decode().split("\r\n")
    headers = {k.lower(): v.strip() for k, v in (x.split(":", 1) for x in lines[1:])}
    assert headers.get("connection", "keep-alive").lower() != "close"
    length = int(headers.get("content-length", "0"))
    while len(rest) < length:
        chunk = conn.recv(65536)
        assert chunk
        rest += chunk
    return int(lines[0].split()[1]), rest[:length]


def test_one_tls_connection_serves_a_whole_update_round(tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    folder = tmp_path / "pki"
    folder.mkdir()
    server_ca, fleet_ca = make_ca("server CA"), make_ca("fleet CA")
    for name, (_, cert) in (("server-ca", server_ca), ("fleet-ca", fleet_ca)):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    srv_cert, srv_key, _ = make_leaf(server_ca, "update-server", True, folder)
    dev_cert, dev_key, fp = make_leaf(fleet_ca, "dev-00000", False, folder)
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db, 1, fingerprints={"dev-00000": fp})
    keys = make_keys(tmp_path / "keys")
    options = RunOptions(tls_cert=srv_cert, tls_key=srv_key, client_ca=folder / "fleet-ca.pem")
    with running_server(config_for(db, keys, tmp_path, cache_seconds=0.0), options) as srv:
        ctx = ssl.create_default_context(cafile=str(folder / "server-ca.pem"))
        with srv.admin(verify=ctx) as admin:
            rid = admin.post(
                "/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2, size=50_000)
            ).json()["release"]["id"]
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})
        dev_ctx = ssl.create_default_context(cafile=str(folder / "server-ca.pem"))
        dev_ctx.load_cert_chain(str(dev_cert), str(dev_key))
        port = int(srv.url.rsplit(":", 1)[1])
        with (
            socket.create_connection(("127.0.0.1", port)) as raw,
            dev_ctx.wrap_socket(raw, server_hostname="127.0.0.1") as conn,
        ):
            hw = "dev-00000"
            status, body = _request(
                conn,
                "POST",
                "/v1/device/check",
                json.dumps(
                    {
                        "hardware_id": hw,
                        "board": "esp32",
                        "app": "hello",
                        "version": "1.0.0",
                        "counter": 1,
                        "timestamp_version": 0,
                    }
                ).encode(),
            )
            answer = json.loads(body)
            assert status == 200 and answer["update"] is True
            assert _request(conn, "GET", "/v1/timestamp/stable.mpst")[0] == 200
            assert _request(conn, "GET", "/v1/roots/1.mpsr")[0] == 200
            status, blob = _request(conn, "GET", "/v1/" + answer["target"]["path"])
            assert status == 200 and len(blob) == answer["target"]["size"]
            for event in ("downloaded", "staged"):
                status, body = _request(
                    conn,
                    "POST",
                    "/v1/device/report",
                    json.dumps(
                        {
                            "hardware_id": hw,
                            "event": event,
                            "version": "1.1.0",
                            "app": "hello",
                            "board": "esp32",
                        }
                    ).encode(),
                )
                assert status == 200 and json.loads(body) == {"recorded": True}
            assert not conn.session_reused  # one handshake, never a second one
