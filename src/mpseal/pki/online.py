"""The issuing CA as an online server holds it, for renewal over the air.

``CaSource.get()`` returns the ``IssuingCa`` to sign with now. ``FolderCa`` reads a CA
folder (``mpseal ca init``) and reads it again when ``issuing.pem`` changes, so
``mpseal ca rotate`` moves renewals to the new issuing CA without a restart.
``FixedCa`` holds one ``IssuingCa`` whose ``signer`` may be any ``CertSigner`` (an HSM:
pki/signer.py). Whoever steals the online issuing key can mint device identities (T2)
until the issuing CA is rotated and the servers stop accepting the old one.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Protocol

from mpseal.errors import ConfigError
from mpseal.pki.ca import IssuingCa, load_issuing_ca
from mpseal.pki.signer import PassphraseCallback


class CaSource(Protocol):
    def get(self) -> IssuingCa: ...


class FixedCa:
    def __init__(self, ca: IssuingCa) -> None:
        self.ca = ca

    def get(self) -> IssuingCa:
        return self.ca


class FolderCa:
    def __init__(self, folder: Path, passphrase: PassphraseCallback | None = None) -> None:
        self.folder = Path(folder)
        self.passphrase = passphrase
        self._lock = threading.Lock()
        self._stamp: tuple[int, int] | None = None
        self._ca: IssuingCa | None = None
        self.get()  # a wrong folder or key fails at start, not at the first renewal

    def _now_stamp(self) -> tuple[int, int]:
        try:
            st = (self.folder / "issuing.pem").stat()
        except OSError as e:
            raise ConfigError(f"renewal CA {self.folder}: {e.strerror}") from None
        return st.st_mtime_ns, st.st_size

    def get(self) -> IssuingCa:
        with self._lock:
            stamp = self._now_stamp()
            if self._ca is None or stamp != self._stamp:
                self._ca = load_issuing_ca(self.folder, self.passphrase)
                self._stamp = stamp
            return self._ca
