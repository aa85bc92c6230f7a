"""The hot path's building blocks: the time-bounded cache and the lookup batcher."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Hashable

import pytest

from mpseal.server.batch import Batcher
from mpseal.server.cache import TtlCache


def test_concurrent_misses_share_one_load_and_an_entry_lives_exactly_ttl() -> None:
    async def go() -> None:
        now = [100.0]  # the cache's clock: moved by hand, so no margin depends on the machine
        cache: TtlCache[int] = TtlCache(ttl=5, clock=lambda: now[0])
        loads = 0
        release = asyncio.Event()

        async def load() -> int:
            nonlocal loads
            loads += 1
            await release.wait()  # every other caller arrives while this load is in flight
            return loads

        waiters = [asyncio.ensure_future(cache.get("k", load)) for _ in range(10)]
        await asyncio.sleep(0)
        release.set()
        assert await asyncio.gather(*waiters) == [1] * 10
        now[0] += 4.999
        assert await cache.get("k", load) == 1  # still fresh
        now[0] += 0.001
        assert await cache.get("k", load) == 2  # ttl reached: loaded again

    asyncio.run(go())


def test_invalidate_wins_over_a_load_in_flight() -> None:
    """A revocation during a lookup must not be undone by the lookup's stale answer."""

    async def go() -> None:
        cache: TtlCache[str] = TtlCache(ttl=60)
        gate = asyncio.Event()

        async def slow() -> str:
            await gate.wait()
            return "allowed (read before the revocation)"

        task = asyncio.create_task(cache.get("dev", slow))
        await asyncio.sleep(0)
        cache.invalidate()
        gate.set()
        await task

        async def fresh() -> str:
            return "revoked"

        assert await cache.get("dev", fresh) == "revoked"

    asyncio.run(go())


def test_an_entry_read_late_in_its_time_is_reloaded_before_it_expires() -> None:
    """refresh_ahead: a reader (get or peek) in the last half of an entry's time gets the
    held answer at once and starts one reload; the reloaded answer replaces it, so a key
    read all the time is never missing. A failed reload leaves the entry to expire."""

    async def go() -> None:
        now = [100.0]
        cache: TtlCache[int] = TtlCache(ttl=10, clock=lambda: now[0], refresh_ahead=0.5)
        loads = 0
        gate = asyncio.Event()
        gate.set()
        fail = False

        async def load() -> int:
            nonlocal loads
            loads += 1
            await gate.wait()
            if fail:
                raise ConnectionError("database gone")
            return loads

        assert await cache.get("k", load) == 1
        now[0] += 4.9  # first half of its time: read, not reloaded
        assert cache.peek("k") == (1,) and await cache.get("k", load) == 1
        await asyncio.sleep(0)
        assert loads == 1
        gate.clear()
        now[0] += 0.2  # second half: still the held answer, at once; one reload
        assert cache.peek("k") == (1,)
        assert await cache.get("k", load) == 1 and cache.peek("k") == (1,)
        await asyncio.sleep(0)
        assert loads == 2
        gate.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert cache.peek("k") == (2,)  # the reload's answer, in its own full time
        now[0] += 9.9
        assert cache.peek("k") == (2,)
        fail = True
        for _ in range(3):
            await asyncio.sleep(0)
        assert loads == 3 and cache.peek("k") == (2,)  # the failed reload changed nothing
        now[0] += 0.1
        assert cache.peek("k") is None  # expired as it would have
        with pytest.raises(ConnectionError):
            await cache.get("k", load)

    asyncio.run(go())


def test_a_reload_under_way_does_not_undo_an_invalidation() -> None:
    async def go() -> None:
        now = [0.0]
        cache: TtlCache[str] = TtlCache(ttl=10, clock=lambda: now[0], refresh_ahead=0.5)
        gate = asyncio.Event()
        answer = "allowed"

        async def load() -> str:
            await gate.wait()
            return answer

        gate.set()
        await cache.get("dev", load)
        gate.clear()
        now[0] = 6.0
        assert cache.peek("dev") == ("allowed",)  # a reload starts, reading before ...
        await asyncio.sleep(0)
        cache.invalidate("dev")  # ... the revocation
        answer = "revoked"
        gate.set()
        for _ in range(3):
            await asyncio.sleep(0)
        assert cache.peek("dev") is None
        assert await cache.get("dev", load) == "revoked"

    asyncio.run(go())


