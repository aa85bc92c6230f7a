"""ECDSA P-256 + SHA-256 keys, signatures and the ``Signer`` protocol.

Signatures are 64 raw bytes ``r || s`` (big-endian, 32 bytes each): the form the
device verifier reads without an ASN.1 parser. Public keys travel as the 65-byte
uncompressed SEC1 point; a key id is the SHA-256 of those 65 bytes, in hex.

Pure: bytes in, objects and bytes out; foreign errors from ``cryptography`` are
translated here into mpseal's tree.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)

from mpseal.errors import ConfigError, FormatError, SignatureError

SIGNATURE_LENGTH = 64
PUBLIC_KEY_LENGTH = 65
KEY_TYPE = "ecdsa-p256"
_CURVE_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


@dataclass(frozen=True)
class PublicKey:
    """A P-256 public key as its 65-byte uncompressed point."""

    point: bytes

    def __post_init__(self) -> None:
        if len(self.point) != PUBLIC_KEY_LENGTH or self.point[0] != 4:
            raise FormatError("public key is not a 65-byte uncompressed P-256 point")
        try:
            ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.point)
        except ValueError:
            raise FormatError("public key is not a point on the P-256 curve") from None

    @property
    def keyid(self) -> str:
        return hashlib.sha256(self.point).hexdigest()

    @classmethod
    def from_hex(cls, text: str) -> PublicKey:
        try:
            return cls(bytes.fromhex(text))
        except ValueError:
            raise FormatError("public key is not valid hex") from None

    @classmethod
    def from_crypto(cls, key: ec.EllipticCurvePublicKey) -> PublicKey:
        if not isinstance(key.curve, ec.SECP256R1):
            raise FormatError(f"key is on curve {key.curve.name}, mpseal signs with P-256 only")
        return cls(
            key.public_bytes(
                serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
            )
        )

    @classmethod
    def from_pem(cls, pem: bytes) -> PublicKey:
        """A P-256 public key from PEM (SubjectPublicKeyInfo), e.g. exported from an HSM."""
        try:
            key = serialization.load_pem_public_key(pem)
        except (ValueError, TypeError, UnsupportedAlgorithm):
            raise FormatError(
                "not a PEM public key (expected '-----BEGIN PUBLIC KEY-----')"
            ) from None
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise FormatError("the public key is not an EC key; mpseal signs with ECDSA P-256")
        return cls.from_crypto(key)

    def to_crypto(self) -> ec.EllipticCurvePublicKey:
        return ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), self.point)

    def verify(self, signature: bytes, data: bytes) -> None:
        """Raise ``SignatureError`` unless ``signature`` is this key's over ``data``."""
        if len(signature) != SIGNATURE_LENGTH:
            raise SignatureError(f"signature is {len(signature)} bytes, expected 64")
        r = int.from_bytes(signature[:32], "big")
        s = int.from_bytes(signature[32:], "big")
        if not (0 < r < _CURVE_ORDER and 0 < s < _CURVE_ORDER):
            raise SignatureError("signature value out of range")
        try:
            self.to_crypto().verify(encode_dss_signature(r, s), data, ec.ECDSA(hashes.SHA256()))
        except InvalidSignature:
            raise SignatureError(f"signature by key {self.keyid[:16]} does not verify") from None

    def to_pem(self) -> bytes:
        return self.to_crypto().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )


@runtime_checkable
class Signer(Protocol):
    """Anything that can make an ECDSA P-256/SHA-256 signature: a file key, an HSM, a ceremony."""

    @property
    def public_key(self) -> PublicKey: ...

    def sign(self, data: bytes) -> bytes:
        """Return the 64-byte ``r || s`` signature of SHA-256(``data``)."""
        ...


class PrivateKeySigner:
    """A ``Signer`` over a private key held in memory (loaded from a file or generated)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey) -> None:
        if not isinstance(key.curve, ec.SECP256R1):
            raise ConfigError(f"signing key is on curve {key.curve.name}; mpseal needs P-256")
        self._key = key
        self._public = PublicKey.from_crypto(key.public_key())

    @classmethod
    def generate(cls) -> PrivateKeySigner:
        return cls(ec.generate_private_key(ec.SECP256R1()))

    @classmethod
    def from_pem(cls, pem: bytes, passphrase: bytes | None = None) -> PrivateKeySigner:
        try:
            key = serialization.load_pem_private_key(pem, password=passphrase)
        except TypeError:
            if passphrase is None:
                raise ConfigError(
                    "the key is passphrase-protected; give the passphrase (MPSEAL_PASSPHRASE)"
                ) from None
            raise ConfigError("a passphrase was given but the key is not encrypted") from None
        except ValueError:
            raise ConfigError(
                "cannot load the private key: wrong passphrase or not a PEM private key"
            ) from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ConfigError("the private key is not an EC key; mpseal signs with ECDSA P-256")
        return cls(key)

    @property
    def public_key(self) -> PublicKey:
        return self._public

    @property
    def private_key(self) -> ec.EllipticCurvePrivateKey:
        return self._key

    def sign(self, data: bytes) -> bytes:
        der = self._key.sign(data, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    def to_pem(self, passphrase: bytes | None = None) -> bytes:
        enc: serialization.KeySerializationEncryption
        if passphrase:
            enc = serialization.BestAvailableEncryption(passphrase)
        else:
            enc = serialization.NoEncryption()
        return self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc
        )
