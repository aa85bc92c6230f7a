"""The server's parts wired together, shared by the device and admin endpoints.

Blocking work (the database, signing, verifying uploads) runs in worker threads,
at most ``db_concurrency`` at once, so the event loop keeps answering.

Starting never needs the database: the schema is brought up to date, and the
maintenance rounds run, once it answers (pinged every ``health_seconds``). While it
is down, what needs it answers 503 with Retry-After, and what was cached (devices,
releases, timestamps) is served on from the cache.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import time
from collections.abc import Callable, Hashable
from functools import partial
from typing import TypeVar

import anyio
from anyio import to_thread

from mpseal.errors import TransportError
from mpseal.fleet.registry import Registry
from mpseal.fleet.releases import FAILED_EVENTS
from mpseal.fleet.releasestore import (
    Credential,
    DeviceRow,
    PolicyOverrides,
    ReleaseStore,
    Report,
    device_view,
)
from mpseal.fleet.rollout import DeviceView, ReleaseStats, ReleaseView, halt_reason
from mpseal.server.batch import Batcher, WriteBatcher, settle
from mpseal.server.cache import TtlCache
from mpseal.server.config import ServerConfig
from mpseal.server.directory import CHANGES_KEPT_SECONDS, PAGE_DEVICES, DeviceDirectory, Key
from mpseal.server.roots import RootStore
from mpseal.server.timestamps import CurrentTimestamp, TimestampService

log = logging.getLogger("mpseal.server")
# A report waits up to this long for others to share its statement (a statement costs the
# database and this process about 0.4 ms however few rows it has), unless REPORT_FULL are
# already waiting (a busy server sends full batches at once), and only while reports come
# at least REPORT_LINGER_RATE a second (a lone report on a quiet server is stored at once).
# Nothing waits on a report's answer but the device's next step, so its latency buys
# throughput: at ~280 reports/s a worker, 0.1 s makes batches of ~28 where 0.02 s made ~5;
# checks with 5 % failure reports read 85 - 88 % of checks alone against 81 % (200,000
# devices, runs alternated in one session; docs/updates.md, run 9). At ~600 reports/s a
# worker, 0.15 s and 64 against 0.1 s and 32: 87 - 89 % against 86 - 87 %, the database
# ~20 us less a report (run 20). (A worker with fewer than 64 reporters, each waiting for
# its answer before sending the next, waits out the 0.15 s each batch: 128 such
# connections sent ~7,500 reports/s, 512 sent 11,600; run 20.)
# The share of --cache-seconds before expiry from which a read of the channels' releases
# or timestamps reloads them (cache.py): twice the database reads of those few keys.
REFRESH_AHEAD = 0.5
REPORT_LINGER_SECONDS = 0.15
REPORT_FULL = 64
REPORT_LINGER_RATE = 20.0
INVENTORY_REFRESH_SECONDS = 60.0
# The inventory is written this many devices a statement: each chunk's rows are built in
# a worker thread that holds the GIL while it does, and the loop waits a switch interval
# for it each time; 1,000-row chunks kept the loop's longest stall during a flush at
# 25-50 ms where 5,000-row ones reached 40-110 ms (200,000 devices, lag sampled every 2 ms,
# 2 runs of 2 workers each).
INVENTORY_CHUNK = 1000
# A release this process saw halted is not re-examined on each failure report for this
# long: an admin may resume it through another server process, and then its new
# failures must be able to halt it again without waiting for a maintenance round.
HALTED_RECHECK_SECONDS = 5.0
T = TypeVar("T")


def _retrieved(done: asyncio.Future[None]) -> None:
    """A future's outcome read, so that a failure no one waits for is not logged as lost."""
    if not done.cancelled():
        done.exception()


class UpdateServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry = Registry.open(config.database_url, upgrade=False)  # connects lazily
        self.store = ReleaseStore(self.registry)
        self._report_writer = self.store.report_writer()  # PostgreSQL: from the event loop
        self.roots = RootStore(
            config.roots_dir, config.trust_root_file, ttl=max(config.cache_seconds, 0.05)
        )
        self.timestamps = TimestampService(
            self.store,
            self.roots,
            config.timestamp_signer,
            config.timestamp_expiry_seconds,
            config.refresh_before,
        )
        self.timestamps.check_key()
        config.artifacts_dir.mkdir(parents=True, exist_ok=True)
        n = config.limits.cache_entries_max
        ttl = config.cache_seconds
        stale = (TransportError,)
        self.devices: TtlCache[DeviceRow | None] = TtlCache(ttl, n, stale_on=stale)
        # Every active device's credentials, kept current from the database's feed of
        # changes (PostgreSQL): most checks need no lookup (directory.py).
        self.directory = DeviceDirectory(
            config.limits.directory_entries_max,
            # --cache-seconds 0: every device looked up on every call, as documented
            enabled=self.registry.engine.dialect.name == "postgresql" and ttl > 0,
        )
        # One lookup in flight per process: the checks arriving meanwhile gather into the
        # next one (larger batches: less cost per check in this process and the database).
        self._device_batches: Batcher[DeviceRow] = Batcher(self._load_devices, max_inflight=1)
        # Read by every check: reloaded before they expire (a check finding them expired
        # is answered through the app, which waits for the database).
        self.releases: TtlCache[list[ReleaseView]] = TtlCache(
            ttl, n, stale_on=stale, refresh_ahead=REFRESH_AHEAD
        )
        self.current_ts: TtlCache[CurrentTimestamp | None] = TtlCache(
            ttl, 1024, stale_on=stale, refresh_ahead=REFRESH_AHEAD
        )
        self._reports: WriteBatcher[Report, dict[int, tuple[ReleaseStats, PolicyOverrides]]] = (
            WriteBatcher(
                self._store_reports,
                linger=REPORT_LINGER_SECONDS,
                full=REPORT_FULL,
                linger_rate=REPORT_LINGER_RATE,
            )
        )
        # device id -> (app, version, counter, channel, unix time): to write / written (flat
        # tuples of strings and numbers: untracked by the garbage collector once it saw them)
        self._checkins: dict[int, tuple[str, str, int, str, float]] = {}
        self._written: dict[int, tuple[str, str, int, str, float]] = {}
        self._inventory_full = asyncio.Event()  # a chunk of the inventory waits to be written
        self._buckets: dict[int, tuple[float, float]] = {}  # device id -> (tokens, at)
        self._halted: dict[int, float] = {}  # release id -> when seen halted (monotonic)
        self._limiter: anyio.CapacityLimiter | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._halting: set[asyncio.Task[bool]] = set()  # reports' halting decisions under way
        self.schema_ready = not config.migrate
        self.db_up: bool | None = None  # None: not known yet
        self._db_error = ""
        self._last_logged = 0.0
        self.checks_at_once = 0  # checks answered in the protocol (device_api.check_now)
        self.reports_at_once = 0  # reports taken in the protocol (device_api.report_now)

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking ``fn(*args)`` in a worker thread."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.db_concurrency)
        try:
            return await to_thread.run_sync(partial(fn, *args), limiter=self._limiter)
        except TransportError as e:
            self.database_failed(str(e))
            raise

    def database_failed(self, why: str) -> None:
        """Note the database is unusable; logged at most once per 10 s."""
        was = self.db_up
        self.db_up = False
        self._db_error = why
        now = time.monotonic()
        if was is not False or now - self._last_logged > 10:
            self._last_logged = now
            log.error("database unavailable, answering 503 for what needs it: %s", why)

    async def ping(self) -> bool:
        try:
            await self.run(self.store.ping)
        except TransportError:
            return False
        if self.db_up is False:
            log.warning("database reachable again")
        self.db_up = True
        return True

    async def ensure_schema(self) -> bool:
        if not self.schema_ready:
            try:
                await self.run(self.registry.upgrade)
            except TransportError:
                return False
            self.schema_ready = True
        return True

    # -- cached reads for the hot path -------------------------------------------------

    async def device(self, kind: str, value: str) -> DeviceView | None:
        """The active device with this credential: from the directory, else cached, else
        batched with other lookups."""
        key = (kind, value)
        found = self.directory.get(key)
        if found is None:
            found = await self.devices.get(key, lambda: self._device_batches.get(key))
        return None if found is None else device_view(found)

    def device_now(self, kind: str, value: str) -> DeviceView | None:
        """The active device with this credential if this process holds it (directory or
        cache); None when only a lookup could say (or it is revoked or unknown)."""
        key = (kind, value)
        found = self.directory.get(key)
        if found is None:
            held = self.devices.peek(key)
            if held is None or held[0] is None:
                return None
            found = held[0]
        return device_view(found)

    async def _load_devices(self, keys: list[Hashable]) -> dict[tuple[str, str], DeviceRow]:
        pairs = [key for key in keys if isinstance(key, tuple)]
        tokens = [str(v) for k, v in pairs if k == "token"]
        fingerprints = [str(v) for k, v in pairs if k == "cert"]
        generation = self.directory.generation
        found: dict[Key, Credential] = await self.run(
            partial(self.store.credential_rows, tokens, fingerprints)
        )
        self.directory.offer(found, generation)
        # cached as the store makes them (DeviceRow): the view is built on each use (~1 us)
        now = time.time()
        return {
            key: row for key, (row, expires) in found.items() if expires is None or expires >= now
        }

    async def devices_changed(self) -> None:
        """Devices changed through this process (a revocation, a group): forgotten here at
        once (the other processes read the change from the database within
        ``cache_seconds``)."""
        self.devices.invalidate()
        if self.directory.serving:
            try:
                await self._read_changes()
            except Exception:  # noqa: BLE001 - the change is stored: its caller must not fail
                log.warning("device directory: changes unread, loading it again")
                self.directory.begin_load(0)  # nothing held is trusted until then

    async def _read_changes(self) -> None:
        xmin, changed = await self.run(self.store.device_changes, self.directory.xmin)
        self.directory.apply(xmin, changed)
        if changed:  # the cache of lookups is keyed by credential: all of it
            self.devices.invalidate()

    async def _load_directory(self) -> None:
        directory = self.directory
        started = time.monotonic()
        xmin, _ = await self.run(self.store.device_changes, None)
        directory.begin_load(xmin)
        after: int | None = 0
        while after is not None:
            page, after = await self.run(self.store.directory_page, after, PAGE_DEVICES)
            if not directory.load_page(page):
                return
        await self._read_changes()  # what changed while the pages were read
        directory.loaded()
        # Millions of rows that live as long as the process: out of the collector's way
        # (a full collection would otherwise traverse them all, a pause in the p99).
        gc.freeze()
        log.info(
            "device directory: %d credentials loaded in %.1f s",
            len(directory),
            time.monotonic() - started,
        )

    async def channel_releases(self, channel: str, app: str, board: str) -> list[ReleaseView]:
        """The channel's releases for this app ("": every app) and board, cached."""
        return await self.releases.get(
            (channel, app, board), lambda: self.run(self.store.views, channel, app or None, board)
        )

    async def timestamp(self, channel: str) -> CurrentTimestamp | None:
        create = channel == self.config.default_channel
        return await self.current_ts.get(
            channel, lambda: self.run(self.timestamps.current, channel, create)
        )

    def channel_releases_now(
        self, channel: str, app: str, board: str
    ) -> tuple[list[ReleaseView]] | None:
        """``(releases,)`` as ``channel_releases`` if cached and current, else None."""
        return self.releases.peek((channel, app, board))

    def timestamp_now(self, channel: str) -> tuple[CurrentTimestamp | None] | None:
        """``(timestamp,)`` as ``timestamp`` if cached and current, else None."""
        return self.current_ts.peek(channel)

    # -- reports and check-ins ---------------------------------------------------------

    def report_wait(self, device_id: int) -> float:
        """0 if this device may report now (a token taken), else seconds until it may."""
        limits = self.config.limits
        rate = limits.report_rate_per_minute / 60.0
        burst = float(limits.report_burst)
        now = time.monotonic()
        tokens, at = self._buckets.get(device_id, (burst, now))
        tokens = min(burst, tokens + (now - at) * rate)
        if tokens < 1.0:
            self._buckets[device_id] = (tokens, now)
            return (1.0 - tokens) / rate if rate > 0 else 3600.0
        self._buckets[device_id] = (tokens - 1.0, now)
        if len(self._buckets) > limits.cache_entries_max:  # forget the ones refilled anyway
            self._buckets = {
                k: v for k, v in self._buckets.items() if v[0] + (now - v[1]) * rate < burst
            }
            if len(self._buckets) > limits.cache_entries_max:
                self._buckets.clear()
        return 0.0

    async def _store_reports(
        self, reports: list[Report]
    ) -> dict[int, tuple[ReleaseStats, PolicyOverrides]]:
        if self._report_writer is None:
            counts = await self.run(self.store.record_reports, reports)
        else:
            try:
                counts = await self._report_writer.record_reports(reports)
            except TransportError as e:
                self.database_failed(str(e))
                raise
        # Each device's last report of a release is its stored state: a failed release is
        # not offered again by this process from now on (the others read it from the feed).
        final = {(r.device_id, r.release_id): r.event for r in reports}
        for (device, release), event in final.items():
            if release is not None:
                self.directory.set_failed(device, release, event in FAILED_EVENTS)
        return counts

    async def report(self, report: Report) -> None:
        """Store a report (returns once committed); halt its release if it must."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.report_later(report, partial(settle, done, None))
        try:
            await asyncio.shield(done)  # a caller cancelled: stored anyway
        except asyncio.CancelledError:
            done.add_done_callback(_retrieved)  # its outcome has no one to go to
            raise

    def report_later(self, report: Report, then: Callable[[BaseException | None], None]) -> None:
        """``report`` with no task and no future of its own: ``then(None)`` once stored (its
        release halted if it must), ``then(error)`` if not, called as its batch ends (a
        task for a report cost the event loop a turn of its own, and a future a turn more,
        which slowed the checks beside them); a task only to halt a release."""

        def stored(
            counts: dict[int, tuple[ReleaseStats, PolicyOverrides]] | None,
            error: BaseException | None,
        ) -> None:
            if error is not None:  # not stored (or the server stopping under it)
                then(error)
                return
            halt = self._stored(report, counts or {})
            if halt is None:
                then(None)
                return
            task = asyncio.ensure_future(self._halt(*halt))
            self._halting.add(task)  # held: the loop keeps only weak references
            task.add_done_callback(partial(self._halted_then, then))

        self._reports.submit_then(report, stored)

    def _halted_then(
        self, then: Callable[[BaseException | None], None], task: asyncio.Task[bool]
    ) -> None:
        self._halting.discard(task)
        then(asyncio.CancelledError() if task.cancelled() else task.exception())

    def _stored(
        self, report: Report, counts: dict[int, tuple[ReleaseStats, PolicyOverrides]]
    ) -> tuple[int, str] | None:
        """The release to halt and why, if a stored report must halt it (decided here: a
        task only for a halt, not for every failure report)."""
        rid = report.release_id
        if rid is not None and report.event in FAILED_EVENTS and not self._seen_halted(rid):
            entry = counts.get(rid)
            if entry is not None:
                reason = self._halt_reason(*entry)
                if reason is not None:
                    return rid, reason
        return None

    def note_checkin(
        self, device_id: int, app: str, version: str, counter: int, channel: str
    ) -> None:
        """Remember a check for the inventory (written every ``inventory_seconds``). A
        device that says the same as when this process last wrote its row, less than
        ``INVENTORY_REFRESH_SECONDS`` ago, is not written again: its last check-in is
        exact to that (a fleet polling every few seconds costs no write per check)."""
        now = time.time()
        seen = self._written.get(device_id)
        if (
            seen is not None
            and now - seen[4] < INVENTORY_REFRESH_SECONDS
            and seen[0] == app
            and seen[1] == version
            and seen[2] == counter
            and seen[3] == channel
        ):
            return
        if (
            len(self._checkins) >= self.config.limits.cache_entries_max
            and device_id not in self._checkins
        ):
            return  # the next check after the flush records it
        self._checkins[device_id] = (app, version, counter, channel, now)
        if len(self._checkins) >= INVENTORY_CHUNK:
            self._inventory_full.set()

    async def flush_checkins(self) -> None:
        """Write the check-ins noted since the last flush (a device's last report is written
        with the report). The rows are built in the worker thread, not on the event loop:
        building a chunk's rows on the loop stalled every request meanwhile."""
        pending, self._checkins = self._checkins, {}
        entries = list(pending.items())
        try:
            for i in range(0, len(entries), INVENTORY_CHUNK):
                chunk = entries[i : i + INVENTORY_CHUNK]
                await self.run(self._write_checkins, chunk)
                if len(self._written) > self.config.limits.cache_entries_max:
                    self._written.clear()
                self._written.update(chunk)
        except TransportError:
            self._requeue(self._checkins, pending)
            raise

    def _write_checkins(self, entries: list[tuple[int, tuple[str, str, int, str, float]]]) -> None:
        self.store.record_checkin_rows(entries)

    def _requeue(self, into: dict[int, T], unwritten: dict[int, T]) -> None:
        """Keep inventory entries the database did not take for the next flush (entries
        noted since win; bounded like the rest of the in-memory state)."""
        for d, entry in unwritten.items():
            if len(into) < self.config.limits.cache_entries_max:
                into.setdefault(d, entry)

    # -- changes -----------------------------------------------------------------------

    async def changed(self, channel: str) -> None:
        """A rollout changed: re-sign the channel's timestamp, drop cached answers."""
        await self.run(self.timestamps.refresh, channel)
        self.releases.invalidate()
        self.current_ts.invalidate()

    async def maybe_halt(
        self, release_id: int, stats: ReleaseStats, overrides: PolicyOverrides
    ) -> bool:
        """Halt the release if its failures crossed its policy's limit; True if it did now."""
        reason = self._halt_reason(stats, overrides)
        return reason is not None and await self._halt(release_id, reason)

    def _halt_reason(self, stats: ReleaseStats, overrides: PolicyOverrides) -> str | None:
        return halt_reason(stats, overrides.apply(self.config.halt_policy))

    async def _halt(self, release_id: int, reason: str) -> bool:
        """Halt the release for ``reason``; True if it did now (not already halted)."""
        self._halted[release_id] = time.monotonic()
        if not await self.run(self.store.halt, release_id, reason):
            return False
        info = await self.run(self.store.get, release_id)
        log.warning(
            "release %d (%s %s) halted: %s", release_id, info.view.app, info.view.version, reason
        )
        from mpseal.server import actions  # the audit log (actions imports this module)

        await actions.halted(self, info, reason)
        await self.changed(info.view.channel)
        return True

    def resumed(self, release_id: int) -> None:
        """An admin resumed a halted release: its reports may halt it again (counted from
        the resume; other server processes look again within HALTED_RECHECK_SECONDS)."""
        self._halted.pop(release_id, None)

    def _seen_halted(self, release_id: int) -> bool:
        at = self._halted.get(release_id)
        return at is not None and time.monotonic() - at < HALTED_RECHECK_SECONDS

    async def sync_roots(self) -> None:
        """Share trust roots with the other servers through the database (see roots.py)."""
        local = await self.run(self.roots.local_roots)
        stored = await self.run(self.store.share_roots, local)
        newest = self.roots.adopt(stored)
        if newest is not None:
            log.warning(
                "trust root %d adopted from the database (stored by another server)", newest.version
            )
            self.current_ts.invalidate()

    async def maintain(self) -> None:
        """Share trust roots; time out overdue trials and halt what must halt; keep every
        channel's timestamp fresh; delete events past their retention."""
        await self.sync_roots()
        policy = self.config.halt_policy
        while await self.run(self.store.sweep_trials, policy.trial_window_seconds) >= 5000:
            pass
        infos = await self.run(self.store.releases, None)
        for info in infos:
            if info.view.state == "halted":
                self._halted[info.view.id] = time.monotonic()
            else:
                self._halted.pop(info.view.id, None)  # resumed (maybe through another server)
                await self.maybe_halt(info.view.id, info.stats, info.overrides)
        channels = {self.config.default_channel, *(i.view.channel for i in infos)}
        for channel in sorted(channels):
            rec = await self.run(self.timestamps.refresh, channel)
            # A timestamp re-signed (here or by another server) is served from now on; one
            # held as it is stays held: a check finds it and is answered in the protocol
            # (dropping every channel each round sent the checks of the next milliseconds
            # through the app, to wait for the reload).
            held = self.current_ts.peek(channel)
            if held is None or held[0] is None or held[0].version != rec.version:
                self.current_ts.invalidate(channel)
        for _ in range(20):  # at most 200,000 a round: the rest next round
            if await self.run(self.store.prune_events, self.config.event_retention_days) < 10_000:
                break
        await self.run(self.store.prune_device_changes, CHANGES_KEPT_SECONDS)

    # -- lifespan ----------------------------------------------------------------------

    async def start(self) -> None:
        """Never fails for the database: what needs it waits until it answers."""
        maintained = False
        if await self.ping() and await self.ensure_schema():
            try:
                await self.maintain()
                maintained = True
            except Exception:
                log.exception("first maintenance round failed")
        else:
            log.error(
                "starting without the database (%s); retrying every %g s",
                self._db_error,
                self.config.health_seconds,
            )
        # What exists now lives as long as the process: keep it out of every collection,
        # and collect young objects less often (fewer pauses in a request's latency).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        self._tasks = [
            asyncio.create_task(self._loop(maintained)),
            asyncio.create_task(self._inventory_loop()),
            asyncio.create_task(self._directory_loop()),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
            try:
                await task
            except asyncio.CancelledError:
                pass
        try:
            await self.flush_checkins()
        except Exception:  # noqa: BLE001 - the inventory is best effort at shutdown
            log.warning("inventory of the last %g s not written", self.config.inventory_seconds)
        if self._report_writer is not None:
            await self._report_writer.close()
        self.store.close()
        self.registry.engine.dispose()

    async def _loop(self, maintained: bool) -> None:
        next_round = time.monotonic() + (self.config.maintenance_seconds if maintained else 0)
        while True:
            await asyncio.sleep(
                min(self.config.health_seconds, max(0.05, next_round - time.monotonic()))
            )
            if not await self.ping() or not await self.ensure_schema():
                continue
            if time.monotonic() < next_round:
                continue
            started = time.monotonic()
            try:
                await self.maintain()
                next_round = started + self.config.maintenance_seconds
            except Exception:  # keep serving; the next round tries again
                log.exception("maintenance round failed")
                next_round = started + self.config.health_seconds
            log.debug("maintenance took %.3f s", time.monotonic() - started)

    async def _directory_loop(self) -> None:
        """Load the device directory once the database answers, then read its changes
        every ``cache_seconds`` (the bound on a revocation's delay); load it again after
        a long outage (the feed keeps changes for an hour)."""
        directory = self.directory
        while directory.state in ("loading", "ready"):
            try:
                if self.db_up and self.schema_ready:
                    if directory.state == "loading" or directory.stale():
                        await self._load_directory()
                    else:
                        await self._read_changes()
            except TransportError:
                pass  # logged by run(); served from what is held, or looked up
            except Exception:
                log.exception("device directory: reading the database failed")
            await asyncio.sleep(self.config.cache_seconds)

    async def _inventory_loop(self) -> None:
        """Write the inventory once a chunk of it is noted, else every ``inventory_seconds``:
        under load a steady stream of chunk-sized writes, not all of the last seconds' in
        one burst (which took the workers' threads and the database from the requests
        for a good part of a second every few seconds)."""
        full = self._inventory_full
        while True:
            try:
                await asyncio.wait_for(full.wait(), self.config.inventory_seconds)
            except TimeoutError:
                pass
            full.clear()
            try:
                await self.flush_checkins()
            except TransportError:
                pass  # logged by run(); kept for the next round
            except Exception:
                log.exception("writing the inventory failed")
