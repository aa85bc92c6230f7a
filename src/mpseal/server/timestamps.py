"""The signed timestamp of each channel: built from the rollout, signed online, kept fresh.

Re-signed whenever what it should say changes (a release promoted, paused, halted, a
new trust root) and when less than ``refresh_before`` seconds of its validity remain.
Any server process may do it; the store makes sure versions strictly increase and
that one process wins each round.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass

from mpseal.crypto.keys import Signer
from mpseal.errors import ConfigError, MpsealError, UsageError
from mpseal.fleet.releasestore import ReleaseInfo, ReleaseStore, TimestampRecord
from mpseal.fleet.rollout import current_releases
from mpseal.formats.trustroot import TrustRoot
from mpseal.formats.updatemeta import ROLE, Target, Timestamp, parse_timestamp, sign_timestamp
from mpseal.server.roots import RootStore

log = logging.getLogger("mpseal.server")


@dataclass(frozen=True)
class CurrentTimestamp:
    """A channel's timestamp as served, with what the check endpoint needs from it."""

    channel: str
    version: int
    expires: int
    root_version: int
    data: bytes
    targets: dict[str, dict[str, object]]  # manifest SHA-256 -> target, exactly as signed


def check_timestamp_key(root: TrustRoot, signer: Signer) -> TrustRoot:
    """``root``, if devices holding it accept timestamps signed by ``signer`` alone."""
    role = root.roles.get(ROLE)
    if role is None or signer.public_key.keyid not in role.keyids:
        raise ConfigError(
            f"the timestamp key {signer.public_key.keyid[:16]} is not in the timestamp role of "
            f"trust root {root.version}; devices would refuse every timestamp (see 'mpseal keys')"
        )
    if role.threshold > 1:
        raise ConfigError(
            f"trust root {root.version} needs {role.threshold} timestamp "
            "signatures; the server signs with one key"
        )
    return root


def target_of(info: ReleaseInfo) -> Target:
    v = info.view
    return Target(
        app=v.app,
        board=v.board,
        version=v.version,
        counter=v.counter,
        manifest_sha256=v.manifest_sha256,
        size=info.size,
        path=f"artifacts/{info.file_sha256}.mpseal",
    )


class TimestampService:
    def __init__(
        self,
        store: ReleaseStore,
        roots: RootStore,
        signer: Signer,
        expiry_seconds: int,
        refresh_before: int,
    ) -> None:
        if not 0 <= refresh_before < expiry_seconds:
            raise ConfigError("the timestamp refresh margin must be below its expiry")
        self.store = store
        self.roots = roots
        self.signer = signer
        self.expiry = expiry_seconds
        self.refresh_before = refresh_before

    def check_key(self) -> TrustRoot:
        """The newest trust root, after checking it names our key in its timestamp role."""
        return check_timestamp_key(self.roots.newest(), self.signer)

    def desired(self, channel: str, root: TrustRoot) -> tuple[list[Target], str]:
        """The targets the channel's timestamp should name (newest first) and their digest."""
        infos = {i.view.id: i for i in self.store.releases(channel, stats=False)}
        targets = [target_of(infos[v.id]) for v in current_releases(i.view for i in infos.values())]
        # Not which key signs: servers with different timestamp keys (all in the root's
        # timestamp role) agree on what a timestamp says and do not re-sign each other's.
        # "channel": timestamps name their channel (older ones are signed again).
        digest = hashlib.sha256(
            json.dumps(
                [[t.to_dict() for t in targets], root.version, "channel", channel], sort_keys=True
            ).encode()
        ).hexdigest()
        return targets, digest

    def refresh(self, channel: str, now: int | None = None) -> TimestampRecord:
        """Make sure ``channel`` has a fresh timestamp naming the right targets; return it."""
        root = self.check_key()
        for _ in range(5):
            t = int(time.time()) if now is None else now
            # Read the stored one first, then what it should say: a replace only succeeds
            # while the stored version is unchanged, so a change another process committed
            # in between is never signed away.
            rec = self.store.timestamp(channel)
            targets, digest = self.desired(channel, root)
            if (
                rec is not None
                and rec.targets_digest == digest
                and rec.expires - t > self.refresh_before
                and rec.issued <= t + 60
            ):
                return rec

            def make(
                version: int, t: int = t, targets: list[Target] = targets, digest: str = digest
            ) -> TimestampRecord:
                data = self._sign(version, t, root, targets, channel)
                return TimestampRecord(
                    channel, version, t, t + self.expiry, root.version, digest, data
                )

            new = self.store.replace_timestamp(channel, rec.version if rec else None, make)
            if new is not None:
                log.info(
                    "signed timestamp %s version %d (%d targets)",
                    channel,
                    new.version,
                    len(targets),
                )
                return new
        rec = self.store.timestamp(channel)  # lost every round: another process keeps signing
        if rec is None:
            raise UsageError(f"could not store a timestamp for channel {channel}")
        return rec

    def _sign(
        self, version: int, now: int, root: TrustRoot, targets: list[Target], channel: str
    ) -> bytes:
        keep = list(targets)
        while True:
            ts = Timestamp(
                version=version,
                issued=now,
                expires=now + self.expiry,
                root_version=root.version,
                targets=tuple(keep),
                channel=channel,
            )
            try:
                return sign_timestamp(ts, [self.signer])
            except UsageError:
                if not keep:
                    raise
                dropped = keep.pop()  # oldest: the timestamp is full (size or count limit)
                log.warning(
                    "timestamp %s is full: %s %s for %s left out",
                    channel,
                    dropped.app,
                    dropped.version,
                    dropped.board,
                )

    def current(self, channel: str, create: bool = False) -> CurrentTimestamp | None:
        """The channel's served timestamp, re-signed first if stale; None for no channel."""
        now = int(time.time())
        rec = self.store.timestamp(channel)
        if rec is None and not create:
            return None
        root = self.roots.newest()
        if (
            rec is None
            or rec.expires - now <= self.refresh_before
            or rec.root_version != root.version
        ):  # a new trust root: name it at once
            rec = self.refresh(channel)
        try:
            ts = parse_timestamp(rec.data, root, now=rec.issued, channel=channel)
        except MpsealError:  # signed under an older root or key, or for no channel: again
            rec = self.refresh(channel)
            ts = parse_timestamp(rec.data, root, now=rec.issued, channel=channel)
        return CurrentTimestamp(
            channel,
            ts.version,
            ts.expires,
            ts.root_version,
            rec.data,
            {t.manifest_sha256: t.to_dict() for t in ts.targets},
        )
