"""Device reports at scale and under abuse (issue 11, points 1 and 2), on SQLite and a real
PostgreSQL: counters kept as reports arrive (no recount), only devices a release was offered
to can halt it, a halt needs a share of the cohort, per-device report rate limits, no
release ids in answers, event retention on 64-bit keys.

Threat tier T2 (docs/threats.md: a leaked device key, limited to one revocable device):
credentials extracted from one or a few devices. These tests show what such credentials can
no longer do to a rollout of other devices.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import pytest
import sqlalchemy as sa
from server_support import Keys, config_for, make_artifact, make_keys, register, running_server

from mpseal.fleet.models import Event, utcnow
from mpseal.fleet.registry import Registry
from mpseal.fleet.releases import DeviceUpdate
from mpseal.fleet.releasestore import NewRelease, ReleaseStore, Report
from mpseal.fleet.rollout import HaltPolicy, cohort_bucket
from mpseal.server.config import ServerLimits


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def send(
    dev: httpx.Client,
    fleet,
    hw: str,
    event: str,
    version: str = "1.1.0",  # type: ignore[no-untyped-def]
    app: str = "hello",
    board: str = "esp32",
) -> httpx.Response:
    return dev.post(
        "/v1/device/report",
        headers=fleet.headers(hw),
        json={"hardware_id": hw, "event": event, "version": version, "app": app, "board": board},
    )


def publish(admin: httpx.Client, keys: Keys, version: str = "1.1.0", **kw: object) -> int:
    r = admin.post("/v1/admin/releases", content=make_artifact(keys.release, version, 2, **kw))  # type: ignore[arg-type]
    assert r.status_code == 201, r.text
    return int(r.json()["release"]["id"])


def release(admin: httpx.Client, rid: int) -> dict:  # type: ignore[type-arg]
    return admin.get(f"/v1/admin/releases/{rid}").json()["release"]


def recount(url: str, rid: int) -> dict[str, int]:
    """The truth the counters must match: a full recount of the device states."""
    engine = sa.create_engine(url)
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(DeviceUpdate.state, sa.func.count())
            .where(DeviceUpdate.release_id == rid)
            .group_by(DeviceUpdate.state)
        )
        out = {state: int(n) for state, n in rows}
    engine.dispose()
    return out


def published(db_url: str, n: int) -> tuple[Registry, ReleaseStore, int, list[int]]:
    """``n`` devices and release 1.1.0 published: the registry, its release store, the
    release's id and the devices' ids in order."""
    register(db_url, n)
    reg = Registry.open(db_url)
    store = ReleaseStore(reg)
    rid = store.publish(
        NewRelease("hello", "esp32", "1.1.0", 2, "a" * 64, "b" * 64, 10, "stable")
    ).view.id
    return reg, store, rid, sorted(int(d.id) for d in reg.devices())


def test_counters_follow_every_state_change_without_recounting(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Each device moves between states (downloaded, staged, booted, rolled back, confirmed);
    the release's counts match a recount, and no report's SQL aggregates device_updates."""
    fleet = register(db_url, 40)
    hws = sorted(fleet.tokens)
    cfg = config_for(
        db_url, keys, tmp_path, cache_seconds=0.0, halt_policy=HaltPolicy(min_attempts=1000)
    )
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        rid = publish(admin, keys)
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})
        script = {
            0: ["downloaded"],
            1: ["downloaded", "staged"],
            2: ["downloaded", "staged", "booted", "confirmed"],
            3: ["downloaded", "staged", "booted", "rolled_back"],
            4: ["refused"],
        }

        def device(i: int) -> None:
            for event in script[i % 5]:
                assert send(dev, fleet, hws[i], event).status_code == 200

        with ThreadPoolExecutor(8) as pool:  # concurrent batches on one release
            list(pool.map(device, range(40)))
        counts = release(admin, rid)["counts"]
        truth = recount(db_url, rid)
        assert truth == {
            "downloaded": 8,
            "staged": 8,
            "confirmed": 8,
            "rolled_back": 8,
            "refused": 8,
        }
        assert counts["attempts"] == 40 and counts["updated"] == 8
        assert (counts["refused"], counts["rolled_back"], counts["in_progress"]) == (8, 8, 16)

    # The report path touches device_updates by primary key only: no scan, no count.
    reg = Registry.open(db_url)
    store = ReleaseStore(reg)
    seen: list[str] = []
    for engine in (reg.engine, store._read_engine):
        sa.event.listen(engine, "before_cursor_execute", lambda *a: seen.append(str(a[2]).lower()))
    pg_cursor = store._pg_cursor  # PostgreSQL's hot statements: psycopg, past SQLAlchemy

    @contextmanager
    def spied() -> Iterator[object]:
        with pg_cursor() as cur:
            yield _Spy(cur, seen)

    store._pg_cursor = spied  # type: ignore[method-assign]
    dev_id = int(reg.find_device(hws[0]).id)  # type: ignore[union-attr]
    store.record_reports([Report(dev_id, "refused", "1.1.0", "bad", rid, "hello", "stable")])
    store.stats([rid])
    store.close()
    reg.engine.dispose()
    on_updates = [q for q in seen if "device_updates" in q]
    assert on_updates and not any(
        "from device_updates" in q and ("count(" in q or "sum(" in q) for q in on_updates
    )
    assert any("release_counts" in q and "sum(" in q for q in seen)


