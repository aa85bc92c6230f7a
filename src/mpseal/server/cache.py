"""A small time-bounded cache for the hot path, with one loader per key at a time.

Entries live ``ttl`` seconds (monotonic clock): that is the bound on how stale an
answer may be (a revocation reaches every server process within it). Concurrent
misses for one key share one load. The size is bounded: when full, expired entries go,
then the oldest half. With ``stale_on`` errors (the database is down), the last
answer for a key is served past its time rather than failing.

Values and their expiry times are kept in two dicts, not as ``(expiry, value)`` pairs: a
value that is a tuple of strings and numbers then leaves the garbage collector's lists at
the first collection it survives (a pair made after its value is untracked only by a
later, older-generation collection: with thousands of devices cached per second, that
made each gen-1 collection traverse ~70,000 pairs, 80-110 ms pauses in the p99).
"""

from __future__ import annotations

import asyncio
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
    ) -> None:
        self.ttl = ttl
        self._clock = clock  # a test passes its own, so expiry needs no real waiting
        self.stale_on = stale_on
        self.max_entries = max_entries
        self._data: dict[Hashable, V] = {}
        self._expires: dict[Hashable, float] = {}  # the same keys: when each value expires
        self._loading: dict[Hashable, asyncio.Future[V]] = {}
        self._generation = 0  # bumped by invalidate(): a load begun before is not cached
        self._dropped: set[Hashable] = set()  # invalidate(key) while that key was loading

    async def get(self, key: Hashable, load: Callable[[], Awaitable[V]]) -> V:
        expires = self._expires.get(key)
        if expires is not None and expires > self._clock():
            return self._data[key]
        stale = (self._data[key],) if expires is not None else None  # served if down
        pending = self._loading.get(key)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[V] = asyncio.get_running_loop().create_future()
        self._loading[key] = fut
        generation = self._generation
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

    def peek(self, key: Hashable) -> tuple[V] | None:
        """``(value,)`` if this key holds an answer still in its time, else None (the
        caller that cannot wait for a load takes its slower path, which loads it)."""
        expires = self._expires.get(key)
        if expires is not None and expires > self._clock():
            return (self._data[key],)
        return None

    def _put(self, key: Hashable, value: V, now: float) -> None:
        if len(self._data) >= self.max_entries and key not in self._data:
            self._expires = {k: t for k, t in self._expires.items() if t > now}
            if len(self._expires) >= self.max_entries:
                keep = list(self._expires.items())[len(self._expires) // 2 :]
                self._expires = dict(keep)
            data = self._data
            self._data = {k: data[k] for k in self._expires}
        self._expires.pop(key, None)  # to the end: the order is the insertion order
        self._expires[key] = now + self.ttl
        self._data[key] = value

    def invalidate(self, key: Hashable | None = None) -> None:
        """Drop one key (a load of it under way is not cached) or everything."""
        if key is None:
            self._generation += 1
            self._data.clear()
            self._expires.clear()
        else:
            self._data.pop(key, None)
            self._expires.pop(key, None)
            if key in self._loading:
                self._dropped.add(key)
