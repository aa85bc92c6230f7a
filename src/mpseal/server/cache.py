"""A small time-bounded cache for the hot path, with one loader per key at a time.

Entries live ``ttl`` seconds (monotonic clock): that is the bound on how stale an
answer may be (a revocation reaches every server process within it). Concurrent
misses for one key share one load. The size is bounded: when full, expired entries go,
then the oldest half. With ``stale_on`` errors (the database is down), the last
answer for a key is served past its time rather than failing.

With ``refresh_ahead``, a read of an entry in the last part of its time (that share of
``ttl``) also starts its reload in the background, the last loader given for the key
reading it again: a key read all the time is reloaded before it expires, so its readers
never find it missing (a check that finds the channel's releases or timestamp expired
is answered through the app, which waits for the reload: one device checking every 10
ms against 0.2 s entries had 9 checks of 165 answered so). The bound on staleness stays
``ttl``; an entry that expires while its reload is under way is missing as before.

Values and their expiry times are kept in two dicts, not as ``(expiry, value)`` pairs: a
value that is a tuple of strings and numbers then leaves the garbage collector's lists at
the first collection it survives (a pair made after its value is untracked only by a
later, older-generation collection: with thousands of devices cached per second, that
made each gen-1 collection traverse ~70,000 pairs, 80-110 ms pauses in the p99).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Awaitable, Callable, Hashable
from typing import Generic, TypeVar

V = TypeVar("V")


class TtlCache(Generic[V]):
    def __init__(
        self,
        ttl: float,
        max_entries: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
        stale_on: tuple[type[BaseException], ...] = (),
        refresh_ahead: float = 0.0,
    ) -> None:
        self.ttl = ttl
        self._ahead = ttl * refresh_ahead  # seconds before expiry a read reloads an entry
        self._loaders: dict[Hashable, Callable[[], Awaitable[V]]] = {}  # with refresh_ahead
        self._tasks: set[asyncio.Task[None]] = set()  # reloads under way (held: weak refs)
        self._clock = clock  # a test passes its own, so expiry needs no real waiting
        self.stale_on = stale_on
        self.max_entries = max_entries
        self._data: dict[Hashable, V] = {}
        self._expires: dict[Hashable, float] = {}  # the same keys: when each value expires
        self._loading: dict[Hashable, asyncio.Future[V]] = {}
        self._generation = 0  # bumped by invalidate(): a load begun before is not cached
        self._dropped: set[Hashable] = set()  # invalidate(key) while that key was loading

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        held = self._held(key, load)
        if held is not None:
            return held[0]
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        return await self._fill(key, load, self._begin(key))

    def _begin(self, key: Hashable) -> tuple[asyncio.Future[V], int]:
        """A load of ``key`` is under way from now: its readers wait on this future."""
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        return fut, self._generation

    async def _fill(
        self, key: Hashable, load: Callable[[], Awaitable[V]], begun: tuple[asyncio.Future[V], int]
    ) -> V:
        """Load ``key`` and keep the answer (unless invalidated since the load began)."""
        fut, generation = begun
        stale = (self._data[key],) if key in self._expires else None  # served if down
        if self._ahead:
            self._loaders[key] = load
        try:
            value = await load()
        except BaseException as e:
            if stale is not None and isinstance(e, self.stale_on):
                fut.set_result(stale[0])
                return stale[0]
            fut.set_exception(e)
            fut.exception()  # retrieved: no "never retrieved" warning when nobody waits
            raise
        else:
            fut.set_result(value)
            if generation == self._generation and key not in self._dropped:
                self._put(key, value, self._clock())
            return value
        finally:
            del self._loading[key]
            self._dropped.discard(key)

    def _refresh(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> None:
        """Reload a held entry in the background, unless a load of it is under way. A
        failed reload leaves the entry to expire (its next reader loads it again)."""
        if key in self._loading:
            return
        begun = self._begin(key)

        async def reload() -> None:
            with contextlib.suppress(Exception):
                await self._fill(key, load, begun)

        task = asyncio.ensure_future(reload())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def peek(self, key: Hashable) -> tuple[V] | None:
        """``(value,)`` if this key holds an answer still in its time, else None (the
        caller that cannot wait for a load takes its slower path, which loads it)."""
        return self._held(key, self._loaders.get(key))

    def _held(self, key: Hashable, load: Callable[[], Awaitable[V]] | None) -> tuple[V] | None:
        """``(value,)`` if this key holds an answer still in its time, else None; a read in
        the last part of that time also starts its reload with ``load`` (refresh_ahead)."""
        expires = self._expires.get(key)
        if expires is None:
            return None
        left = expires - self._clock()
        if left <= 0:
            return None
        if left < self._ahead and load is not None:
            self._refresh(key, load)
        return (self._data[key],)

    def _put(self, key: Hashable, value: V, now: float) -> None:
        if len(self._data) >= self.max_entries and key not in self._data:
            self._expires = {k: t for k, t in self._expires.items() if t > now}
            if len(self._expires) >= self.max_entries:
                keep = list(self._expires.items())[len(self._expires) // 2 :]
                self._expires = dict(keep)
            data, loaders = self._data, self._loaders
            self._data = {k: data[k] for k in self._expires}
            self._loaders = {k: loaders[k] for k in self._expires if k in loaders}
        self._expires.pop(key, None)  # to the end: the order is the insertion order
        self._expires[key] = now + self.ttl
        self._data[key] = value

    def invalidate(self, key: Hashable | None = None) -> None:
        """Drop one key (a load of it under way is not cached) or everything."""
        if key is None:
            self._generation += 1
            self._data.clear()
            self._expires.clear()
            self._loaders.clear()
        else:
            self._data.pop(key, None)
            self._expires.pop(key, None)
            self._loaders.pop(key, None)
            if key in self._loading:
                self._dropped.add(key)