class _Spy:
    """A psycopg cursor that notes each statement it executes."""

    def __init__(self, cur: Any, seen: list[str]) -> None:
        self.cur, self.seen = cur, seen

    def execute(self, query: str, params: Any = None) -> Any:
        self.seen.append(query.lower())
        return self.cur.execute(query, params)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.cur, name)


def test_attack_reports_for_a_release_not_offered_do_not_halt_it(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """Credentials of devices outside the cohort, of another board, or naming another app
    send failure reports for a release: they are stored, they do not count, nothing halts."""
    fleet = register(db_url, 60)
    others = register(db_url, 5, prefix="c3", board="esp32c3")
    fleet.tokens.update(others.tokens)
    hws = sorted(t for t in fleet.tokens if t.startswith("dev-"))
    cfg = config_for(
        db_url,
        keys,
        tmp_path,
        cache_seconds=0.0,
        halt_policy=HaltPolicy(min_attempts=3, max_failure_ratio=0.2, min_cohort_share=0.0),
    )
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        rid = publish(admin, keys)
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 10})
        outside = [hw for hw in hws if cohort_bucket(rid, hw) >= 10][:6]
        for hw in outside:  # not in the 10% cohort
            assert send(dev, fleet, hw, "rolled_back").json() == {"recorded": True}
        for hw in others.tokens:  # another board, claiming to be an esp32
            assert send(dev, fleet, hw, "refused").status_code == 200
        for hw in outside[:3]:  # guessing the version of another app
            assert send(dev, fleet, hw, "refused", app="other").status_code == 200
        rel = release(admin, rid)
        assert rel["state"] == "active" and rel["counts"]["attempts"] == 0
        # Every report was kept as an event all the same.
        reg = Registry.open(db_url)
        assert sum(1 for e in reg.events() if e.kind.startswith("update-")) == 14
        reg.engine.dispose()
        # Devices in the cohort do count (3 of 3 failed: halted).
        inside = [hw for hw in hws if cohort_bucket(rid, hw) < 10][:3]
        assert len(inside) == 3
        for hw in inside:
            send(dev, fleet, hw, "rolled_back")
        assert release(admin, rid)["state"] == "halted"


