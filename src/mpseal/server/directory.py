"""Every active device's credentials in this process's memory (PostgreSQL).

A check authenticates its device here, with no database lookup: the lookup cost a check
20 - 30 us of the server's ~170 and half of the database's CPU (the batch, its worker
thread, the driver's rows; docs/updates.md run 15). The directory is loaded a page of
devices at a time once the database answers, and kept current by the feed of changed
devices that the database's triggers write (migrations 0011, 0012): every
``cache_seconds`` it reads the devices changed by transactions it may not have seen and
drops their credentials, so a revoked device or certificate leaves every server process
within ``cache_seconds`` (plus the read), as with the time-bounded cache it stands in
front of. A release that entered or left a device's failed releases (a failure report) is
added to or removed from the device where it is held, in the same time: the device is
not looked up again for it (a repeated failure report cost twice the event loop's time
with that lookup).

A credential it does not hold (a device registered or activated since, or none at all) is
looked up as before, and an active one found is added, unless a change was read since
that lookup began (it may predate the change). Every credential is looked up until it is
loaded, while it is too large (``max_entries`` credentials: the process keeps none rather
than part), on SQLite (no feed) and with ``cache_seconds`` 0 (no delay allowed). While the
database is down it serves what it holds; after ``STALE_SECONDS`` without a read of the
feed (older changes may be pruned) it is dropped and loaded again.

Memory: ~350 bytes a device with a token, ~170 more for a certificate (1,000,000 devices
with both: ~0.5 GB in each server process; measured in docs/updates.md run 15).
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Mapping
from typing import Literal

from mpseal.fleet.releasestore import Credential, DeviceChange, DeviceRow

log = logging.getLogger("mpseal.server")
Key = tuple[str, str]  # ("token", SHA-256 of the token) or ("cert", fingerprint)
State = Literal["off", "loading", "ready", "too large"]
PAGE_DEVICES = 5000  # devices a page: a page's rows are made holding the GIL (~20 ms)
STALE_SECONDS = 1800.0  # no read of the feed for this long: load again
CHANGES_KEPT_SECONDS = 3600.0  # the feed's retention (pruned by the maintenance round)


class DeviceDirectory:
    def __init__(
        self, max_entries: int, clock: Callable[[], float] = time.time, enabled: bool = True
    ) -> None:
        self.max_entries = max_entries
        self.state: State = "loading" if enabled and max_entries > 0 else "off"
        self._clock = clock  # certificates expire by wall-clock time (tests pass their own)
        # by the credential's digest (bytes take 65 bytes where the hex text took 113)
        self._tokens: dict[bytes, DeviceRow] = {}
        self._certs: dict[bytes, tuple[DeviceRow, float]] = {}  # and when each expires
        self._held: dict[int, tuple[bytes, ...]] = {}  # device id -> the digests held
        self.xmin: int | None = None  # the feed is read from this transaction on
        self.generation = 0  # bumped by every drop: a lookup begun before is not added
        self.read_at = 0.0  # when the feed was last read (monotonic)

    def __len__(self) -> int:
        return len(self._tokens) + len(self._certs)

    @property
    def serving(self) -> bool:
        return self.state == "ready"

    def get(self, key: Key) -> DeviceRow | None:
        """The device of this credential, if held and (a certificate) not expired."""
        if self.state != "ready":  # a page may be older than a change not yet read
            return None
        kind, value = key
        digest = _digest(value)
        if digest is None:
            return None
        if kind == "token":
            return self._tokens.get(digest)
        held = self._certs.get(digest)
        return held[0] if held is not None and held[1] >= self._clock() else None

    # -- filling ---------------------------------------------------------------------

    def begin_load(self, xmin: int) -> None:
        """A (re)load starts: what is held goes; the feed is read from ``xmin`` (taken
        before the first page), so a change no page saw is read by the next ``apply``."""
        self._tokens, self._certs, self._held = {}, {}, {}
        self.xmin = xmin
        self.generation += 1
        self.read_at = time.monotonic()
        self.state = "loading"

    def load_page(self, page: Mapping[Key, Credential]) -> bool:
        """Add a page of the load; False (and nothing held) once over ``max_entries``."""
        if len(self) + len(page) > self.max_entries:
            self._tokens, self._certs, self._held = {}, {}, {}
            self.state = "too large"
            log.warning(
                "device directory off: the fleet has more than %d active credentials "
                "(every check looks its device up in the database)",
                self.max_entries,
            )
            return False
        self._put(page)
        return True

    def loaded(self) -> None:
        self.state = "ready"

    def offer(self, found: Mapping[Key, Credential], generation: int) -> None:
        """Credentials a lookup found, begun at ``generation``: held unless a change was
        read since (the lookup may have read a device before its change)."""
        if self.state == "ready" and generation == self.generation:
            self._put(found)

    def _put(self, found: Mapping[Key, Credential]) -> None:
        rows: dict[DeviceRow, DeviceRow] = {}  # a device's token and certificates: one row
        for (kind, value), (row, expires) in found.items():
            if len(self) >= self.max_entries:
                return
            dev_id, hardware_id, group, failed, board = row
            # boards and groups repeat across the fleet: one string each
            row = (dev_id, hardware_id, sys.intern(group), failed, sys.intern(board))
            row = rows.setdefault(row, row)
            digest = _digest(value)
            if digest is None:
                continue
            if kind == "token":
                self._tokens[digest] = row
            elif expires is not None:
                self._certs[digest] = (row, expires)
            else:
                continue
            held = self._held.get(dev_id, ())
            if digest not in held:
                self._held[dev_id] = (*held, digest)

    # -- changes ---------------------------------------------------------------------

    def drop(self, device_ids: list[int]) -> None:
        """These devices changed (read from the feed): their credentials are looked up
        again at their next use, and lookups begun before the change are turned away."""
        self.generation += 1
        for dev_id in device_ids:
            for digest in self._held.pop(dev_id, ()):
                self._tokens.pop(digest, None)
                self._certs.pop(digest, None)

    def set_failed(self, device_id: int, release_id: int, failed: bool) -> None:
        """This release entered (``failed``) or left the device's failed releases: so in
        the device's row, if held. (Called for a report this process stored, a lookup
        begun before may hold the row as it was until the next read of the feed, which
        names the change and moves it again.)"""
        # Each lookup in these dicts of a million is a read of memory or two (~1 us): a
        # digest is a token's or a certificate's, so the certificates are asked only for one
        # that no token has, and a row already so is not written again.
        first: DeviceRow | None = None  # the device's credentials share one row: moved once
        moved: DeviceRow | None = None
        for digest in self._held.get(device_id, ()):
            token = self._tokens.get(digest)
            cert = self._certs.get(digest) if token is None else None
            row = token if token is not None else cert[0] if cert is not None else None
            if row is None or row[0] != device_id:
                continue
            new = (
                moved
                if row is first and moved is not None
                else _with_failed(row, release_id, failed)
            )
            first, moved = row, new
            if new is row:
                continue
            if token is not None:
                self._tokens[digest] = new
            elif cert is not None:
                self._certs[digest] = (new, cert[1])

    def apply(self, xmin: int, changes: list[DeviceChange]) -> None:
        """A read of the feed: drop the devices that changed, move the failed releases
        that changed; read from ``xmin`` next."""
        if changes:
            dropped = [device for device, release, _ in changes if release is None]
            self.drop(dropped)
            gone = set(dropped)
            for device, release, failed in changes:
                if release is not None and device not in gone:
                    self.set_failed(device, release, failed)
        self.xmin = xmin
        self.read_at = time.monotonic()

    def stale(self) -> bool:
        return self.xmin is not None and time.monotonic() - self.read_at > STALE_SECONDS

    def status(self) -> dict[str, object]:
        return {"state": self.state, "credentials": len(self)}


def _with_failed(row: DeviceRow, release_id: int, failed: bool) -> DeviceRow:
    dev_id, hardware_id, group, releases, board = row
    if (release_id in releases) == failed:
        return row
    moved = (*releases, release_id) if failed else tuple(r for r in releases if r != release_id)
    return (dev_id, hardware_id, group, tuple(sorted(moved)), board)


def _digest(value: str) -> bytes | None:
    """A credential's SHA-256 as bytes; None for text that is not hex (never held: a row
    of the database's that is not ours is looked up, and does not stop the load)."""
    try:
        return bytes.fromhex(value)
    except ValueError:
        return None
