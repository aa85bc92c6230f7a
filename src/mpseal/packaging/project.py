"""A product project on disk: its folder, ``mpseal.toml``, keys and trust root."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mpseal.errors import ConfigError, MpsealError
from mpseal.formats import config as config_mod
from mpseal.formats.config import CONFIG_NAME, ProjectConfig
from mpseal.fsutil import read_limited, read_private_key
from mpseal.limits import DEFAULT_LIMITS

if TYPE_CHECKING:  # imported where used: loading a project needs no cryptography
    from mpseal.crypto.keys import PrivateKeySigner
    from mpseal.formats.trustroot import TrustRoot

PassphraseSource = Callable[[str], bytes | None]
KEY_FILE_LIMIT = 16 * 1024


def no_passphrase(_: str) -> bytes | None:
    return None


@dataclass(frozen=True)
class Project:
    root: Path
    config: ProjectConfig

    @classmethod
    def load(cls, start: Path | str = ".") -> Project:
        """Find ``mpseal.toml`` in ``start`` or a parent folder and load it."""
        here = Path(start).resolve()
        for folder in (here, *here.parents):
            path = folder / CONFIG_NAME
            if path.is_file():
                text = read_limited(path, DEFAULT_LIMITS.config_max_length, CONFIG_NAME)
                try:
                    return cls(folder, config_mod.parse(text.decode("utf-8")))
                except UnicodeDecodeError:
                    raise ConfigError(f"{path} is not UTF-8 text") from None
        raise ConfigError(f"no {CONFIG_NAME} in {here} or above; run 'mpseal init DIR' first")

    def path(self, rel: str) -> Path:
        return self.root / rel

    @property
    def source_dir(self) -> Path:
        return self.root / self.config.source

    @property
    def dist_dir(self) -> Path:
        return self.root / "dist"

    @property
    def cache_dir(self) -> Path:
        return self.root / ".mpseal-cache"

    def for_board(self, name: str) -> Project:
        """This project built for board ``name`` (one of several a product ships on)."""
        return replace(self, config=self.config.for_board(name))

    @property
    def board_suffix(self) -> str:
        """'' for a one-board project built for its own board, else '-<board>', so that
        the builds of a multi-board product never overwrite each other in dist/."""
        cfg = self.config
        return "" if cfg.boards in ((), (cfg.board,)) else f"-{cfg.board.name}"

    def artifact_path(self) -> Path:
        return self.dist_dir / f"{self.config.name}-{self.config.version}{self.board_suffix}.mpseal"

    def load_signer(self, rel: str, role: str, passphrase: PassphraseSource) -> PrivateKeySigner:
        from mpseal.crypto.keys import PrivateKeySigner

        path = self.path(rel)
        if not path.is_file():
            raise ConfigError(f"{role} key not found at {path}; see [keys] in {CONFIG_NAME}")
        pem = read_private_key(path, KEY_FILE_LIMIT, f"{role} key")
        encrypted = b"ENCRYPTED" in pem
        return PrivateKeySigner.from_pem(pem, passphrase(role) if encrypted else None)

    def release_signer(self, passphrase: PassphraseSource = no_passphrase) -> PrivateKeySigner:
        return self.load_signer(self.config.release_key, "release", passphrase)

    def timestamp_signer(self, passphrase: PassphraseSource = no_passphrase) -> PrivateKeySigner:
        """The online key the update server signs timestamps with (``[keys] timestamp``)."""
        return self.load_signer(self.config.timestamp_key, "timestamp", passphrase)

    @property
    def roots_dir(self) -> Path:
        """Every trust root version as ``<N>.mpsr``, next to the trust root (served to devices)."""
        return self.path(self.config.trust_root).parent / "roots"

    def trust_root(self) -> TrustRoot:
        from mpseal.formats import trustroot

        path = self.path(self.config.trust_root)
        if not path.is_file():
            raise ConfigError(f"trust root not found at {path}; see [keys] in {CONFIG_NAME}")
        data = read_limited(path, DEFAULT_LIMITS.root_max_length, "trust root")
        try:
            return trustroot.parse(data)
        except MpsealError as e:
            raise ConfigError(f"the project's trust root {path} is unusable: {e}") from None
