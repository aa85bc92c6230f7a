"""Certificate signing behind a small protocol, so a CA key can live in an HSM later.

``cryptography``'s ``CertificateBuilder.sign`` wants a private-key object, which an HSM
never hands out. It accepts any ``EllipticCurvePrivateKey`` subclass, though, and calls
its ``sign(tbs, ECDSA(SHA256()))`` (pyca/cryptography#11616; tested on cryptography 50).
So ``sign_certificate`` hands it a :class:`_ForwardingKey` that holds no key: its
``sign()`` forwards the ``tbsCertificate`` bytes to the ``CertSigner``; the signature is
then checked with the signer's public key before anything is written.

Every certificate mpseal issues goes through this path, so the HSM path is the
tested path. To plug in an HSM, implement ``CertSigner`` (``public_key`` and
``sign_tbs``, e.g. a PKCS#11 ``C_Sign`` with ``CKM_ECDSA_SHA256`` whose raw ``r||s``
you DER-encode), or wrap any mpseal ``Signer`` with ``SignerCertSigner``. Not done
here: PKCS#11 itself (no dependency is added for it), and CSRs, which are signed by
the subject's own key, not by the CA.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    KeySerializationEncryption,
    PrivateFormat,
)
from cryptography.utils import Buffer

from mpseal.crypto.keys import PrivateKeySigner, Signer
from mpseal.errors import ConfigError, SignatureError
from mpseal.fsutil import read_private_key

KEY_FILE_MAX = 64 * 1024
PassphraseCallback = Callable[[str], bytes | None]


@runtime_checkable
class CertSigner(Protocol):
    """A CA key: knows its public key and signs ``tbsCertificate`` bytes (ECDSA P-256/SHA-256)."""

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey: ...

    def sign_tbs(self, tbs: bytes) -> bytes:
        """Return the DER ``ECDSA-Sig-Value`` over SHA-256(``tbs``)."""
        ...


class SignerCertSigner:
    """A ``CertSigner`` over any mpseal ``Signer`` (a file key today, an HSM tomorrow)."""

    def __init__(self, signer: Signer) -> None:
        self._signer = signer

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._signer.public_key.to_crypto()

    def sign_tbs(self, tbs: bytes) -> bytes:
        raw = self._signer.sign(tbs)
        return encode_dss_signature(
            int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
        )


def is_encrypted_pem(pem: bytes) -> bool:
    return b"ENCRYPTED" in pem.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in pem


def load_file_signer(
    path: Path, role: str, passphrase: PassphraseCallback | None = None
) -> SignerCertSigner:
    """The file implementation: a PEM P-256 key, asking for a passphrase only if it has one."""
    pem = read_private_key(path, KEY_FILE_MAX, f"{role} key")
    secret = None
    if is_encrypted_pem(pem):
        if passphrase is None:
            raise ConfigError(
                f"the {role} key {path} is passphrase-protected; set MPSEAL_PASSPHRASE"
            )
        secret = passphrase(role)
    return SignerCertSigner(PrivateKeySigner.from_pem(pem, secret))


class _ForwardingKey(ec.EllipticCurvePrivateKey):
    """What ``CertificateBuilder.sign`` is given: ``sign()`` asks the ``CertSigner``.

    It holds no private key, so everything but signing and the public half refuses.
    """

    def __init__(self, signer: CertSigner) -> None:
        self._signer = signer

    def sign(
        self,
        data: Buffer,
        signature_algorithm: ec.EllipticCurveSignatureAlgorithm,
    ) -> bytes:
        if not (
            isinstance(signature_algorithm, ec.ECDSA)
            and isinstance(signature_algorithm.algorithm, hashes.SHA256)
        ):
            raise SignatureError("a CA signer signs ECDSA with SHA-256 only")
        return self._signer.sign_tbs(bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._signer.public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._signer.public_key.curve

    @property
    def key_size(self) -> int:
        return self.curve.key_size

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        raise SignatureError("a CA signer only signs")

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        raise SignatureError("a CA signer never hands out its private key")

    def private_bytes(
        self,
        encoding: Encoding,
        format: PrivateFormat,
        encryption_algorithm: KeySerializationEncryption,
    ) -> bytes:
        raise SignatureError("a CA signer never hands out its private key")

    def __copy__(self) -> _ForwardingKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> _ForwardingKey:
        return self


def sign_certificate(builder: x509.CertificateBuilder, signer: CertSigner) -> x509.Certificate:
    """Sign ``builder`` with ``signer`` (ECDSA P-256/SHA-256) and check the result."""
    cert = builder.sign(_ForwardingKey(signer), hashes.SHA256())
    try:
        signer.public_key.verify(
            cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hashes.SHA256())
        )
    except InvalidSignature:
        raise SignatureError(
            "the CA signer returned a signature that does not verify with "
            "its own public key; check the HSM key and mechanism"
        ) from None
    return cert
