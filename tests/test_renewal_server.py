"""Renewal over the air on the real server (uvicorn, mutual TLS): POST /v1/device/reenroll
with the device's current certificate, every serial recorded, revoked devices refused,
and the fleet's expiry report (admin API and `mpseal registry expiry`)."""

from __future__ import annotations

import hashlib
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from conftest import run_mpseal
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from ota_support import _server_cert
from server_support import config_for, make_keys, running_server

from mpseal.fleet.provision import issue_identity
from mpseal.fleet.registry import Identity, Registry
from mpseal.pki.ca import CaOptions, init_ca, load_issuing_ca
from mpseal.pki.online import FixedCa
from mpseal.server.run import RunOptions

NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME: the app checks expiry on its clock


@dataclass
class Clock:
    offset: timedelta = timedelta(0)

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset


@dataclass
class Env:
    url: str
    ca_dir: Path
    db_url: str
    tmp: Path
    clock: Clock

    def client(self, cert: tuple[Path, Path] | None = None, **kw: object) -> httpx.Client:
        ctx = ssl.create_default_context(cafile=str(self.ca_dir / "root.pem"))
        if cert:
            ctx.load_cert_chain(str(cert[0]), str(cert[1]))
        return httpx.Client(base_url=self.url, verify=ctx, timeout=30, **kw)  # type: ignore[arg-type]


def device(env: Env, hw: str) -> tuple[Path, Path]:
    """A provisioned, active device (host-made key for brevity): its cert and key PEM."""
    ident = issue_identity(load_issuing_ca(env.ca_dir), hw, 365)
    reg = Registry.open(env.db_url)
    reg.record_identities([Identity(hardware_id=hw, board="unix", cert=ident.record)])
    reg.activate([hw])
    key = serialization.load_der_private_key(ident.key_der, None)
    return write_pair(env.tmp, hw, x509.load_der_x509_certificate(ident.cert_der), key)


def write_pair(tmp: Path, stem: str, cert: x509.Certificate, key: object) -> tuple[Path, Path]:
    c, k = tmp / f"{stem}.pem", tmp / f"{stem}-key.pem"
    c.write_bytes(cert.public_bytes(Encoding.PEM))
    k.write_bytes(
        key.private_bytes(
            Encoding.PEM,
            serialization.PrivateFormat.PKCS8,  # type: ignore[attr-defined]
            serialization.NoEncryption(),
        )
    )
    return c, k


def csr_for(cn: str, key: ec.EllipticCurvePrivateKey | None = None) -> tuple[bytes, object]:
    key = key or ec.generate_private_key(ec.SECP256R1())
    req = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn)]))
        .sign(key, hashes.SHA256())
    )
    return req.public_bytes(Encoding.DER), key


@pytest.fixture
def env(tmp_path: Path, db_url: str) -> Iterator[Env]:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, CaOptions(name="renewal test fleet"))
    cert, key = _server_cert(ca_dir, tmp_path)
    keys = make_keys(tmp_path / "keys")
    clock = Clock()
    config = replace(
        config_for(db_url, keys, tmp_path),
        cache_seconds=0.0,
        renewal_ca=FixedCa(load_issuing_ca(ca_dir)),
        clock=clock,
    )
    Registry.open(db_url)
    opts = RunOptions(tls_cert=cert, tls_key=key, client_ca=ca_dir / "ca-chain.pem")

    def ssl_setup(ctx: ssl.SSLContext) -> None:
        ctx.verify_flags |= NO_CHECK_TIME  # type: ignore[assignment]

    with running_server(config, opts, ssl_setup) as server:
        yield Env(server.url, ca_dir, db_url, tmp_path, clock)


def test_device_renews_with_its_current_certificate(env: Env) -> None:
    pair = device(env, "dev-a")
    env.clock.offset = timedelta(days=250)  # the server's now, moved on
    body, key = csr_for("dev-a")
    with env.client(pair) as c:
        r = c.post(
            "/v1/device/reenroll", content=body, headers={"Content-Type": "application/pkcs10"}
        )
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/pkix-cert"
    new = x509.load_der_x509_certificate(r.content)
    assert new.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "dev-a"
    assert new.public_key() == key.public_key()  # type: ignore[attr-defined]
    life = new.not_valid_after_utc - new.not_valid_before_utc
    assert life == timedelta(days=30)  # short lifetime by default
    assert abs(new.not_valid_before_utc - (env.clock() - timedelta(minutes=5))) < timedelta(
        minutes=1
    )  # from the server's clock
    load_issuing_ca(env.ca_dir).cert.public_key().verify(  # type: ignore[union-attr]
        new.signature, new.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
    )
    # every serial recorded per device, the renewal as such
    certs = Registry.open(env.db_url).certificates("dev-a")
    assert {c.serial for c in certs} >= {format(new.serial_number, "x")}
    assert sorted(c.issued_via or "" for c in certs) == ["", "renewal"]
    # the new certificate authenticates (and the old one still does until it expires)
    new_pair = write_pair(env.tmp, "dev-a-new", new, key)
    with env.client(new_pair) as c:
        r = c.get("/v1/device/certificate")
    assert r.status_code == 200, r.text
    assert r.json()["fingerprint"] == hashlib.sha256(new.public_bytes(Encoding.DER)).hexdigest()


