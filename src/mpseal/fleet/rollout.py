"""Staged rollouts: which release a channel names, who is offered it, when it halts by itself.

Pure policy: plain values in, a decision out; no database, no clock, no I/O.
The server loads the views, this module decides (the split of python-tuf's
``trusted_metadata_set`` and ``updater``).

A signed timestamp names at most one target per (app, board) in a channel
(docs/updates.md), so per channel, app and board one release is **current**: the
newest one that was promoted and is active (not paused, not halted). Parallel
tracks (beta, stable) are channels, and each channel's timestamp names its channel.

Who is offered the current release (state ``active`` only; ``paused`` and ``halted``
ones are offered to no one): a **pinned** device, a device in one of its **groups**,
or one in its **cohort**: a stable hash of (release id, hardware id) mapped to
[0, 100) is below the release's percent. Raising the percent only adds devices;
each release draws its own cohort.

What is offered is only what the device would accept on its own: its app and board,
a security counter not below the device's, listed in the current signed timestamp,
not the version it runs, not one it already refused or rolled back, and newer in
publish order than the release it runs, so halting a release never pushes a
downgrade on the devices that took it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable
from dataclasses import dataclass, field

_BUCKETS = 2**64


@dataclass(frozen=True)
class ReleaseView:
    id: int
    app: str
    board: str
    channel: str
    version: str
    counter: int
    manifest_sha256: str
    state: str = "active"
    percent: float = 0.0
    groups: frozenset[str] = frozenset()
    pins: frozenset[str] = frozenset()
    # (from_version, delta SHA-256, size): the deltas made at publish time (formats/delta.py)
    deltas: tuple[tuple[str, str, int], ...] = ()
    # An encrypted release (formats/encrypted.py): (stored image SHA-256, release key),
    # wrapped per device in the check reply. Secret: never in a repr, a log or the admin API.
    key: tuple[str, bytes] | None = field(default=None, repr=False)

    def delta_from(self, version: str) -> tuple[str, str, int] | None:
        return next((d for d in self.deltas if d[0] == version), None)

    @property
    def promoted(self) -> bool:
        return self.percent > 0 or bool(self.groups) or bool(self.pins)


@dataclass(frozen=True)
class DeviceView:
    """What the registry says about a device: who it is and what it already failed."""

    id: int
    hardware_id: str
    group: str
    failed: frozenset[int] = frozenset()  # release ids it refused or rolled back
    board: str = ""  # as registered ("" when unknown)


@dataclass(frozen=True)
class Running:
    """What the device says it runs (its check request)."""

    app: str
    board: str
    version: str
    counter: int


def cohort_bucket(release_id: int, hardware_id: str) -> float:
    """Stable position of a device in a release's rollout, uniform in [0, 100)."""
    digest = hashlib.sha256(f"{release_id}:{hardware_id}".encode()).digest()
    return int.from_bytes(digest[:8], "big") * 100.0 / _BUCKETS


def in_rollout(release: ReleaseView, device: DeviceView) -> bool:
    """Is the device pinned to the release, in one of its groups, or in its cohort?"""
    if device.hardware_id in release.pins or device.group in release.groups:
        return True
    return release.percent > 0 and cohort_bucket(release.id, device.hardware_id) < release.percent


def current_releases(releases: Iterable[ReleaseView]) -> list[ReleaseView]:
    """Per (app, board): the newest promoted release that is active, newest first.

    These, and only these, are the targets of the channel's signed timestamp: a paused
    or halted release leaves it at once, so a mirror that rewrites the check reply
    cannot offer it (devices install only what the signed timestamp names).
    """
    best: dict[tuple[str, str], ReleaseView] = {}
    for r in releases:
        if r.state != "active" or not r.promoted:
            continue
        key = (r.app, r.board)
        if key not in best or r.id > best[key].id:
            best[key] = r
    return sorted(best.values(), key=lambda r: r.id, reverse=True)


