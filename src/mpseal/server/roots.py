"""The trust roots the server serves (``roots/<N>.mpsr``) and the newest one it trusts.

Files are read with a size limit and parsed (self-signature checked) before use; the
folder is rescanned at most once per ``ttl`` seconds, so a root added with
``mpseal keys`` is picked up (and the timestamps re-signed) without a restart.

Several servers with separate folders share their roots through the database: each
stores the ones it has, and trusts a newer stored one only if it chains from its own
newest (signed by the previous root keys), so all of them name the same newest root.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from mpseal.errors import ConfigError, MpsealError
from mpseal.formats import trustroot
from mpseal.formats.trustroot import TrustRoot
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS

log = logging.getLogger("mpseal.server")
ROOT_NAME = re.compile(r"([1-9][0-9]{0,8})\.mpsr")


@dataclass(frozen=True)
class Roots:
    newest: TrustRoot
    files: dict[int, Path]  # version -> file
    shared: dict[int, bytes] = field(default_factory=dict)  # newer ones from the database


class RootStore:
    def __init__(self, roots_dir: Path, trust_root_file: Path | None, ttl: float = 5.0) -> None:
        self.roots_dir = Path(roots_dir)
        self.trust_root_file = trust_root_file
        self.ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, Roots] | None = None
        self._shared: dict[int, bytes] = {}  # verified roots newer than the local ones

    def local_roots(self) -> dict[int, bytes]:
        """The root files of this server's folder (and trust root file), by version."""
        roots = self._scan_local()
        return {
            v: read_limited(p, DEFAULT_LIMITS.root_max_length, "trust root")
            for v, p in roots.files.items()
        }

    def adopt(self, stored: dict[int, bytes]) -> TrustRoot | None:
        """Trust the roots other servers stored (the database) that follow this server's
        newest local root, each signed by the one before (``verify_root_chain``), so every
        server names the same newest root; returns the new newest one, if any. A root that
        does not chain is ignored (and logged): the database cannot add trust."""
        local = self._scan_local().newest
        chain = []
        v = local.version + 1
        while v in stored:
            chain.append(stored[v])
            v += 1
        if not chain:
            return None
        try:
            newest = trustroot.verify_root_chain(local, chain)
        except MpsealError as e:
            log.error(
                "trust roots in the database after version %d do not chain: %s", local.version, e
            )
            return None
        with self._lock:
            changed = set(self._shared) != set(range(local.version + 1, v))
            self._shared = {local.version + 1 + i: d for i, d in enumerate(chain)}
            if changed:
                self._cached = None
        return newest if changed else None

    def current(self) -> Roots:
        with self._lock:
            if self._cached is None or self._cached[0] < time.monotonic():
                self._cached = (time.monotonic() + self.ttl, self._scan())
            return self._cached[1]

    def newest(self) -> TrustRoot:
        return self.current().newest

    def read(self, version: int) -> bytes | None:
        cur = self.current()
        if version in cur.shared:
            return cur.shared[version]
        path = cur.files.get(version)
        if path is None:
            # Added since the last scan (``mpseal keys``): serve it now, rescan next time.
            path = self.roots_dir / f"{version}.mpsr"
            if not path.is_file():
                return None
            with self._lock:
                self._cached = None
        return read_limited(path, DEFAULT_LIMITS.root_max_length, "trust root")

    def _scan(self) -> Roots:
        local = self._scan_local()
        shared = {v: d for v, d in self._shared.items() if v > local.newest.version}
        if not shared:
            return local
        try:
            newest = trustroot.parse(shared[max(shared)])
        except MpsealError:  # verified when adopted; cannot happen
            return local
        return Roots(newest, local.files, shared)

    def _scan_local(self) -> Roots:
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
            raise ConfigError(
                f"no trust root: {self.roots_dir} has no <N>.mpsr and no trust "
                "root file is configured"
            )
        path = candidates[0]
        try:
            newest = trustroot.parse(
                read_limited(path, DEFAULT_LIMITS.root_max_length, "trust root")
            )
        except MpsealError as e:
            raise ConfigError(f"trust root {path} is unusable: {e}") from None
        files.setdefault(newest.version, path)
        return Roots(newest, files)