def test_renewal_for_another_device_refused(env: Env) -> None:
    pair = device(env, "dev-a")
    device(env, "dev-b")
    with env.client(pair) as c:
        r = c.post("/v1/device/reenroll", content=csr_for("dev-b")[0])
    assert r.status_code == 403
    assert "not the authenticated device" in r.json()["error"]
    assert len(Registry.open(env.db_url).certificates("dev-b")) == 1


def test_renewal_with_a_bearer_token_only_refused(env: Env) -> None:
    device(env, "dev-a")
    with env.client(headers={"Authorization": "Bearer whatever"}) as c:
        r = c.post("/v1/device/reenroll", content=csr_for("dev-a")[0])
    assert r.status_code == 401


def test_revoked_device_renewal_refused(env: Env) -> None:
    pair = device(env, "dev-a")
    Registry.open(env.db_url).revoke_device("dev-a", "stolen")
    with env.client(pair) as c:
        r = c.post("/v1/device/reenroll", content=csr_for("dev-a")[0])
    assert r.status_code == 403
    reg = Registry.open(env.db_url)
    assert len(reg.certificates("dev-a")) == 1
    assert any(e.kind == "renewal_refused" for e in reg.events("dev-a"))


def test_forged_csr_signature_refused(env: Env) -> None:
    pair = device(env, "dev-a")
    body = bytearray(csr_for("dev-a")[0])
    body[-5] ^= 1  # inside the signature: no proof of possession
    with env.client(pair) as c:
        r = c.post("/v1/device/reenroll", content=bytes(body))
    assert r.status_code == 400
    assert len(Registry.open(env.db_url).certificates("dev-a")) == 1


def test_renewal_flood_limited(env: Env) -> None:
    pair = device(env, "dev-a")
    with env.client(pair) as c:
        codes = [
            c.post("/v1/device/reenroll", content=csr_for("dev-a")[0]).status_code for _ in range(5)
        ]
    assert codes == [200, 200, 200, 429, 429]


def test_expiry_report_lists_lapsing_and_overdue(env: Env, tmp_path: Path) -> None:
    pairs = {hw: device(env, hw) for hw in ("dev-a", "dev-b", "dev-c")}
    with env.client(pairs["dev-a"]) as c:  # dev-a renews: 30 days from now
        assert c.post("/v1/device/reenroll", content=csr_for("dev-a")[0]).status_code == 200
    admin = {"Authorization": "Bearer admin-" + "s3cret" * 4}
    with env.client(headers=admin) as c:
        r = c.get("/v1/admin/certificates/expiry", params={"within_days": 31})
        assert r.status_code == 200, r.text
        assert [x["hardware_id"] for x in r.json()["certificates"]] == ["dev-a"]
        assert r.json()["certificates"][0]["state"] == "expiring"
        env.clock.offset = timedelta(days=21)  # past two thirds of dev-a's 30 days
        r = c.get("/v1/admin/certificates/expiry")
        assert [(x["hardware_id"], x["state"]) for x in r.json()["certificates"]] == [
            ("dev-a", "renewal_overdue")
        ]
        env.clock.offset = timedelta(days=380)  # everyone lapsed (within 365 days)
        r = c.get("/v1/admin/certificates/expiry")
        got = {x["hardware_id"]: x["state"] for x in r.json()["certificates"]}
        assert got == {"dev-a": "expired", "dev-b": "expired", "dev-c": "expired"}
        assert r.json()["more"] is False
        page = c.get("/v1/admin/certificates/expiry", params={"limit": 2}).json()
        assert len(page["certificates"]) == 2 and page["more"] is True
        assert (
            c.get(
                "/v1/admin/certificates/expiry", headers={"Authorization": "Bearer nope"}
            ).status_code
            == 401
        )
        assert (
            c.get("/v1/admin/certificates/expiry", params={"within_days": "x"}).status_code == 400
        )
    res = run_mpseal("registry", "expiry", "--db", env.db_url, "--within-days", "31", "--json")
    assert res.returncode == 0, res.stderr
    assert [x["hardware_id"] for x in json.loads(res.stdout)["certificates"]] == ["dev-a"]


def test_renewal_off_without_a_renewal_ca(tmp_path: Path, db_url: str) -> None:
    ca_dir = tmp_path / "ca"
    init_ca(ca_dir, CaOptions(name="offline fleet"))
    cert, key = _server_cert(ca_dir, tmp_path)
    config = config_for(db_url, make_keys(tmp_path / "keys"), tmp_path)
    Registry.open(db_url)
    env = Env("", ca_dir, db_url, tmp_path, Clock())
    pair = device(env, "dev-a")
    with running_server(
        config, RunOptions(tls_cert=cert, tls_key=key, client_ca=ca_dir / "ca-chain.pem")
    ) as server:
        env.url = server.url
        with env.client(pair) as c:
            r = c.post("/v1/device/reenroll", content=csr_for("dev-a")[0])
    assert r.status_code == 404
    assert "offline" in r.json()["error"]


