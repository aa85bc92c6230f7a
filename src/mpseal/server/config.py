"""What an update server process needs, in one typed place (tuf ``ngclient/config.py`` style).

``ServerConfig`` is what ``create_app`` takes. ``ServerSettings`` is its serialisable
form (paths, no key material), handed to worker processes in an environment variable
when uvicorn runs several; each worker loads the timestamp key itself.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from mpseal.crypto.keys import PrivateKeySigner, Signer
from mpseal.errors import ConfigError
from mpseal.fleet.rollout import HaltPolicy
from mpseal.fsutil import read_private_key
from mpseal.limits import DEFAULT_LIMITS

if TYPE_CHECKING:
    from mpseal.pki.online import CaSource

DEFAULT_CHANNEL = "stable"
RENEWAL_DAYS = 30  # lifetime of a certificate issued online; devices renew at two thirds
SETTINGS_ENV = "MPSEAL_SERVER_SETTINGS"
KEY_FILE_LIMIT = 16 * 1024


@dataclass(frozen=True)
class ServerLimits:
    """Upper bounds on what a client may send."""

    json_body_max: int = 4 * 1024  # device and admin JSON requests
    artifact_upload_max: int = DEFAULT_LIMITS.artifact_max_length
    cache_entries_max: int = 200_000  # per in-memory cache (auth, releases)
    directory_entries_max: int = 2_000_000  # device credentials held (directory.py); 0: none
    report_rate_per_minute: float = 10.0  # per device and server process, after the burst
    report_burst: int = 20


@dataclass(frozen=True)
class ServerConfig:
    database_url: str
    artifacts_dir: Path
    roots_dir: Path  # trust root versions as <N>.mpsr, served to devices
    timestamp_signer: Signer
    trust_root_file: Path | None = None  # used when roots_dir holds no root yet
    admin_token_hashes: tuple[str, ...] = ()  # SHA-256 hex of each admin token
    artifact_base_url: str | None = None  # redirect downloads to a CDN (artifacts are signed)
    timestamp_expiry_seconds: int = 86_400
    timestamp_refresh_seconds: int | None = None  # re-sign when less remains (default: half)
    cache_seconds: float = 1.0  # auth, releases and timestamp caches; bounds revocation delay
    maintenance_seconds: float = 30.0  # re-sign stale timestamps, halt timed-out trials
    default_channel: str = DEFAULT_CHANNEL
    halt_policy: HaltPolicy = field(default_factory=HaltPolicy)
    limits: ServerLimits = field(default_factory=ServerLimits)
    migrate: bool = True  # bring the schema to head on start (off for extra workers)
    db_concurrency: int = 12  # DB calls at once (threads); under the pool's 5 + 10
    event_retention_days: float = 90.0  # events older than this are deleted
    inventory_seconds: float = 5.0  # the inventory (last check-in) is written this often
    health_seconds: float = 2.0  # how often the database is pinged
    retry_after_seconds: int = 10  # told to clients in a 503 while the database is down
    # Online renewal (POST /v1/device/reenroll): None keeps issuance offline (batch only).
    renewal_ca: CaSource | None = None
    renewal_days: int = RENEWAL_DAYS
    renewals_per_hour: int = 3  # per device: a device asking more often is refused (429)
    clock: Callable[[], datetime] | None = None  # the server's now (tests move it); None: UTC

    @property
    def refresh_before(self) -> int:
        if self.timestamp_refresh_seconds is not None:
            return self.timestamp_refresh_seconds
        return self.timestamp_expiry_seconds // 2


def admin_token_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class ServerSettings:
    """``ServerConfig`` with the timestamp key as a file path: JSON-serialisable."""

    database_url: str
    artifacts_dir: str
    roots_dir: str
    timestamp_key: str
    trust_root_file: str | None = None
    admin_token_hashes: tuple[str, ...] = ()
    artifact_base_url: str | None = None
    timestamp_expiry_seconds: int = 86_400
    cache_seconds: float = 1.0
    maintenance_seconds: float = 30.0
    migrate: bool = True
    halt_min_attempts: int = 5
    halt_max_failure_ratio: float = 0.2
    halt_min_cohort_share: float = 0.001
    trial_window_seconds: int = 3600
    report_rate_per_minute: float = 10.0
    report_burst: int = 20
    event_retention_days: float = 90.0
    directory_entries_max: int = 2_000_000
    renewal_ca_dir: str | None = None  # a CA folder: online renewal on (else offline only)
    renewal_days: int = RENEWAL_DAYS

    def to_env(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> ServerSettings:
        raw = (environ if environ is not None else os.environ).get(SETTINGS_ENV)
        if not raw:
            raise ConfigError(f"${SETTINGS_ENV} is not set: start workers with 'mpseal serve'")
        try:
            data = json.loads(raw)
            known = {f.name for f in fields(cls)}
            data = {k: v for k, v in data.items() if k in known}
            data["admin_token_hashes"] = tuple(data.get("admin_token_hashes", ()))
            return cls(**data)
        except (ValueError, TypeError) as e:
            raise ConfigError(f"${SETTINGS_ENV} is not valid server settings: {e}") from None

    def load(self, passphrase: bytes | None = None) -> ServerConfig:
        pem = read_private_key(Path(self.timestamp_key), KEY_FILE_LIMIT, "timestamp key")
        signer = PrivateKeySigner.from_pem(pem, passphrase if b"ENCRYPTED" in pem else None)
        return ServerConfig(
            database_url=self.database_url,
            artifacts_dir=Path(self.artifacts_dir),
            roots_dir=Path(self.roots_dir),
            timestamp_signer=signer,
            trust_root_file=Path(self.trust_root_file) if self.trust_root_file else None,
            admin_token_hashes=self.admin_token_hashes,
            artifact_base_url=self.artifact_base_url,
            timestamp_expiry_seconds=self.timestamp_expiry_seconds,
            cache_seconds=self.cache_seconds,
            maintenance_seconds=self.maintenance_seconds,
            migrate=self.migrate,
            halt_policy=HaltPolicy(
                self.halt_min_attempts,
                self.halt_max_failure_ratio,
                self.trial_window_seconds,
                self.halt_min_cohort_share,
            ),
            limits=ServerLimits(
                report_rate_per_minute=self.report_rate_per_minute,
                report_burst=self.report_burst,
                directory_entries_max=self.directory_entries_max,
            ),
            event_retention_days=self.event_retention_days,
            renewal_ca=self._renewal_ca(passphrase),
            renewal_days=self.renewal_days,
        )

    def _renewal_ca(self, passphrase: bytes | None) -> CaSource | None:
        if not self.renewal_ca_dir:
            return None
        from mpseal.pki.online import FolderCa

        return FolderCa(
            Path(self.renewal_ca_dir), (lambda _role: passphrase) if passphrase else None
        )
