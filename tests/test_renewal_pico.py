"""The device half of renewal on the virtual Pico (stock RPI_PICO firmware): the board
makes the renewal's new key and CSR (device/keygen.py path, its real os.urandom), and
mpseal_renew reads its certificate's validity and decides when to renew exactly as the
host computes it (32-bit MicroPython: its dates go past small ints)."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from mpseal.device.guard_install import compiled_guard
from mpseal.device.keygen import device_csr
from mpseal.device.pico import VirtualPico
from mpseal.device.serialboard import SerialTransport
from mpseal.fleet.provision import issue_identity
from mpseal.pki.ca import CaOptions, init_ca, load_issuing_ca


@pytest.fixture(scope="module")
def link() -> Iterator[SerialTransport]:
    with tempfile.TemporaryDirectory(prefix="mpseal-renew-") as tmp:
        board = VirtualPico.create(Path(tmp) / "board")
        board.start()
        try:
            board.wait_repl(60)
            with SerialTransport(board.path) as t:
                t.exec(
                    "import os\nfor d in ('/lib', '/mpseal', '/mpseal/id'):\n"
                    "    try:\n        os.mkdir(d)\n    except OSError:\n        pass\n"
                )
                for path, data in compiled_guard("rp2").items():
                    if path.endswith(
                        (
                            "mpseal_renew.mpy",
                            "mpseal_meta.mpy",
                            "mpseal_release.mpy",
                            "mpseal_guard.mpy",
                            "mpseal_state.mpy",
                            "mpseal_port.mpy",
                        )
                    ):
                        t.write_file(path, data)
                yield t
        finally:
            board.stop()


def test_renewal_key_csr_and_decision_on_the_pico(link: SerialTransport, tmp_path: Path) -> None:
    made = device_csr(link, "rp2", [("CN", "pico-0001")])  # the renewal's CSR subject
    csr = x509.load_der_x509_csr(made.csr_der)
    assert csr.is_signature_valid
    init_ca(tmp_path / "ca", CaOptions(name="pico renewal"))
    ident = issue_identity(load_issuing_ca(tmp_path / "ca"), "pico-0001", 30, csr.public_key())  # type: ignore[arg-type]
    link.write_file("/mpseal/id/device.der", ident.cert_der)
    cert = x509.load_der_x509_certificate(ident.cert_der)
    nb, na = int(cert.not_valid_before_utc.timestamp()), int(cert.not_valid_after_utc.timestamp())
    assert link.eval(
        "__import__('mpseal_renew').validity(open('/mpseal/id/device.der','rb').read())"
    ) == (nb, na)
    point = nb + (na - nb) * 2 // 3
    assert link.eval(f"__import__('mpseal_renew').due({point - 1})") is False
    assert link.eval(f"__import__('mpseal_renew').due({point})") is True
    assert link.eval(f"__import__('mpseal_renew').expired({na})") is True
    assert (
        cert.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        == made.public_key
    )