def test_serve_with_a_folder_that_is_no_ca_is_a_one_line_error(
    project: Path, tmp_path: Path
) -> None:
    (tmp_path / "empty").mkdir()
    res = run_mpseal("serve", "-C", project, "--port", "1", "--renewal-ca", tmp_path / "empty")
    assert res.returncode == 2, res.stderr
    assert "no issuing-key.pem" in res.stderr and len(res.stderr.strip().splitlines()) == 1


# -- recovery of a device whose certificate expired (bearer token + old key) --------------


@dataclass
class Expiring:
    hw: str
    token: str
    key: ec.EllipticCurvePrivateKey
    der: bytes


def device_with_token(env: Env, hw: str, days: int = 30) -> Expiring:
    from mpseal.fleet.registry import token_hash

    ident = issue_identity(load_issuing_ca(env.ca_dir), hw, days)
    token = f"tok-{hw}-secret-token"
    reg = Registry.open(env.db_url)
    reg.record_identities(
        [Identity(hardware_id=hw, board="unix", cert=ident.record, token_hash=token_hash(token))]
    )
    reg.activate([hw])
    key = serialization.load_der_private_key(ident.key_der, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    return Expiring(hw, token, key, ident.cert_der)


def recovery_body(
    env: Env,
    c: httpx.Client,
    dev: Expiring,
    signer: ec.EllipticCurvePrivateKey | None = None,
    challenge: str | None = None,
) -> dict[str, str]:
    from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

    if challenge is None:
        r = c.post("/v1/device/recover/challenge")
        assert r.status_code == 200, r.text
        challenge = r.json()["challenge"]
    csr = csr_for(dev.hw)[0]
    sig = (signer or dev.key).sign(challenge.encode() + csr, ec.ECDSA(hashes.SHA256()))
    r_, s_ = decode_dss_signature(sig)
    return {
        "certificate": dev.der.hex(),
        "csr": csr.hex(),
        "challenge": challenge,
        "signature": (r_.to_bytes(32, "big") + s_.to_bytes(32, "big")).hex(),
    }


def token_client(env: Env, dev: Expiring) -> httpx.Client:
    return env.client(headers={"Authorization": f"Bearer {dev.token}"})


def test_expired_device_recovers_with_token_and_old_key(env: Env) -> None:
    dev = device_with_token(env, "dev-x")
    env.clock.offset = timedelta(days=40)  # its 30-day certificate expired 10 days ago
    with token_client(env, dev) as c:
        r = c.post("/v1/device/recover", json=recovery_body(env, c, dev))
    assert r.status_code == 200, r.text
    new = x509.load_der_x509_certificate(r.content)
    assert new.not_valid_before_utc > datetime.now(UTC) + timedelta(days=39)
    reg = Registry.open(env.db_url)
    assert sorted(c.issued_via or "" for c in reg.certificates("dev-x")) == ["", "recovery"]
    assert any(e.kind == "recovered" for e in reg.events("dev-x"))


def test_recovery_with_a_stolen_token_but_not_the_old_key_refused(env: Env) -> None:
    dev = device_with_token(env, "dev-x")
    env.clock.offset = timedelta(days=40)
    thief = ec.generate_private_key(ec.SECP256R1())
    with token_client(env, dev) as c:
        r = c.post("/v1/device/recover", json=recovery_body(env, c, dev, signer=thief))
    assert r.status_code == 403
    assert "not signed by the expired certificate's key" in r.json()["error"]
    assert len(Registry.open(env.db_url).certificates("dev-x")) == 1


def test_recovery_challenge_replay_refused(env: Env) -> None:
    dev = device_with_token(env, "dev-x")
    env.clock.offset = timedelta(days=40)
    with token_client(env, dev) as c:
        body = recovery_body(env, c, dev)
        assert c.post("/v1/device/recover", json=body).status_code == 200
        # the same challenge again (and its certificate is no longer the last one)
        again = recovery_body(env, c, dev, challenge=body["challenge"])
        r = c.post("/v1/device/recover", json=again)
    assert r.status_code == 403


def test_recovery_refused_while_valid_too_late_or_revoked(env: Env) -> None:
    dev = device_with_token(env, "dev-x")
    with token_client(env, dev) as c:
        r = c.post("/v1/device/recover", json=recovery_body(env, c, dev))
        assert r.status_code == 409 and "reenroll" in r.json()["error"]  # not expired
        env.clock.offset = timedelta(days=30 + 91)  # expired more than 90 days ago
        r = c.post("/v1/device/recover", json=recovery_body(env, c, dev))
        assert r.status_code == 403 and "re-provision" in r.json()["error"]
        env.clock.offset = timedelta(days=40)
        Registry.open(env.db_url).revoke_device("dev-x", "stolen")
        r = c.post("/v1/device/recover/challenge")
        assert r.status_code == 403
    assert len(Registry.open(env.db_url).certificates("dev-x")) == 1
