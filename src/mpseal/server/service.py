"""The server's parts wired together, shared by the device and admin endpoints.

Blocking work (the database, signing, verifying uploads) runs in worker threads,
at most ``db_concurrency`` at once, so the event loop keeps answering.
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

from mpseal.fleet.registry import Registry
from mpseal.fleet.releasestore import ReleaseStore
from mpseal.fleet.rollout import DeviceView, ReleaseView, halt_reason
from mpseal.server.batch import Batcher
from mpseal.server.cache import TtlCache
from mpseal.server.config import ServerConfig
from mpseal.server.roots import RootStore
from mpseal.server.timestamps import CurrentTimestamp, TimestampService

log = logging.getLogger("mpseal.server")
T = TypeVar("T")


class UpdateServer:
    def __init__(self, config: ServerConfig) -> None:
        self.config = config
        self.registry = Registry.open(config.database_url, upgrade=config.migrate)
        self.store = ReleaseStore(self.registry)
        self.roots = RootStore(config.roots_dir, config.trust_root_file,
                               ttl=max(config.cache_seconds, 0.05))
        self.timestamps = TimestampService(self.store, self.roots, config.timestamp_signer,
                                           config.timestamp_expiry_seconds,
                                           config.refresh_before)
        self.timestamps.check_key()
        config.artifacts_dir.mkdir(parents=True, exist_ok=True)
        n = config.limits.cache_entries_max
        ttl = config.cache_seconds
        self.devices: TtlCache[DeviceView | None] = TtlCache(ttl, n)
        self._device_batches: Batcher[DeviceView] = Batcher(self._load_devices)
        self.releases: TtlCache[list[ReleaseView]] = TtlCache(ttl, n)
        self.current_ts: TtlCache[CurrentTimestamp | None] = TtlCache(ttl, 1024)
        self._limiter: anyio.CapacityLimiter | None = None
        self._task: asyncio.Task[None] | None = None

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run blocking ``fn(*args)`` in a worker thread."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.config.db_concurrency)
        return await to_thread.run_sync(partial(fn, *args), limiter=self._limiter)

    # -- cached reads for the hot path -------------------------------------------------

    async def device(self, kind: str, value: str) -> DeviceView | None:
        """The active device with this credential: cached, else batched with other lookups."""
        key = (kind, value)
        return await self.devices.get(key, lambda: self._device_batches.get(key))

    async def _load_devices(self, keys: list[Hashable]) -> dict[Hashable, DeviceView]:
        pairs = [key for key in keys if isinstance(key, tuple)]
        tokens = [str(v) for k, v in pairs if k == "token"]
        fingerprints = [str(v) for k, v in pairs if k == "cert"]
        found = await self.run(partial(self.store.devices, tokens, fingerprints))
        return {key: view for key, view in found.items()}

    async def channel_releases(self, channel: str, app: str, board: str) -> list[ReleaseView]:
        return await self.releases.get(
            (channel, app, board), lambda: self.run(self.store.views, channel, app, board))

    async def timestamp(self, channel: str) -> CurrentTimestamp | None:
        create = channel == self.config.default_channel
        return await self.current_ts.get(
            channel, lambda: self.run(self.timestamps.current, channel, create))

    # -- changes -----------------------------------------------------------------------

    async def changed(self, channel: str) -> None:
        """A rollout changed: re-sign the channel's timestamp, drop cached answers."""
        await self.run(self.timestamps.refresh, channel)
        self.releases.invalidate()
        self.current_ts.invalidate()

    async def check_halt(self, release_id: int) -> bool:
        """Halt the release if its failures crossed the policy's limit; True if it did now."""
        policy = self.config.halt_policy
        stats = (await self.run(self.store.stats, [release_id], policy)).get(release_id)
        reason = halt_reason(stats, policy) if stats else None
        if reason is None or not await self.run(self.store.halt, release_id, reason):
            return False
        info = await self.run(self.store.get, release_id)
        log.warning("release %d (%s %s) halted: %s", release_id, info.view.app,
                    info.view.version, reason)
        await self.changed(info.view.channel)
        return True

    async def maintain(self) -> None:
        """Halt releases whose trials timed out; keep every channel's timestamp fresh."""
        policy = self.config.halt_policy
        infos = await self.run(self.store.releases, None, policy)
        for info in infos:
            if info.view.state != "halted" and halt_reason(info.stats, policy):
                await self.check_halt(info.view.id)
        channels = {self.config.default_channel, *(i.view.channel for i in infos)}
        for channel in sorted(channels):
            await self.run(self.timestamps.refresh, channel)
        self.current_ts.invalidate()

    # -- lifespan ----------------------------------------------------------------------

    async def start(self) -> None:
        await self.maintain()
        # What exists now lives as long as the process: keep it out of every collection,
        # and collect young objects less often (fewer pauses in a request's latency).
        gc.collect()
        gc.freeze()
        gc.set_threshold(20_000, 10, 10)
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
        self.store.close()
        self.registry.engine.dispose()

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.maintenance_seconds)
            started = time.monotonic()
            try:
                await self.maintain()
            except Exception:  # keep serving; the next round tries again
                log.exception("maintenance round failed")
            log.debug("maintenance took %.3f s", time.monotonic() - started)
