"""The CA, leaf issuance, CSRs, the CertSigner protocol, PEM -> DER, anchors and expiry (API)."""

from __future__ import annotations

import datetime as dt
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from cryptography.x509.oid import ExtendedKeyUsageOID
from pki_support import ca_cert, leaf_cert, pem

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.errors import ConfigError, SignatureError, UsageError
from mpseal.pki import anchor, certs, der, expiry
from mpseal.pki import ca as ca_mod
from mpseal.pki.lint import LintOptions, lint_bytes
from mpseal.pki.signer import CertSigner, SignerCertSigner, sign_certificate

UTC = dt.UTC


def mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ca") / "ca"
    ca_mod.init_ca(folder, ca_mod.CaOptions(name="Test", organization="Acme"))
    return folder


@pytest.fixture(scope="module")
def issuing(ca_dir: Path) -> ca_mod.IssuingCa:
    return ca_mod.load_issuing_ca(ca_dir)


def ext(cert: x509.Certificate, cls: type) -> x509.Extension:  # type: ignore[type-arg]
    return cert.extensions.get_extension_for_class(cls)


def test_ca_layout_modes_and_certificates(ca_dir: Path, issuing: ca_mod.IssuingCa) -> None:
    assert mode(ca_dir / "offline") == 0o700
    assert mode(ca_dir / ca_mod.ROOT_KEY) == 0o600 and mode(ca_dir / ca_mod.ISSUING_KEY) == 0o600
    root = issuing.root
    for cert, path_len in ((root, 1), (issuing.cert, 0)):
        bc = ext(cert, x509.BasicConstraints)
        assert bc.critical and bc.value.ca and bc.value.path_length == path_len
        ku = ext(cert, x509.KeyUsage)
        assert ku.critical and ku.value.key_cert_sign and ku.value.crl_sign
        assert isinstance(cert.public_key(), ec.EllipticCurvePublicKey)
        assert cert.public_key().curve.name == "secp256r1"  # type: ignore[union-attr]
        assert isinstance(cert.signature_hash_algorithm, hashes.SHA256)
        raw = cert.public_bytes(serialization.Encoding.DER)
        der.check_strict(raw)
        findings = lint_bytes(raw, "ca", LintOptions(role="ca", device_clock=dt.datetime.now(UTC)))
        assert [f for f in findings if f.severity == "error"] == []
    assert issuing.cert.not_valid_after_utc <= root.not_valid_after_utc
    issuing.cert.verify_directly_issued_by(root)
    assert (ca_dir / "root.der").read_bytes() == root.public_bytes(serialization.Encoding.DER)
    chain = x509.load_pem_x509_certificates((ca_dir / "ca-chain.pem").read_bytes())
    assert chain == [issuing.cert, root]


def test_ca_init_refuses_any_existing_file(ca_dir: Path) -> None:
    before = {p: p.read_bytes() for p in ca_dir.rglob("*") if p.is_file()}
    with pytest.raises(UsageError, match="already exists"):
        ca_mod.init_ca(ca_dir, ca_mod.CaOptions())
    assert before == {p: p.read_bytes() for p in ca_dir.rglob("*") if p.is_file()}