def test_attack_a_few_devices_cannot_halt_a_rollout_to_many(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A halt needs failures from the configured share of the cohort (here 2 % of 400
    devices: 8), so five devices that all report failures do not halt it; the release's
    own policy can be set through the admin API."""
    fleet = register(db_url, 400)
    hws = sorted(fleet.tokens)
    cfg = config_for(
        db_url,
        keys,
        tmp_path,
        cache_seconds=0.0,
        halt_policy=HaltPolicy(min_attempts=5, max_failure_ratio=0.2, min_cohort_share=0.02),
    )
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        rid = publish(admin, keys)
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100}).json()[
                "release"
            ]["counts"]["cohort"]
            == 400
        )
        for hw in hws[:5]:
            assert send(dev, fleet, hw, "rolled_back").status_code == 200
        rel = release(admin, rid)
        assert rel["state"] == "active" and rel["counts"]["failed"] == 5
        # The same device again does not count twice.
        send(dev, fleet, hws[0], "refused")
        assert release(admin, rid)["counts"]["failed"] == 5
        for hw in hws[5:8]:
            send(dev, fleet, hw, "refused")
        rel = release(admin, rid)
        assert rel["state"] == "halted", rel
        assert rel["halt_reason"].startswith("8 of 8 devices failed")

        # Per release: a stricter share for the next one.
        rid2 = publish(admin, keys, "1.2.0")
        r = admin.post(f"/v1/admin/releases/{rid2}/policy", json={"min_cohort_share": 0.5})
        assert (
            r.status_code == 200 and r.json()["release"]["halt_policy"]["min_cohort_share"] == 0.5
        )
        assert (
            admin.post(f"/v1/admin/releases/{rid2}/policy", json={"min_attempts": -1}).status_code
            == 400
        )
        assert (
            admin.post(f"/v1/admin/releases/{rid2}/policy", json={"halt": True}).status_code == 400
        )


def test_attack_report_flood_from_one_credential_is_rate_limited(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """One token sending reports as fast as it can: after the burst every report is a 429
    with Retry-After and is not stored, so the event log grows by the burst only."""
    fleet = register(db_url, 2)
    cfg = config_for(
        db_url, keys, tmp_path, limits=ServerLimits(report_rate_per_minute=6, report_burst=10)
    )
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        publish(admin, keys)
        statuses = [send(dev, fleet, "dev-00000", "downloaded").status_code for _ in range(200)]
        assert statuses[:10] == [200] * 10 and set(statuses[10:]) == {429}
        r = send(dev, fleet, "dev-00000", "downloaded")
        assert r.status_code == 429 and 1 <= int(r.headers["retry-after"]) <= 10
        assert send(dev, fleet, "dev-00001", "downloaded").status_code == 200  # others go on
    reg = Registry.open(db_url)
    assert sum(1 for e in reg.events("dev-00000") if e.kind.startswith("update-")) == 10
    reg.engine.dispose()


def test_refusal_without_a_version_is_accepted_and_counts_nothing(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 1)
    cfg = config_for(db_url, keys, tmp_path)
    with running_server(cfg) as srv, srv.admin() as admin, httpx.Client(base_url=srv.url) as dev:
        rid = publish(admin, keys)
        admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})
        r = dev.post(
            "/v1/device/report",
            headers=fleet.headers("dev-00000"),
            json={
                "hardware_id": "dev-00000",
                "event": "refused",
                "version": "",
                "reason": "timestamp signature invalid",
            },
        )
        assert r.status_code == 200 and r.json() == {"recorded": True}
        assert send(dev, fleet, "dev-00000", "downloaded", version="").status_code == 400
        assert release(admin, rid)["counts"]["attempts"] == 0


def test_events_past_retention_are_deleted_and_keys_are_64_bit(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 1)
    reg = Registry.open(db_url)
    dev_id = int(reg.find_device("dev-00000").id)  # type: ignore[union-attr]
    old = utcnow() - timedelta(days=40)
    with reg.engine.begin() as conn:
        conn.execute(
            sa.insert(Event),
            [{"device_id": dev_id, "kind": "x", "detail": "{}", "at": old} for i in range(25)],
        )
        # Past 32 bits: a kept event there (SQLite), the sequence there (PostgreSQL).
        conn.execute(
            sa.insert(Event).values(
                id=2**31 + 5, device_id=dev_id, kind="y", detail="{}", at=utcnow()
            )
        )
        if conn.dialect.name == "postgresql":
            conn.execute(sa.text("SELECT setval('events_id_seq', 2147483653)"))
    cfg = config_for(db_url, keys, tmp_path, event_retention_days=30.0)
    with running_server(cfg) as srv, httpx.Client(base_url=srv.url) as dev:
        # The first maintenance round ran at start: the old events are gone, the new ones stay.
        assert send(dev, fleet, "dev-00000", "downloaded").status_code == 200
    kinds = [e.kind for e in reg.events("dev-00000")]
    assert "x" not in kinds and "update-downloaded" in kinds and "issued" in kinds
    newest = max(e.id for e in reg.events())
    assert newest > 2**31 + 5  # the key went on past 32 bits
    reg.engine.dispose()
    assert json.dumps(newest)  # plain int


def test_pruning_events_deletes_only_the_due_ones_reading_few_rows(db_url: str) -> None:
    """The retention, with no index on ``events.at`` (migration 0016): every event past it is
    deleted, a batch at a time; none younger, even written out of order (a machine whose
    clock runs behind or ahead); and with nothing due it reads a few rows through the primary
    key, not the table."""
    reg = Registry.open(db_url)
    store = ReleaseStore(reg)
    now = utcnow()
    old, ahead = now - timedelta(days=40), now + timedelta(days=1)
    rows = (
        [(old, "old")] * 2_400
        + [(ahead, "ahead")] * 50  # a clock ahead: kept until its time
        + [(old, "old")] * 100
        + [(now, "new")] * 3_000
        + [(old, "behind")] * 10  # a clock behind, among the new
        + [(now, "new")] * 20_000
    )
    with reg.engine.begin() as conn:
        conn.execute(
            sa.insert(Event),
            [{"device_id": i, "kind": kind, "at": at} for i, (at, kind) in enumerate(rows)],
        )

    def kinds() -> dict[str, int]:
        with reg.engine.connect() as conn:
            q = sa.select(Event.kind, sa.func.count()).group_by(Event.kind)
            return {str(row[0]): int(row[1]) for row in conn.execute(q)}

    def table_reads() -> tuple[int, int]:
        with reg.engine.connect() as conn:
            q = "SELECT seq_scan, idx_tup_fetch FROM pg_stat_user_tables WHERE relname = 'events'"
            scans, fetched = conn.exec_driver_sql(q).one()
        return int(scans), int(fetched or 0)

    pruned = [store.prune_events(30.0, limit=1_000) for _ in range(5)]
    assert pruned[:2] == [1_000, 1_000] and pruned[-1] == 0, pruned
    left = kinds()
    # never one not due; every due one the bisection reaches (those held back by a clock
    # ahead, or found among the new ones, go when they are reached)
    assert left["new"] == 23_000 and left["ahead"] == 50, left
    assert left.get("old", 0) in (0, 100) and left.get("behind", 0) in (0, 10), left
    assert sum(pruned) == 2_510 - left.get("old", 0) - left.get("behind", 0)
    if reg.engine.dialect.name == "postgresql":
        with reg.engine.connect() as conn:  # statistics, as autovacuum keeps them
            conn.exec_driver_sql("ANALYZE events")
            conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        before = table_reads()
        assert store.prune_events(30.0) == 0
        with reg.engine.connect() as conn:
            conn.exec_driver_sql("SELECT pg_stat_force_next_flush()")
        scans, fetched = (b - a for a, b in zip(before, table_reads(), strict=True))
        assert scans == 0 and fetched < 200, (scans, fetched)
    reg.engine.dispose()


@pytest.mark.parametrize("n", [3])
def test_report_batches_store_many_devices_in_one_transaction(db_url: str, n: int) -> None:
    """Concurrent reports of one release from many devices, and the same device twice in one
    batch: the last one is its state, counted once."""
    from mpseal.server.batch import WriteBatcher

    reg, store, rid, ids = published(db_url, n)
    calls: list[int] = []

    async def write(items: list[Report]) -> object:
        calls.append(len(items))
        return await asyncio.to_thread(store.record_reports, items)

    async def main() -> None:
        b: WriteBatcher[Report, object] = WriteBatcher(write)
        await asyncio.gather(
            *(
                b.submit(Report(d, ev, "1.1.0", "", rid))
                for d in ids
                for ev in ("downloaded", "booted")
            )
        )

    asyncio.run(main())
    assert sum(calls) == 2 * n and len(calls) <= 2
    stats = store.stats([rid])[rid]
    assert stats.attempts == n and stats.in_progress == n
    assert recount(db_url, rid) == {"booted": n}
    store.close()
    reg.engine.dispose()


def test_report_batches_linger_for_company_unless_full() -> None:
    """A lone report waits the linger for others to share its statement; a full batch goes
    at once (a busy server does not wait); the linger counts from the oldest report."""
    import time

    from mpseal.server.batch import WriteBatcher

    sizes: list[int] = []

    async def write(items: list[int]) -> int:
        sizes.append(len(items))
        return len(items)

    async def main() -> tuple[float, float]:
        b: WriteBatcher[int, int] = WriteBatcher(write, linger=0.4, full=3)
        t0 = time.monotonic()
        await b.submit(1)
        alone = time.monotonic() - t0
        t0 = time.monotonic()
        await asyncio.gather(b.submit(1), b.submit(2), b.submit(3))
        return alone, time.monotonic() - t0

    alone, full = asyncio.run(main())
    assert 0.35 <= alone < 2 and full < 0.2
    assert sizes == [1, 3]


def test_each_report_of_a_batch_hears_its_outcome_in_the_batchs_turn(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Every submitter of a stored batch hears (result, None), of a failed one (None, error),
    with no future between (the batch's end calls them all, in one turn of the loop); one
    whose callback fails is logged, and the others still hear."""
    from mpseal.server.batch import WriteBatcher

    async def write(items: list[int]) -> int:
        if 0 in items:
            raise OSError("database gone")
        return sum(items)

    heard: list[tuple[int, int | None, str | None]] = []

    def then(i: int, result: int | None, error: BaseException | None) -> None:
        if i == 2:
            raise RuntimeError("a broken callback")
        heard.append((i, result, None if error is None else str(error)))

    async def main() -> None:
        b: WriteBatcher[int, int] = WriteBatcher(write, full=3, linger=0.2)
        for i in (1, 2, 3):
            b.submit_then(i, partial(then, i))
        while len(heard) < 2:
            await asyncio.sleep(0.01)
        for i in (0, 4):
            b.submit_then(i, partial(then, i))
        failed = b.submit_nowait(0)
        with pytest.raises(OSError, match="database gone"):
            await failed

    asyncio.run(main())
    assert heard == [
        (1, 6, None),
        (3, 6, None),
        (0, None, "database gone"),
        (4, None, "database gone"),
    ]
    assert "a stored batch's callback failed" in caplog.text


def test_report_batches_linger_only_while_reports_come_fast() -> None:
    """With a linger rate, a report on a quiet server is stored at once; once reports came
    at that rate for a second, they wait the linger for company again."""
    import time

    from mpseal.server.batch import WriteBatcher

    sizes: list[int] = []

    async def write(items: list[int]) -> int:
        sizes.append(len(items))
        return len(items)

    async def main() -> tuple[float, float]:
        b: WriteBatcher[int, int] = WriteBatcher(write, linger=0.4, full=100, linger_rate=20)
        t0 = time.monotonic()
        await b.submit(0)
        quiet = time.monotonic() - t0
        busy_until = time.monotonic() + 1.1
        while time.monotonic() < busy_until:  # ~100 a second (>= 20 on a slow machine)
            await asyncio.gather(*(b.submit(i) for i in range(10)))
            await asyncio.sleep(0.1)
        sizes.clear()
        t0 = time.monotonic()
        await b.submit(1)
        return quiet, time.monotonic() - t0

    quiet, busy = asyncio.run(main())
    assert quiet < 0.2, quiet
    assert 0.35 <= busy < 2, busy
    assert sizes == [1]


def test_a_failure_report_under_the_halt_limit_starts_no_task(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    """A failure report's halting decision is made where its batch is stored (the batch's
    callback): a task, an event-loop turn of its own beside the checks, only for a release
    that must halt. Under the limit nothing runs; over it, the release halts once."""
    from mpseal.server.service import UpdateServer

    reg, store, rid, ids = published(db_url, 6)
    policy = HaltPolicy(min_attempts=3, max_failure_ratio=0.4, min_cohort_share=0.0)
    server = UpdateServer(config_for(db_url, keys, tmp_path, halt_policy=policy))
    halting: list[tuple[int, str]] = []

    async def maybe_halt(*args: Any) -> bool:
        raise AssertionError(f"a halting decision of its own for {args}")

    async def halt(release_id: int, reason: str) -> bool:
        halting.append((release_id, reason))
        return True

    server.maybe_halt = maybe_halt  # type: ignore[method-assign]
    server._halt = halt  # type: ignore[method-assign]

    async def main() -> None:
        for d, event in zip(
            ids[:4], ["confirmed", "confirmed", "rolled_back", "confirmed"], strict=True
        ):
            await server.report(Report(d, event, "1.1.0", "", rid, "hello", "stable"))
            assert not server._halting  # no task was started for it
        assert halting == []  # 1 of 4 failed: under the limit
        await asyncio.gather(
            *(
                server.report(Report(d, "refused", "1.1.0", "", rid, "hello", "stable"))
                for d in ids[4:]
            )
        )
        assert [r for r, _ in halting] == [rid] * len(halting) and halting  # 3 of 6: halts

    try:
        asyncio.run(main())
    finally:
        store.close()
        server.store.close()
        reg.engine.dispose()


def test_overdue_trials_are_found_through_an_index_of_trials_only(db_url: str) -> None:
    """The sweep of overdue trials reads an index of the rows in a trial boot (migration
    0013): a report of any other state writes no entry to it (a large fleet's tens of
    millions of rows are not indexed by state and time). Overdue trials time out, the
    rest are left as they are."""
    from importlib import import_module

    from mpseal.fleet.releases import TRIAL_STATE

    # one source of truth: the migration's trial state is the code's
    assert import_module("mpseal.fleet.migrations.versions.0013_trials_index").TRIAL == TRIAL_STATE
    reg, store, rid, ids = published(db_url, 4)
    events = ["booted", "rolled_back", "confirmed", "booted"]
    store.record_reports([Report(d, e, "1.1.0", "", rid) for d, e in zip(ids, events, strict=True)])
    overdue = (
        sa.select(DeviceUpdate.device_id)
        .where(DeviceUpdate.state == TRIAL_STATE, DeviceUpdate.updated_at < utcnow())
        .order_by(DeviceUpdate.device_id, DeviceUpdate.release_id)
    )
    pg = reg.engine.dialect.name == "postgresql"
    with reg.engine.connect() as conn:
        names = {i["name"]: i for i in sa.inspect(conn).get_indexes("device_updates")}
        assert set(names) == {"ix_device_updates_trials"}  # and the primary key
        assert names["ix_device_updates_trials"]["column_names"] == ["device_id", "release_id"]
        sql = str(overdue.compile(conn, compile_kwargs={"literal_binds": True}))
        if pg:
            conn.execute(sa.text("SET enable_seqscan = off"))  # a table of 4 rows
            plan = "\n".join(r[0] for r in conn.execute(sa.text("EXPLAIN " + sql)))
            (definition,) = conn.execute(
                sa.text("SELECT indexdef FROM pg_indexes WHERE indexname = :n"),
                {"n": "ix_device_updates_trials"},
            ).one()
            assert f"WHERE ((state)::text = '{TRIAL_STATE}'::text)" in definition
        else:
            plan = "\n".join(str(r[-1]) for r in conn.execute(sa.text("EXPLAIN QUERY PLAN " + sql)))
        assert "ix_device_updates_trials" in plan, plan
    assert store.sweep_trials(0) == 2 and store.sweep_trials(0) == 0
    assert recount(db_url, rid) == {"timed_out": 2, "rolled_back": 1, "confirmed": 1}
    store.close()
    reg.engine.dispose()


def test_a_report_event_detail_is_the_same_json_text_on_either_database(db_url: str) -> None:
    """A report's event detail is one text whichever database and path stores it:
    ``json.dumps``' own, for reasons with quotes, backslashes, controls and non-ASCII
    (cut at 200 characters), and for a report about no release."""
    reg, store, rid, ids = published(db_url, 2)
    reasons = ['boot "loop" \\ at 0x10', "flash\tfull\n\u00e9\u65e5\u2028\x01" + "x" * 300]
    reports = [
        Report(ids[0], "rolled_back", "1.1.0", reasons[0], rid),
        Report(ids[1], "refused", "", reasons[1], None),
    ]
    store.record_reports(reports)
    writer = store.report_writer()
    if writer is not None:  # PostgreSQL: the server's own path, from the event loop

        async def main() -> None:
            await writer.record_reports(reports)
            await writer.close()

        asyncio.run(main())
    with reg.engine.connect() as c:
        details = c.scalars(
            sa.select(Event.detail).where(Event.kind.like("update-%")).order_by(Event.id)
        ).all()
    expected = [
        json.dumps({"version": r.version, "reason": r.reason[:200], "release": r.release_id})
        for r in reports
    ]
    assert details == expected * (1 if writer is None else 2)
    store.close()
    reg.engine.dispose()
