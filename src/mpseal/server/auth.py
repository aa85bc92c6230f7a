"""Who is calling: a device (client certificate or bearer token) or an operator (admin token).

A device is identified by the SHA-256 fingerprint of the certificate it presented in
the TLS handshake (read from the ASGI TLS extension, ``scope["extensions"]["tls"]``),
or else by its bearer token, whose SHA-256 is looked up in the registry. Answers are
cached for ``cache_seconds``: a revocation reaches every server process within that.
No credentials: 401. Credentials of a revoked or unknown device: 403.
"""

from __future__ import annotations

import hashlib
import hmac
import ssl
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

from starlette.requests import Request

from mpseal.fleet.registry import token_hash
from mpseal.fleet.rollout import DeviceView
from mpseal.server.http import ApiError
from mpseal.server.service import UpdateServer

TOKEN_MAX = 512
_BEARER = {"WWW-Authenticate": "Bearer"}


@lru_cache(maxsize=4096)
def _pem_fingerprint(pem: str) -> str | None:
    try:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(pem)).hexdigest()
    except ValueError:
        return None


def client_cert_fingerprint(request: Request) -> str | None:
    """SHA-256 (hex) of the DER leaf certificate the client presented, if any."""
    return _leaf_fingerprint(request.scope.get("extensions", {}).get("tls"))


def _leaf_fingerprint(tls: Mapping[str, Any] | None) -> str | None:
    if not tls:
        return None
    chain = tls.get("client_cert_chain") or ()
    return _pem_fingerprint(chain[0]) if chain else None


def bearer_token(request: Request) -> str | None:
    return _bearer(request.headers.get("authorization"))


def _bearer(header: str | None) -> str | None:
    if header is None:
        return None
    scheme, _, token = header.partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or len(token) > TOKEN_MAX:
        raise ApiError(401, "the Authorization header must be 'Bearer <token>'", _BEARER)
    return token


def credential(request: Request) -> tuple[str, str]:
    """("cert", fingerprint) or ("token", SHA-256 of the token): the device cache key."""
    return credential_of(
        request.scope.get("extensions", {}).get("tls"), request.headers.get("authorization")
    )


def credential_of(tls: Mapping[str, Any] | None, authorization: str | None) -> tuple[str, str]:
    """``credential`` from the ASGI TLS extension and the Authorization header (text)."""
    fingerprint = _leaf_fingerprint(tls)
    if fingerprint is not None:
        return "cert", fingerprint
    token = _bearer(authorization)
    if token is None:
        raise ApiError(401, "a device certificate or a device bearer token is required", _BEARER)
    return "token", token_hash(token)


async def device(server: UpdateServer, request: Request) -> DeviceView:
    """The calling device, or a 401/403."""
    return await device_of(server, credential(request))


async def device_of(server: UpdateServer, key: tuple[str, str]) -> DeviceView:
    """The device of this ``credential``, or a 403."""
    kind, value = key
    found = await server.device(kind, value)
    if found is None:
        if kind == "cert":
            raise ApiError(403, "this client certificate is revoked, expired or not a device's")
        raise ApiError(403, "this device is revoked or unknown")
    return found


def admin(server: UpdateServer, request: Request) -> None:
    """Allow only a bearer admin token whose SHA-256 is configured; 401 otherwise."""
    token = bearer_token(request)
    if token is None:
        raise ApiError(401, "an admin bearer token is required", _BEARER)
    digest = hashlib.sha256(token.encode()).hexdigest()
    ok = False
    for expected in server.config.admin_token_hashes:
        ok |= hmac.compare_digest(digest, expected)
    if not ok:
        raise ApiError(401, "this admin token is not accepted", _BEARER)
    request.state.admin_id = "token:" + digest[:16]  # the audit log's who (never the token)