def test_issuing_key_must_match_its_certificate(ca_dir: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    ca_mod.init_ca(other, ca_mod.CaOptions())
    (other / ca_mod.ISSUING_KEY).unlink()
    (other / ca_mod.ISSUING_KEY).write_bytes((ca_dir / ca_mod.ISSUING_KEY).read_bytes())
    with pytest.raises(ConfigError, match="readable by others"):  # copied at 0644
        ca_mod.load_issuing_ca(other)
    (other / ca_mod.ISSUING_KEY).chmod(0o600)
    with pytest.raises(ConfigError, match="does not belong"):
        ca_mod.load_issuing_ca(other)
    with pytest.raises(ConfigError, match="not an mpseal CA folder"):
        ca_mod.load_issuing_ca(tmp_path)


def test_encrypted_ca_keys(tmp_path: Path) -> None:
    ca_mod.init_ca(tmp_path / "enc", ca_mod.CaOptions(), passphrase=b"s3cret passphrase")
    assert b"ENCRYPTED" in (tmp_path / "enc" / ca_mod.ISSUING_KEY).read_bytes()
    with pytest.raises(ConfigError, match="MPSEAL_PASSPHRASE"):
        ca_mod.load_issuing_ca(tmp_path / "enc")
    with pytest.raises(ConfigError, match="wrong passphrase"):
        ca_mod.load_issuing_ca(tmp_path / "enc", lambda role: b"wrong")
    asked: list[str] = []
    loaded = ca_mod.load_issuing_ca(
        tmp_path / "enc", lambda role: asked.append(role) or b"s3cret passphrase"
    )
    assert asked == ["issuing CA"] and loaded.cert.subject.rfc4514_string()


@pytest.mark.parametrize(
    "role,eku",
    [("server", ExtendedKeyUsageOID.SERVER_AUTH), ("client", ExtendedKeyUsageOID.CLIENT_AUTH)],
)
def test_leaf_profile(issuing: ca_mod.IssuingCa, role: str, eku: x509.ObjectIdentifier) -> None:
    key = certs.generate_key()
    req = certs.LeafRequest(
        "node-7.example.com",
        role,
        (
            "DNS:node-7.example.com",  # type: ignore[arg-type]
            "IP:192.0.2.7",
        ),
    )
    cert = certs.issue(issuing, req, key.public_key())
    assert ext(cert, x509.BasicConstraints).value.ca is False
    ku = ext(cert, x509.KeyUsage)
    assert ku.critical and ku.value.digital_signature and not ku.value.key_cert_sign
    assert list(ext(cert, x509.ExtendedKeyUsage).value) == [eku]
    san = ext(cert, x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["node-7.example.com"]
    assert [str(a) for a in san.get_values_for_type(x509.IPAddress)] == ["192.0.2.7"]
    cert.verify_directly_issued_by(issuing.cert)
    days = (cert.not_valid_after_utc - cert.not_valid_before_utc).days
    assert days == certs.DEFAULT_DAYS[role]
    errors = [
        f
        for f in lint_bytes(
            cert.public_bytes(serialization.Encoding.DER),
            "leaf",
            LintOptions(
                role=role,
                hostname="node-7.example.com",  # type: ignore[arg-type]
                issuer=issuing.cert,
            ),
        )
        if f.severity == "error"
    ]
    assert errors == []


def test_leaf_never_outlives_the_issuing_ca(issuing: ca_mod.IssuingCa) -> None:
    with pytest.raises(UsageError, match="must not outlive"):
        certs.issue(
            issuing,
            certs.LeafRequest("x", "client", days=40 * 365),
            certs.generate_key().public_key(),
        )


@pytest.mark.parametrize(
    "san", ["DNS:bad name", "IP:999.1.1.1", "DNS:a..b", "../etc", "DNS:ö.example"]
)
def test_hostile_names_are_refused(issuing: ca_mod.IssuingCa, san: str) -> None:
    with pytest.raises(UsageError):
        certs.issue(
            issuing, certs.LeafRequest("ok", "server", (san,)), certs.generate_key().public_key()
        )


@pytest.mark.parametrize("stem", ["../x", "/abs", ".hidden", "a/b", "ö", ""])
def test_hostile_file_stems_are_refused(tmp_path: Path, stem: str) -> None:
    with pytest.raises(UsageError):
        certs.leaf_paths(tmp_path, stem)


def test_keys_the_device_cannot_use_are_refused(issuing: ca_mod.IssuingCa) -> None:
    with pytest.raises(UsageError, match="Ed25519"):
        certs.issue(
            issuing,
            certs.LeafRequest("x", "client"),
            ed25519.Ed25519PrivateKey.generate().public_key(),
        )


# --- the CertSigner protocol: an HSM stand-in ------------------------------------------------


class FakeHsm:
    """Holds its key privately and exposes only what a PKCS#11 token would."""

    def __init__(self) -> None:
        self._key = ec.generate_private_key(ec.SECP256R1())
        self.calls: list[bytes] = []

    @property
    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._key.public_key()

    def sign_tbs(self, tbs: bytes) -> bytes:
        self.calls.append(tbs)
        return self._key.sign(tbs, ec.ECDSA(hashes.SHA256()))


def test_an_hsm_signs_certificates_through_the_protocol() -> None:
    hsm = FakeHsm()
    assert isinstance(hsm, CertSigner)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "hsm root")])
    builder = ca_mod.ca_builder(name, name, hsm.public_key, hsm.public_key, 365, 0)
    cert = sign_certificate(builder, hsm)
    assert hsm.calls == [cert.tbs_certificate_bytes]
    cert.verify_directly_issued_by(cert)
    der.check_strict(cert.public_bytes(serialization.Encoding.DER))


