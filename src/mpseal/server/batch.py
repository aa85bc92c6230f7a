"""Device lookups that arrive together go to the database together.

Under load many devices check in the same event-loop turn. Each lookup waits on a
future; one flush per turn sends every pending key to the database in one worker
thread (an indexed ``IN`` query), and while ``max_inflight`` batches are running new
keys gather into the next one, so batches grow exactly when the database is busy.
Each check still costs one indexed device lookup, without a thread hop of its own.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Hashable, Mapping
from functools import partial
from typing import Any, Generic, TypeVar

V = TypeVar("V")
T = TypeVar("T")
R = TypeVar("R")
Loader = Callable[[list[Hashable]], Awaitable[Mapping[Any, V]]]  # found keys: their values
# what a submitter hears once its item's batch ends: (the batch's result, None) or (None, error)
Then = Callable[[R | None, BaseException | None], None]

log = logging.getLogger("mpseal.server")


class Batcher(Generic[V]):
    def __init__(self, load: Loader[V], max_inflight: int = 2) -> None:
        self._load = load
        self._max_inflight = max_inflight
        self._pending: dict[Hashable, asyncio.Future[V | None]] = {}
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs

    async def get(self, key: Hashable) -> V | None:
        fut = self._pending.get(key)
        if fut is None:
            fut = asyncio.get_running_loop().create_future()
            self._pending[key] = fut
            self._schedule()
        # A cancelled caller must not cancel the lookup other callers share.
        return await asyncio.shield(fut)

    def _schedule(self) -> None:
        if not self._scheduled and self._inflight < self._max_inflight and self._pending:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        batch, self._pending = self._pending, {}
        if batch:
            self._inflight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _run(self, batch: dict[Hashable, asyncio.Future[V | None]]) -> None:
        try:
            found = await self._load(list(batch))
        except BaseException as e:
            for fut in batch.values():
                if not fut.done():
                    fut.set_exception(e)
                    fut.exception()  # retrieved: no warning if every waiter went away
            if not isinstance(e, Exception):
                raise
        else:
            for key, fut in batch.items():
                if not fut.done():
                    fut.set_result(found.get(key))
        finally:
            self._inflight -= 1
            self._schedule()


class WriteBatcher(Generic[T, R]):
    """Writes that arrive together are stored together, in one transaction.

    ``submit(item)`` returns once the batch holding ``item`` is committed (so an answer
    sent after it is about stored data), with what ``store`` returned for the batch; a
    failed batch fails every submitter. While ``max_inflight`` batches run, new items
    gather into the next one, and a batch holds at most ``max_batch`` items. With a
    ``linger``, a batch waits up to that long from its oldest item for more, unless ``full``
    items are already waiting: fewer, larger statements when reports trickle in. With
    ``linger_rate``, it waits only while items came at least that fast in the last second
    or more (a lone item on a quiet server goes at once: no company would come).
    """

    def __init__(
        self,
        store: Callable[[list[T]], Awaitable[R]],
        max_inflight: int = 2,
        max_batch: int = 500,
        linger: float = 0.0,
        full: int = 32,
        linger_rate: float = 0.0,
    ) -> None:
        self._store = store
        self._max_inflight = max_inflight
        self._max_batch = max_batch
        self._linger = linger
        self._full = min(full, max_batch)
        self._linger_rate = linger_rate
        self._rate = 0.0  # items per second over the last whole window (>= 1 s)
        self._window = (0.0, 0)  # (when the current window began, items in it)
        self._timer: asyncio.TimerHandle | None = None  # a lingering flush
        self._since = 0.0  # when the oldest pending item came (loop time)
        self._pending: list[tuple[T, Then[R]]] = []
        self._scheduled = False
        self._inflight = 0
        self._tasks: set[asyncio.Task[None]] = set()  # held: the loop keeps only weak refs

    async def submit(self, item: T) -> R:
        return await asyncio.shield(self.submit_nowait(item))

    def submit_nowait(self, item: T) -> asyncio.Future[R]:
        """``submit`` with no coroutine: the future of the batch's result (a caller that
        waits on it must not cancel it: the batch sets it)."""
        fut: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self.submit_then(item, partial(settle, fut))
        return fut

    def submit_then(self, item: T, then: Then[R]) -> None:
        """``submit`` with no future: ``then(result, None)`` once the batch holding ``item``
        is committed, ``then(None, error)`` if it failed; called as the batch ends, in the
        loop's same turn (a future per item cost a turn of the loop for each)."""
        loop = asyncio.get_running_loop()
        now = loop.time()
        began, count = self._window
        if now - began >= 1.0:
            self._rate = count / (now - began) if began else 0.0
            self._window = (now, 1)
        else:
            self._window = (began, count + 1)
        if not self._pending:
            self._since = now  # the linger counts from the oldest waiting item
        self._pending.append((item, then))
        if self._timer is not None and len(self._pending) >= self._full:
            self._timer.cancel()  # enough for a batch: no waiting out the linger
            self._timer = None
            self._scheduled = False
        self._schedule()

    def _schedule(self) -> None:
        if not self._scheduled and self._inflight < self._max_inflight and self._pending:
            self._scheduled = True
            loop = asyncio.get_running_loop()
            linger = self._linger if self._rate >= self._linger_rate else 0.0
            wait = self._since + linger - loop.time()
            if wait > 0 and len(self._pending) < self._full:
                self._timer = loop.call_later(wait, self._flush)
            else:
                loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._scheduled = False
        self._timer = None
        batch = self._pending[: self._max_batch]
        self._pending = self._pending[self._max_batch :]
        if batch:
            self._inflight += 1
            task = asyncio.ensure_future(self._run(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        self._schedule()

    async def _run(self, batch: list[tuple[T, Then[R]]]) -> None:
        try:
            result = await self._store([item for item, _ in batch])
        except BaseException as e:
            for _, then in batch:
                _call(then, None, e)
            if not isinstance(e, Exception):
                raise
        else:
            for _, then in batch:
                _call(then, result, None)
        finally:
            self._inflight -= 1
            self._schedule()


def settle(fut: asyncio.Future[R], result: R | None, error: BaseException | None) -> None:
    """An outcome into a future not yet done (``submit_nowait``'s ``then``, and with
    ``result`` bound to None a ``then(error)``'s)."""
    if fut.done():
        return
    if error is None:
        fut.set_result(result)  # type: ignore[arg-type]
    else:
        fut.set_exception(error)
        fut.exception()  # retrieved: no warning if every waiter went away


def _call(then: Then[R], result: R | None, error: BaseException | None) -> None:
    """One item's ``then``; one that fails is logged, and the batch's others still hear."""
    try:
        then(result, error)
    except Exception:
        log.exception("a stored batch's callback failed")
