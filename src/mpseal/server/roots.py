"""The trust roots the server serves (``roots/<N>.mpsr``) and the newest one it trusts.

Files are read with a size limit and parsed (self-signature checked) before use; the
folder is rescanned at most once per ``ttl`` seconds, so a root added with
``mpseal keys`` is picked up (and the timestamps re-signed) without a restart.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from mpseal.errors import ConfigError, MpsealError
from mpseal.formats import trustroot
from mpseal.formats.trustroot import TrustRoot
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS

ROOT_NAME = re.compile(r"([1-9][0-9]{0,8})\.mpsr")


@dataclass(frozen=True)
class Roots:
    newest: TrustRoot
    files: dict[int, Path]  # version -> file


class RootStore:
    def __init__(self, roots_dir: Path, trust_root_file: Path | None, ttl: float = 5.0) -> None:
        self.roots_dir = Path(roots_dir)
        self.trust_root_file = trust_root_file
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, Roots] | None = None

    def current(self) -> Roots:
        with self._lock:
            if self._cached is None or self._cached[0] < time.monotonic():
                self._cached = (time.monotonic() + self.ttl, self._scan())
            return self._cached[1]

    def newest(self) -> TrustRoot:
        return self.current().newest

    def read(self, version: int) -> bytes | None:
        path = self.current().files.get(version)
        if path is None:
            # Added since the last scan (``mpseal keys``): serve it now, rescan next time.
            path = self.roots_dir / f"{version}.mpsr"
            if not path.is_file():
                return None
            with self._lock:
                self._cached = None
        return read_limited(path, DEFAULT_LIMITS.root_max_length, "trust root")

    def _scan(self) -> Roots:
        files: dict[int, Path] = {}
        if self.roots_dir.is_dir():
            for p in self.roots_dir.iterdir():
                m = ROOT_NAME.fullmatch(p.name)
                if m and p.is_file():
                    files[int(m.group(1))] = p
        candidates = [files[v] for v in sorted(files, reverse=True)[:1]]
        if not candidates and self.trust_root_file is not None:
            candidates = [self.trust_root_file]
        if not candidates:
            raise ConfigError(f"no trust root: {self.roots_dir} has no <N>.mpsr and no trust "
                              "root file is configured")
        path = candidates[0]
        try:
            newest = trustroot.parse(read_limited(path, DEFAULT_LIMITS.root_max_length,
                                                  "trust root"))
        except MpsealError as e:
            raise ConfigError(f"trust root {path} is unusable: {e}") from None
        files.setdefault(newest.version, path)
        return Roots(newest, files)
