"""The host drives key generation on a board (device/keygen.py): on the virtual Pico
(stock RPI_PICO firmware, its real os.urandom), the board makes its key and CSR, the host
checks the CSR, and the key stays on the board."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from mpseal.device.keygen import KEY_PATH, check_csr, check_subject, device_csr
from mpseal.device.pico import VirtualPico
from mpseal.device.serialboard import SerialTransport
from mpseal.errors import BadDataError, PolicyError, UsageError

SUBJECT = [("O", "Acme Sensors"), ("CN", "sensor-0042")]
DNS = ("sensor-0042.fleet.example",)
X962 = (serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)


@pytest.fixture(scope="module")
def link() -> Iterator[SerialTransport]:
    with tempfile.TemporaryDirectory(prefix="mpseal-keygen-") as tmp:
        board = VirtualPico.create(Path(tmp) / "board")
        board.start()
        try:
            board.wait_repl(60)
            with SerialTransport(board.path) as t:
                t.exec(
                    "import os\nfor d in ('/lib', '/mpseal'):\n"
                    "    try:\n        os.mkdir(d)\n    except OSError:\n        pass\n"
                )
                yield t
        finally:
            board.stop()


def test_board_makes_its_key_and_a_csr_the_host_verifies(link: SerialTransport) -> None:
    made = device_csr(link, "rp2", SUBJECT, DNS)
    assert made.created
    csr = x509.load_der_x509_csr(made.csr_der)
    assert csr.is_signature_valid
    assert csr.subject.rfc4514_string() == "CN=sensor-0042,O=Acme Sensors"
    # the key file is on the board; its scalar is in nothing the host got
    key_file = link.read_file(KEY_PATH, 200)  # read here by the test only
    key = serialization.load_der_private_key(key_file, None)  # SEC1 DER, as TLS loads it
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    assert key.public_key().public_bytes(*X962) == made.public_key
    scalar = key.private_numbers().private_value.to_bytes(32, "big")
    assert scalar not in made.csr_der and scalar not in made.public_key

    # a second run is refused (it would replace the key) ...
    with pytest.raises(PolicyError, match="already has a device key"):
        device_csr(link, "rp2", SUBJECT, DNS)
    # ... or makes a new request for the same key
    again = device_csr(link, "rp2", [("CN", "sensor-0042-renewed")], reuse=True)
    assert not again.created and again.public_key == made.public_key
    assert link.read_file(KEY_PATH, 200) == key_file


def test_csr_for_another_key_or_subject_is_refused_by_the_host() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    other = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "sensor-0042")])
    der = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(name)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.DER)
    )
    pub = key.public_key().public_bytes(*X962)
    check_csr(der, pub, [("CN", "sensor-0042")], ())
    with pytest.raises(BadDataError, match="another key"):
        check_csr(der, other.public_key().public_bytes(*X962), [("CN", "sensor-0042")], ())
    with pytest.raises(BadDataError, match="another subject"):
        check_csr(der, pub, [("CN", "sensor-0043")], ())
    with pytest.raises(BadDataError, match="other DNS names"):
        check_csr(der, pub, [("CN", "sensor-0042")], ("x.example",))
    bad = bytearray(der)
    bad[-3] ^= 1  # inside the signature
    with pytest.raises(BadDataError):
        check_csr(bytes(bad), pub, [("CN", "sensor-0042")], ())


@pytest.mark.parametrize(
    "subject,dns",
    [
        ([], ()),
        ([("XX", "a")], ()),
        ([("CN", "")], ()),
        ([("CN", "a\nb")], ()),
        ([("C", "Germany")], ()),
        ([("CN", "a")], ("bad name",)),
    ],
)
def test_bad_subject_is_a_usage_error_before_the_board_is_touched(
    subject: list[tuple[str, str]], dns: tuple[str, ...]
) -> None:
    with pytest.raises(UsageError):
        check_subject(subject, dns)
