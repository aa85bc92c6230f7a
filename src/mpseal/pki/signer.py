"""Certificate signing behind a small protocol, so a CA key can live in an HSM later.

``cryptography``'s ``CertificateBuilder.sign`` wants a private key object, which an HSM
never hands out. So mpseal signs certificates the way an HSM-backed CA does:

1. build the certificate with a throwaway P-256 key; this fixes the exact
   ``tbsCertificate`` bytes (they name the algorithm, ecdsa-with-SHA256, and the
   issuer, but contain nothing of the throwaway key);
2. ask the ``CertSigner`` for an ECDSA signature over those bytes;
3. put that signature in place of the throwaway one, and check it with the
   signer's public key before anything is written.

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
from cryptography.hazmat.primitives.serialization import Encoding

from mpseal.crypto.keys import PrivateKeySigner, Signer
from mpseal.errors import ConfigError, SignatureError
from mpseal.fsutil import read_limited
from mpseal.pki import der

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
        return encode_dss_signature(int.from_bytes(raw[:32], "big"),
                                    int.from_bytes(raw[32:], "big"))


def is_encrypted_pem(pem: bytes) -> bool:
    return b"ENCRYPTED" in pem.split(b"\n", 2)[0] or b"Proc-Type: 4,ENCRYPTED" in pem


def load_file_signer(path: Path, role: str,
                     passphrase: PassphraseCallback | None = None) -> SignerCertSigner:
    """The file implementation: a PEM P-256 key, asking for a passphrase only if it has one."""
    pem = read_limited(path, KEY_FILE_MAX, f"{role} key")
    secret = None
    if is_encrypted_pem(pem):
        if passphrase is None:
            raise ConfigError(f"the {role} key {path} is passphrase-protected; set MPSEAL_PASSPHRASE")
        secret = passphrase(role)
    return SignerCertSigner(PrivateKeySigner.from_pem(pem, secret))


def sign_certificate(builder: x509.CertificateBuilder, signer: CertSigner) -> x509.Certificate:
    """Sign ``builder`` with ``signer`` through the TBS path described above."""
    draft = builder.sign(ec.generate_private_key(ec.SECP256R1()), hashes.SHA256())
    tbs = draft.tbs_certificate_bytes
    cert_der = der.replace_signature(draft.public_bytes(Encoding.DER), signer.sign_tbs(tbs))
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        signer.public_key.verify(cert.signature, cert.tbs_certificate_bytes,
                                 ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise SignatureError("the CA signer returned a signature that does not verify with "
                             "its own public key; check the HSM key and mechanism") from None
    return cert