def test_a_signer_that_lies_is_caught() -> None:
    class Liar(FakeHsm):
        def sign_tbs(self, tbs: bytes) -> bytes:
            return encode_dss_signature(1, 1)

    liar = Liar()
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "x")])
    with pytest.raises(SignatureError):
        sign_certificate(
            ca_mod.ca_builder(name, name, liar.public_key, liar.public_key, 9, 0), liar
        )


def test_any_mpseal_signer_is_a_cert_signer() -> None:
    signer = SignerCertSigner(PrivateKeySigner.generate())
    assert isinstance(signer, CertSigner)
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "y")])
    cert = sign_certificate(
        ca_mod.ca_builder(name, name, signer.public_key, signer.public_key, 9, 0), signer
    )
    cert.verify_directly_issued_by(cert)


# --- CSRs ------------------------------------------------------------------------------------


def test_csr_flow_keeps_the_key_with_its_owner(issuing: ca_mod.IssuingCa, tmp_path: Path) -> None:
    key = certs.generate_key()
    paths = certs.leaf_paths(tmp_path, "api.example.com")
    certs.write_csr(paths, certs.make_csr("api.example.com", (), "Acme", key), key)
    assert mode(paths["key_pem"]) == 0o600 and mode(paths["key_der"]) == 0o600
    csr = certs.read_csr(paths["csr_pem"])
    assert csr.extensions.get_extension_for_class(
        x509.SubjectAlternativeName
    ).value.get_values_for_type(x509.DNSName) == ["api.example.com"]
    cert = certs.issue(issuing, certs.LeafRequest("api.example.com", "server"), csr.public_key())
    assert cert.public_key() == key.public_key()


def test_a_forged_csr_is_refused(tmp_path: Path) -> None:
    key = certs.generate_key()
    csr = certs.make_csr("a.example", (), None, key).public_bytes(serialization.Encoding.DER)
    forged = bytearray(csr)
    forged[-5] ^= 0x01  # inside the signature
    (tmp_path / "f.csr").write_bytes(bytes(forged))
    with pytest.raises(SignatureError):
        certs.read_csr(tmp_path / "f.csr")
    (tmp_path / "g.csr").write_bytes(b"garbage")
    with pytest.raises(Exception) as info:
        certs.read_csr(tmp_path / "g.csr")
    assert type(info.value).__module__ == "mpseal.errors"


# --- PEM -> DER ------------------------------------------------------------------------------


def test_pem_to_der_one_file_per_certificate_and_key(
    issuing: ca_mod.IssuingCa, tmp_path: Path
) -> None:
    key = certs.generate_key()
    leaf = certs.issue(issuing, certs.LeafRequest("dev-1", "client"), key.public_key())
    bundle = tmp_path / "bundle.pem"
    bundle.write_bytes(certs.key_pem_der(key)[0] + pem(leaf, issuing.cert))
    out = certs.pem_to_der(bundle, tmp_path / "out")
    kinds = {o.path.name: o.kind for o in out}
    assert kinds == {
        "bundle.key.der": "private key",
        "bundle-1.der": "certificate",
        "bundle-2.der": "certificate",
    }
    assert mode(tmp_path / "out/bundle.key.der") == 0o600
    assert (tmp_path / "out/bundle-1.der").read_bytes() == leaf.public_bytes(
        serialization.Encoding.DER
    )
    # Again: the same key is "unchanged"; a different key is never overwritten.
    again = certs.pem_to_der(bundle, tmp_path / "out")
    assert [o.written for o in again if o.kind == "private key"] == [False]
    other = certs.generate_key()
    bundle.write_bytes(certs.key_pem_der(other)[0])
    with pytest.raises(UsageError, match="already exists"):
        certs.pem_to_der(bundle, tmp_path / "out")


def test_pem_to_der_encrypted_key_needs_its_passphrase(tmp_path: Path) -> None:
    signer = PrivateKeySigner.generate()
    (tmp_path / "k.pem").write_bytes(signer.to_pem(b"pw"))
    with pytest.raises(ConfigError, match="MPSEAL_PASSPHRASE"):
        certs.pem_to_der(tmp_path / "k.pem", tmp_path)
    out = certs.pem_to_der(tmp_path / "k.pem", tmp_path, lambda role: b"pw")
    key = serialization.load_der_private_key(out[0].path.read_bytes(), None)
    assert key.public_key() == signer.public_key.to_crypto()  # type: ignore[union-attr]


