"""The update server survives its database (issue 11, point 5), as real ``mpseal serve``
processes against a real PostgreSQL that the tests stop and start: it starts while the
database is down and answers what it can (503 with Retry-After for the rest), recovers by
itself, also after a worker died while the database was down, and never loses a report it
acknowledged across a restart under load.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa
from postgres import PostgresServer
from serve_support import serving, store_args
from server_support import Keys, free_port, make_keys, register, worker_pids

from mpseal.fleet.models import Device, Event


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def check_body(hw: str) -> dict[str, object]:
    return {
        "hardware_id": hw,
        "board": "esp32",
        "app": "hello",
        "version": "1.0.0",
        "counter": 1,
        "timestamp_version": 0,
    }


@contextmanager
def serve(
    db_url: str, keys: Keys, folder: Path, *extra: str, port: int | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``mpseal serve`` in its own process group, its output in a log file of ``folder``;
    waits for /healthz (not the database)."""
    port = port or free_port()
    args = (*store_args(db_url, keys, folder / "artifacts"), "--cache-seconds", "0.5", *extra)
    log = folder / f"serve-{port}-{time.monotonic_ns()}.log"
    with serving(*args, port=port, log=log) as served:
        yield served


def wait_for(pred, seconds: float = 20.0) -> bool:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if pred():
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def test_server_starts_while_the_database_is_down_and_recovers_by_itself(
    keys: Keys, tmp_path: Path
) -> None:
    with PostgresServer() as pg:
        fleet = register(pg.url, 2)
        h = fleet.headers("dev-00000")
        pg.stop()
        with serve(pg.url, keys, tmp_path, "--workers", "2") as (url, _):
            health = httpx.get(f"{url}/healthz").json()
            assert health["ok"] is True and health["database"] == "down"
            r = httpx.get(f"{url}/readyz")
            assert r.status_code == 503 and r.headers["retry-after"]
            r = httpx.post(f"{url}/v1/device/check", json=check_body("dev-00000"), headers=h)
            assert r.status_code == 503 and int(r.headers["retry-after"]) > 0
            assert r.json()["error"].startswith("service unavailable")
            pg.start()
            assert wait_for(lambda: httpx.get(f"{url}/readyz").status_code == 200)
            for _ in range(6):  # both workers answer
                r = httpx.post(f"{url}/v1/device/check", json=check_body("dev-00000"), headers=h)
                assert r.status_code == 200, r.text
        logs = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
        assert "database unavailable" in logs or "starting without the database" in logs


def test_database_down_and_a_worker_killed_the_server_comes_back_by_itself(
    keys: Keys, tmp_path: Path
) -> None:
    with PostgresServer() as pg:
        fleet = register(pg.url, 2)
        h = fleet.headers("dev-00001")
        with serve(pg.url, keys, tmp_path, "--workers", "2") as (url, proc):
            assert (
                httpx.post(
                    f"{url}/v1/device/check", json=check_body("dev-00001"), headers=h
                ).status_code
                == 200
            )
            pg.stop()
            workers = worker_pids(proc.pid)
            assert len(workers) >= 2
            os.kill(workers[0], signal.SIGKILL)
            # The replacement starts without the database; the parent stays up.
            assert wait_for(
                lambda: (
                    len(set(worker_pids(proc.pid)) - {workers[0]}) >= 2
                    and workers[0] not in worker_pids(proc.pid)
                )
            )
            assert proc.poll() is None
            assert wait_for(lambda: httpx.get(f"{url}/healthz").json()["database"] == "down")
            logs = "".join(p.read_text() for p in tmp_path.glob("serve-*.log"))
            assert f"Child process [{workers[0]}] died" in logs
            pg.start()
            assert wait_for(
                lambda: all(
                    httpx.post(
                        f"{url}/v1/device/check", json=check_body("dev-00001"), headers=h
                    ).status_code
                    == 200
                    for _ in range(6)
                )
            )
            assert proc.poll() is None


def test_restart_under_load_loses_no_acknowledged_report(
    pg_url: str, keys: Keys, tmp_path: Path
) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    fleet = register(pg_url, 20)
    hws = sorted(fleet.tokens)
    port = free_port()
    acked: list[tuple[str, str]] = []
    stop = threading.Event()

    def device(hw: str) -> None:
        with httpx.Client(timeout=5) as c:
            i = 0
            while not stop.is_set():
                reason = f"r{i}"
                try:
                    r = c.post(
                        f"http://127.0.0.1:{port}/v1/device/report",
                        headers=fleet.headers(hw),
                        json={
                            "hardware_id": hw,
                            "event": "downloaded",
                            "version": "1.0.0",
                            "reason": reason,
                        },
                    )
                except httpx.HTTPError:
                    time.sleep(0.05)
                    continue
                if r.status_code == 200:
                    acked.append((hw, reason))
                i += 1
                time.sleep(0.02)

    threads = [threading.Thread(target=device, args=(hw,)) for hw in hws]
    with serve(pg_url, keys, tmp_path, "--report-rate", "600", "--report-burst", "600", port=port):
        for t in threads:
            t.start()
        time.sleep(1.5)
    before = len(acked)  # SIGTERM'd mid-load; the same port again
    with serve(pg_url, keys, tmp_path, "--report-rate", "600", "--report-burst", "600", port=port):
        time.sleep(1.5)
        stop.set()
        for t in threads:
            t.join()
    assert before > 20 and len(acked) > before
    with engine.connect() as conn:
        rows = conn.execute(
            sa.select(Device.hardware_id, Event.detail)
            .join(Device, Event.device_id == Device.id)
            .where(Event.kind == "update-downloaded")
        )
        stored = {(hw, json.loads(d)["reason"]) for hw, d in rows}
    engine.dispose()
    missing = [a for a in acked if a not in stored]
    assert not missing, f"{len(missing)} acknowledged reports lost, e.g. {missing[:3]}"