def choose(
    releases: Iterable[ReleaseView], device: DeviceView, running: Running, offered: Collection[str]
) -> ReleaseView | None:
    """The release to offer ``device``, or None.

    ``releases`` are the channel's releases for the device's app and board (any state);
    ``offered`` the manifest SHA-256s in the channel's current signed timestamp.
    """
    mine = [r for r in releases if r.app == running.app and r.board == running.board]
    current = max((r.id for r in mine if r.version == running.version), default=None)
    for r in current_releases(mine):
        if (
            r.state == "active"
            and r.counter >= running.counter
            and r.version != running.version
            and r.manifest_sha256 in offered
            and r.id not in device.failed
            and (current is None or r.id > current)
            and in_rollout(r, device)
        ):
            return r
    return None


# -- automatic halt --------------------------------------------------------------------


@dataclass(frozen=True)
class HaltPolicy:
    """Halt a release when more than ``max_failure_ratio`` of at least ``min_attempts``
    devices that tried it failed (refused it, rolled back, or ran a trial boot that was
    not confirmed within ``trial_window_seconds``), and the failed devices are at least
    ``min_cohort_share`` of the devices the release is offered to (its cohort), so that a
    handful of devices cannot halt a rollout to thousands. Counted per distinct device,
    and only reports of devices the release was offered to count."""

    min_attempts: int = 5
    max_failure_ratio: float = 0.2
    trial_window_seconds: int = 3600
    min_cohort_share: float = 0.001

    def with_overrides(
        self,
        min_attempts: int | None = None,
        max_failure_ratio: float | None = None,
        min_cohort_share: float | None = None,
    ) -> HaltPolicy:
        """This policy with a release's own settings (None: the server's)."""
        return HaltPolicy(
            self.min_attempts if min_attempts is None else min_attempts,
            self.max_failure_ratio if max_failure_ratio is None else max_failure_ratio,
            self.trial_window_seconds,
            self.min_cohort_share if min_cohort_share is None else min_cohort_share,
        )


@dataclass(frozen=True)
class ReleaseStats:
    attempts: int = 0  # devices that reported anything for the release
    updated: int = 0  # confirmed
    refused: int = 0
    rolled_back: int = 0
    trial_timeouts: int = 0  # booted, not confirmed within the window
    cohort: int = 0  # devices the release is offered to (estimated at promote time)
    # The devices that had finished with the release (confirmed or failed) when an admin
    # last resumed it after a halt; None if that never happened. See since_resume().
    base: ReleaseStats | None = None

    @property
    def failed(self) -> int:
        return self.refused + self.rolled_back + self.trial_timeouts

    @property
    def in_progress(self) -> int:
        return self.attempts - self.updated - self.failed

    def finished(self) -> ReleaseStats:
        """Only the devices done with the release (what a resume starts counting from)."""
        return ReleaseStats(
            self.updated + self.failed,
            self.updated,
            self.refused,
            self.rolled_back,
            self.trial_timeouts,
        )

    def since_resume(self) -> ReleaseStats:
        """What the halt counts: the devices that finished with the release after it was
        last resumed, and the ones still in progress then. The failures that halted it
        before do not halt it again; a device that had not finished when it was resumed
        and fails later does count."""
        b = self.base
        if b is None:
            return self
        updated = max(0, self.updated - b.updated)
        refused = max(0, self.refused - b.refused)
        rolled_back = max(0, self.rolled_back - b.rolled_back)
        timeouts = max(0, self.trial_timeouts - b.trial_timeouts)
        attempts = max(
            self.attempts - b.updated - b.failed, updated + refused + rolled_back + timeouts
        )
        return ReleaseStats(attempts, updated, refused, rolled_back, timeouts, self.cohort)


def halt_reason(stats: ReleaseStats, policy: HaltPolicy) -> str | None:
    """Why the release must halt now, or None (after a resume: counted since then)."""
    resumed = stats.base is not None
    stats = stats.since_resume()
    if stats.attempts < policy.min_attempts or stats.attempts == 0:
        return None
    if stats.failed / stats.attempts <= policy.max_failure_ratio:
        return None
    if stats.failed < policy.min_cohort_share * stats.cohort:
        return None
    parts = [
        f"{n} {what}"
        for n, what in (
            (stats.refused, "refused"),
            (stats.rolled_back, "rolled back"),
            (stats.trial_timeouts, "trial not confirmed"),
        )
        if n
    ]
    return (
        f"{stats.failed} of {stats.attempts} devices failed"
        f"{' since it was resumed' if resumed else ''} ({', '.join(parts)}), "
        f"above the {policy.max_failure_ratio:.0%} limit"
    )