def test_pem_to_der_refuses_der_and_ed25519(tmp_path: Path) -> None:
    (tmp_path / "c.der").write_bytes(b"\x30\x00")
    with pytest.raises(UsageError, match="not PEM"):
        certs.pem_to_der(tmp_path / "c.der", tmp_path)
    ed = ed25519.Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (tmp_path / "ed.pem").write_bytes(ed)
    with pytest.raises(UsageError, match="Ed25519"):
        certs.pem_to_der(tmp_path / "ed.pem", tmp_path)


# --- anchors ---------------------------------------------------------------------------------


def test_anchor_choice(issuing: ca_mod.IssuingCa) -> None:
    key = certs.generate_key()
    leaf = certs.issue(issuing, certs.LeafRequest("s.example", "server"), key.public_key())
    chain = [leaf, issuing.cert]
    root = anchor.choose_anchor(chain, "root", "f", bundle=[issuing.root], hostname="s.example")
    assert root.cert == issuing.root and root.warnings == [] and root.findings == []
    assert "root expires" in root.tradeoff or "Survives" in root.tradeoff
    inter = anchor.choose_anchor(chain, "intermediate", "f")
    assert inter.cert == issuing.cert
    with pytest.raises(UsageError, match="neither in the chain nor in the CA bundle"):
        anchor.choose_anchor(chain, "root", "f", bundle=[])
    with pytest.raises(UsageError, match="self-signed"):
        anchor.choose_anchor(chain, "leaf", "f")
    with pytest.raises(UsageError, match="no intermediate"):
        anchor.choose_anchor([leaf], "intermediate", "f")
    wrong_name = anchor.choose_anchor(chain, "root", "f", [issuing.root], hostname="other.example")
    assert any("does not name" in w for w in wrong_name.warnings)
    backwards = anchor.choose_anchor([issuing.cert, leaf], "intermediate", "f")
    assert any("out of order" in w for w in backwards.warnings)


def test_anchor_expiry_is_checked() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    root = ca_cert("short root", key)  # one year
    leaf = leaf_cert(
        "s.example",
        ec.generate_private_key(ec.SECP256R1()).public_key(),
        root,
        key,
        sans=("s.example",),
    )
    choice = anchor.choose_anchor([leaf, root], "root", "f")
    assert any("expires" in w for w in choice.warnings)
    later = dt.datetime.now(UTC) + dt.timedelta(days=400)
    with pytest.raises(UsageError, match="expired"):
        anchor.choose_anchor([leaf, root], "root", "f", now=later)


@pytest.mark.parametrize(
    "text,expected",
    [
        ("example.com:443", ("example.com", 443)),
        ("127.0.0.1:8443", ("127.0.0.1", 8443)),
        ("[::1]:443", ("::1", 443)),
        ("example.com", None),
        ("a b:1", None),
        ("x:99999", "error"),
    ],
)
def test_hostport(text: str, expected: object) -> None:
    if expected == "error":
        with pytest.raises(UsageError):
            anchor.parse_hostport(text)
    else:
        assert anchor.parse_hostport(text) == expected


# --- expiry ----------------------------------------------------------------------------------


def test_expiry_lists_soonest_first_and_merges_copies(
    ca_dir: Path, issuing: ca_mod.IssuingCa, tmp_path: Path
) -> None:
    key = certs.generate_key()
    leaf = certs.issue(issuing, certs.LeafRequest("dev", "client", days=30), key.public_key())
    certs.write_leaf(certs.leaf_paths(tmp_path, "dev"), leaf, issuing, key, force=False)
    (tmp_path / "junk.pem").write_bytes(
        b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    )
    report = expiry.scan([tmp_path, ca_dir])
    subjects = [e.subject for e in report.entries]
    assert subjects[0] == "CN=dev"
    assert [e.not_after for e in report.entries] == sorted(e.not_after for e in report.entries)
    dev = report.entries[0]
    assert {Path(f).name for f in dev.files} == {"dev.pem", "dev.der", "dev-chain.pem"}
    assert [Path(f).name for f, _ in report.skipped] == ["junk.pem"]
    # keys are not certificates and are not reported
    assert not any("key" in Path(f).name for e in report.entries for f in e.files)