def test_cache_size_is_bounded() -> None:
    async def go() -> None:
        cache: TtlCache[int] = TtlCache(ttl=60, max_entries=100)
        for i in range(1000):

            async def load(i: int = i) -> int:
                return i

            await cache.get(i, load)
        assert len(cache._data) <= 100

    asyncio.run(go())


def test_cached_plain_tuples_leave_the_garbage_collector_at_its_first_pass() -> None:
    """A cache refilled at every check must not grow the older generations (long pauses):
    a value of strings and numbers is untracked by the first young collection."""

    async def go() -> None:
        cache: TtlCache[tuple[int, str, str, tuple[int, ...], str]] = TtlCache(ttl=60)
        for i in range(100):

            async def load(i: int = i) -> tuple[int, str, str, tuple[int, ...], str]:
                return (i, f"hw-{i}", "", (), "pico")

            await cache.get(("token", str(i)), load)
        gc.collect(0)
        assert not [v for v in cache._data.values() if gc.is_tracked(v)]

    asyncio.run(go())


def test_batcher_groups_concurrent_lookups_and_limits_batches_in_flight() -> None:
    async def go() -> None:
        batches: list[list[Hashable]] = []
        release = asyncio.Event()
        release.set()

        async def load(keys: list[Hashable]) -> dict[Hashable, str]:
            batches.append(keys)
            await release.wait()
            return {k: f"v{k}" for k in keys if k != 3}

        b: Batcher[str] = Batcher(load, max_inflight=1)
        first = await asyncio.gather(*(b.get(i) for i in range(5)))
        assert first == ["v0", "v1", "v2", None, "v4"] and batches == [[0, 1, 2, 3, 4]]
        # While one batch runs, new keys gather into the next one.
        release.clear()
        t1 = asyncio.ensure_future(b.get("a"))
        while len(batches) < 2:  # until the batch ["a"] is in flight (no timing margin)
            await asyncio.sleep(0)
        rest = [asyncio.ensure_future(b.get(k)) for k in ("b", "c", "b")]
        for _ in range(5):
            await asyncio.sleep(0)
        assert len(batches) == 2  # max_inflight=1: b and c wait for a
        release.set()
        assert await asyncio.gather(t1, *rest) == ["va", "vb", "vc", "vb"]
        assert batches[1:] == [["a"], ["b", "c"]]

    asyncio.run(go())


def test_batcher_passes_errors_to_every_waiter() -> None:
    async def go() -> None:
        async def load(keys: list[Hashable]) -> dict[Hashable, str]:
            raise ConnectionError("database gone")

        b: Batcher[str] = Batcher(load)
        results = await asyncio.gather(b.get(1), b.get(2), return_exceptions=True)
        assert all(isinstance(r, ConnectionError) for r in results)
        with pytest.raises(ConnectionError):
            await b.get(3)

    asyncio.run(go())


def test_batcher_cancelled_caller_leaves_the_shared_lookup_to_the_others() -> None:
    async def go() -> None:
        release = asyncio.Event()
        batches: list[list[Hashable]] = []

        async def load(keys: list[Hashable]) -> dict[Hashable, str]:
            batches.append(keys)
            await release.wait()
            return {k: f"v{k}" for k in keys}

        b: Batcher[str] = Batcher(load, max_inflight=1)
        gone = asyncio.ensure_future(b.get("k"))
        stays = asyncio.ensure_future(b.get("k"))
        while not batches:
            await asyncio.sleep(0)
        gone.cancel()
        release.set()
        assert await stays == "vk"
        assert gone.cancelled() and batches == [["k"]]  # one lookup for both callers
        assert await b.get("k") == "vk"  # and the key is asked again afterwards

    asyncio.run(go())
