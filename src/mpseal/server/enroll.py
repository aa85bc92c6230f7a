"""Renewal over the air, in the manner of EST's simplereenroll (RFC 7030 section 4.2.2).

    POST /v1/device/reenroll      body: a PKCS#10 request (DER), for a key the device made
                                  answer: the new certificate (DER, application/pkix-cert)
    GET  /v1/device/certificate   which certificate this connection presented (the device
                                  proves a new certificate with it before it drops the old)
    GET  /v1/admin/certificates/expiry   the fleet's lapsing certificates (admin token)

Renewal is authenticated by the device's CURRENT certificate (mutual TLS); a bearer
token is not enough (a token alone must never mint a certificate). The request's subject
must be exactly the authenticated device (CN = its hardware id), its key P-256, its
signature valid (proof of possession). A revoked device, an expired or revoked
certificate: 403, recorded. The issuing CA signs behind ``CertSigner`` (an HSM may hold
the key): its theft gives forged device identities (T2) until ``mpseal ca rotate``.
Without a renewal CA (``mpseal serve`` without ``--renewal-ca``) issuance stays offline
(``mpseal provision`` / ``cert issue``) and these device calls answer 404.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import sqlalchemy as sa
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mpseal.fleet import certstore
from mpseal.fleet.models import Certificate
from mpseal.fleet.registry import CertRecord
from mpseal.pki.ca import CLOCK_SKEW
from mpseal.pki.certs import LeafRequest, issue
from mpseal.server import auth
from mpseal.server.http import ApiError, json_ok, read_body, read_json
from mpseal.server.service import UpdateServer

CSR_MAX = 4096
NO_STORE = {"Cache-Control": "no-store"}


def server_now(server: UpdateServer) -> datetime:
    clock = server.config.clock
    return clock() if clock is not None else datetime.now(UTC)


def _server(request: Request) -> UpdateServer:
    server: UpdateServer = request.app.state.server
    return server


def _renewals_last_hour(server: UpdateServer, device_id: int) -> int:
    since = datetime.now(UTC) - timedelta(hours=1)
    with server.registry.session() as s:
        return int(
            s.scalar(
                sa.select(sa.func.count())
                .select_from(Certificate)
                .where(
                    Certificate.device_id == device_id,
                    Certificate.issued_via == "renewal",
                    Certificate.created_at >= since,
                )
            )
            or 0
        )


def _refuse(server: UpdateServer, fingerprint: str, status: int, reason: str) -> ApiError:
    """Record why (against the device, if the certificate is one of a device) and refuse."""
    row = certstore.certificate(server.registry, fingerprint)
    certstore.log_refusal(server.registry, row.device_id if row else None, reason)
    return ApiError(status, reason)


def _parse_csr(body: bytes, hardware_id: str) -> ec.EllipticCurvePublicKey:
    try:
        csr = x509.load_der_x509_csr(body)
        valid = csr.is_signature_valid
        key = csr.public_key()
    except ValueError:
        raise ApiError(400, "the body is not a DER PKCS#10 certificate request") from None
    if not valid:
        raise ApiError(400, "the request's signature does not verify (no proof of possession)")
    if not (isinstance(key, ec.EllipticCurvePublicKey) and isinstance(key.curve, ec.SECP256R1)):
        raise ApiError(400, "the request's key is not P-256")
    attrs = [(a.oid, a.value) for a in csr.subject]
    if attrs != [(NameOID.COMMON_NAME, hardware_id)]:
        raise ApiError(
            403, f"the request's subject is not the authenticated device (CN={hardware_id})"
        )
    return key


def _issue(
    server: UpdateServer,
    device_id: int,
    hardware_id: str,
    body: bytes,
    old_fingerprint: str,
    via: str = "renewal",
) -> bytes:
    source = server.config.renewal_ca
    assert source is not None
    try:
        key = _parse_csr(body, hardware_id)
    except ApiError as e:
        certstore.log_refusal(server.registry, device_id, e.message)
        raise
    if (
        via == "renewal"
        and _renewals_last_hour(server, device_id) >= server.config.renewals_per_hour
    ):
        certstore.log_refusal(server.registry, device_id, "too many renewals")
        raise ApiError(
            429, "too many renewals from this device in the last hour", {"Retry-After": "3600"}
        )
    now = server_now(server)
    start = now.replace(microsecond=0) - CLOCK_SKEW
    cert = issue(
        source.get(),
        LeafRequest(
            name=hardware_id, role="client", days=server.config.renewal_days, not_before=start
        ),
        key,
    )
    der = cert.public_bytes(Encoding.DER)
    record = CertRecord(
        role="device",
        subject=cert.subject.rfc4514_string()[:255],
        serial=format(cert.serial_number, "x"),
        fingerprint=hashlib.sha256(der).hexdigest(),
        not_after=cert.not_valid_after_utc,
    )
    certstore.record_renewal(
        server.registry, device_id, record, cert.not_valid_before_utc, old_fingerprint, via
    )
    return der


async def reenroll(request: Request) -> Response:
    server = _server(request)
    if server.config.renewal_ca is None:
        raise ApiError(
            404, "online renewal is off on this server (certificates are issued offline)"
        )
    fingerprint = auth.client_cert_fingerprint(request)
    if fingerprint is None:
        raise ApiError(
            401,
            "renewal needs the device's current certificate (mutual TLS); "
            "a bearer token is not enough",
        )
    body = await read_body(request, CSR_MAX)
    dev = await server.device("cert", fingerprint)
    if dev is None:
        raise await server.run(
            _refuse,
            server,
            fingerprint,
            403,
            "this certificate is revoked, expired or not a device's: renewal refused",
        )
    der = await server.run(_issue, server, dev.id, dev.hardware_id, body, fingerprint)
    return Response(der, media_type="application/pkix-cert", headers=NO_STORE)


async def whoami(request: Request) -> Response:
    """The certificate this connection presented, as the server sees it."""
    server = _server(request)
    fingerprint = auth.client_cert_fingerprint(request)
    if fingerprint is None:
        raise ApiError(401, "no client certificate on this connection")
    dev = await server.device("cert", fingerprint)
    if dev is None:
        raise ApiError(403, "this client certificate is revoked, expired or not a device's")
    return json_ok({"hardware_id": dev.hardware_id, "fingerprint": fingerprint})


def _number(request: Request, name: str, default: float, low: float, high: float) -> float:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = float(raw)
    except ValueError:
        raise ApiError(400, f"{name} must be a number") from None
    if not low <= value <= high:
        raise ApiError(400, f"{name} must be from {low:g} to {high:g}")
    return value


async def expiry(request: Request) -> Response:
    """Active devices whose newest certificate ends within ``within_days`` (default: a third
    of the renewal lifetime) or ended in the last ``lapsed_days``; soonest first."""
    server = _server(request)
    auth.admin(server, request)
    within = _number(request, "within_days", server.config.renewal_days / 3, 0, 3650)
    lapsed = _number(request, "lapsed_days", 365, 0, 3650)
    limit = int(_number(request, "limit", 1000, 1, certstore.EXPIRY_PAGE_MAX))
    now = server_now(server)
    rows, more = await server.run(
        certstore.expiry,
        server.registry,
        now,
        timedelta(days=within),
        timedelta(days=lapsed),
        limit,
    )
    counts: dict[str, int] = {}
    for r in rows:
        counts[r.state] = counts.get(r.state, 0) + 1
    return json_ok(
        {
            "now": now.isoformat(),
            "within_days": within,
            "more": more,
            "counts": counts,
            "certificates": [r.to_dict() for r in rows],
        }
    )


# -- recovery of a device whose certificate expired ---------------------------------------

RECOVERY_WINDOW = timedelta(days=90)  # a certificate expired longer ago cannot recover
CHALLENGE_SECONDS = 300
RECOVERY_BODY_MAX = 12 * 1024


def _token_device_id(request: Request) -> str:
    if auth.client_cert_fingerprint(request) is not None:
        raise ApiError(
            409, "this connection presented a certificate: renew with /v1/device/reenroll"
        )
    kind, value = auth.credential(request)
    if kind != "token":
        raise ApiError(401, "recovery needs the device's bearer token")
    return value


async def recover_challenge(request: Request) -> Response:
    """A one-time challenge for this device (bearer token), good for 5 minutes."""
    import os

    server = _server(request)
    if server.config.renewal_ca is None:
        raise ApiError(
            404, "online renewal is off on this server (certificates are issued offline)"
        )
    _token_device_id(request)
    dev = await auth.device(server, request)
    now = server_now(server)
    text = f"mpseal-recover:{dev.hardware_id}:{int(now.timestamp())}:{os.urandom(16).hex()}"
    await server.run(certstore.new_challenge, server.registry, dev.id, text)
    return json_ok({"challenge": text})


def _recover(server: UpdateServer, device_id: int, hardware_id: str, f: Any) -> bytes:
    def refuse(status: int, reason: str) -> ApiError:
        certstore.log_refusal(server.registry, device_id, "recovery: " + reason)
        return ApiError(status, reason)

    try:
        old_der = bytes.fromhex(f.req_str("certificate", 4096))
        csr = bytes.fromhex(f.req_str("csr", 4096))
        signature = bytes.fromhex(f.hex("signature", 64))
        challenge = f.req_str("challenge", 200)
    except ValueError:
        raise ApiError(400, "certificate, csr and signature must be hex") from None
    now = server_now(server)
    last = certstore.last_certificate(server.registry, device_id)
    if last is None or last.fingerprint != hashlib.sha256(old_der).hexdigest():
        raise refuse(403, "that is not this device's last certificate")
    if last.status != "valid":
        raise refuse(403, "that certificate is revoked")
    end = certstore._aware(last.not_after)
    if end > now:
        raise refuse(409, "that certificate has not expired: renew with /v1/device/reenroll")
    if now - end > RECOVERY_WINDOW:
        raise refuse(
            403,
            f"that certificate expired more than {RECOVERY_WINDOW.days} days "
            "ago: re-provision the device",
        )
    if certstore.issued_since(
        server.registry, device_id, "recovery", datetime.now(UTC) - timedelta(days=1)
    ):
        raise refuse(429, "one recovery per device per day")
    if not certstore.take_challenge(
        server.registry,
        device_id,
        challenge,
        datetime.now(UTC) - timedelta(seconds=CHALLENGE_SECONDS),
    ):
        raise refuse(403, "the challenge is unknown, used or older than 5 minutes")
    try:
        old_key = x509.load_der_x509_certificate(old_der).public_key()
        assert isinstance(old_key, ec.EllipticCurvePublicKey)
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

        old_key.verify(
            encode_dss_signature(
                int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            ),
            challenge.encode() + csr,
            ec.ECDSA(hashes.SHA256()),
        )
    except Exception:  # noqa: BLE001 - any failure is the same refusal
        raise refuse(403, "the challenge is not signed by the expired certificate's key") from None
    return _issue(server, device_id, hardware_id, csr, last.fingerprint, "recovery")


async def recover(request: Request) -> Response:
    """A device whose certificate expired (so mutual TLS fails) gets a new one: its bearer
    token AND a signature of a fresh server challenge by its expired certificate's key."""
    server = _server(request)
    if server.config.renewal_ca is None:
        raise ApiError(
            404, "online renewal is off on this server (certificates are issued offline)"
        )
    _token_device_id(request)
    dev = await auth.device(server, request)
    f = await read_json(request, RECOVERY_BODY_MAX, "recovery request")
    der = await server.run(_recover, server, dev.id, dev.hardware_id, f)
    return Response(der, media_type="application/pkix-cert", headers=NO_STORE)


ROUTES = [
    Route("/v1/device/recover/challenge", recover_challenge, methods=["POST"]),
    Route("/v1/device/recover", recover, methods=["POST"]),
    Route("/v1/device/reenroll", reenroll, methods=["POST"]),
    Route("/v1/device/certificate", whoami, methods=["GET"]),
    Route("/v1/admin/certificates/expiry", expiry, methods=["GET"]),
]
