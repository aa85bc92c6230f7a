#!/usr/bin/env python3
"""Console page times at fleet scale (issue 14): every console page against one server
on PostgreSQL with a registry of ``--devices`` (default 1,000,000) devices, each with an
inventory row (running version, last check-in), a release with samples, device log
lines and audit rows. Each page is fetched ``--repeat`` times over one logged-in session;
printed: the first (cold) time and the median, in ms, from this one run.

The overview's aggregates (devices by state, by version, by last seen) are grouped counts
over the whole fleet: reused for 5 s per process (``console.OVERVIEW_TTL``), so the cold
figure is what one refresh costs the database every 5 s at most.

Run: .venv/bin/python benchmarks/console.py [--devices 1000000] [--repeat 5] [--json]
Exit status: 0 when measured, 2 if the benchmark fails.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE.parent / "src"))


def fill(url: str, n: int) -> dict[str, float]:
    import sqlalchemy as sa

    from mpseal.fleet import devicelogs
    from mpseal.fleet.auditlog import AuditLog
    from mpseal.fleet.registry import ImportRow, Registry

    took: dict[str, float] = {}
    until = datetime.now(UTC) + timedelta(days=365)

    def rows():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield ImportRow(
                f"bench-{i:07d}",
                "esp32",
                f"g{i % 10}",
                os.urandom(32).hex(),
                os.urandom(8).hex(),
                until + timedelta(minutes=i % 100_000),
                f"CN=bench-{i:07d}",
                hashlib.sha256(f"tok-{i}".encode()).hexdigest(),
            )

    reg = Registry.open(url)
    t0 = time.perf_counter()
    reg.import_identities(rows(), activate=True)
    took["import"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with reg.engine.begin() as conn:
        # versions: 70 % 1.0.0, 25 % 1.1.0, 5 % 2.0.0; last check-in spread over 30 days
        conn.execute(
            sa.text(
                "INSERT INTO device_status (device_id, app, version, counter, channel, "
                "last_check_at, last_check_day, last_report_at, last_event) SELECT id, 'hello', "
                "CASE WHEN id % 20 = 0 THEN '2.0.0' WHEN id % 4 = 0 THEN '1.1.0' ELSE '1.0.0' END,"
                " 1, 'stable', t, floor(extract(epoch FROM t) / 86400)::integer, NULL, NULL "
                "FROM (SELECT id, now() - (id % 43200) * interval '1 minute' AS t FROM devices) s"
            )
        )
        conn.execute(sa.text("ANALYZE"))
    took["inventory"] = time.perf_counter() - t0
    log = AuditLog(reg)
    for i in range(2000):
        log.append("token:0123456789abcdef", "promote", f"release {i}", {"percent": i % 100})
    for d in range(1, 201):
        devicelogs.append(
            reg, d, [("guard", f"{j} booting hello 1.0.0 from slot a") for j in range(50)]
        )
    reg.engine.dispose()
    return took


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    import httpx
    from postgres import postgres_server
    from server_support import (
        ADMIN_TOKEN,
        config_for,
        make_artifact,
        make_keys,
        running_server,
    )

    from mpseal.fleet import consoledata

    out: dict[str, object] = {"devices": args.devices}
    with tempfile.TemporaryDirectory() as tmp, postgres_server() as url:
        folder = Path(tmp)
        out["setup_s"] = fill(url, args.devices)
        keys = make_keys(folder / "keys")
        with running_server(config_for(url, keys, folder)) as srv, srv.admin() as admin:
            r = admin.post("/v1/admin/releases", content=make_artifact(keys.release, "2.0.0", 2))
            rid = r.json()["release"]["id"]
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 10})
            from mpseal.fleet.registry import Registry
            from mpseal.fleet.releasestore import ReleaseStore

            reg = Registry.open(url)
            store = ReleaseStore(reg)
            start = datetime.now(UTC) - timedelta(days=2)
            for k in range(consoledata.SAMPLES_PER_RELEASE):
                consoledata.sample_releases(
                    reg, store.releases(None), now=start + timedelta(minutes=10 * k)
                )
            store.close()
            reg.engine.dispose()
            with httpx.Client(base_url=srv.url, timeout=120) as c:
                c.post("/console/login", data={"token": ADMIN_TOKEN})
                mid = f"bench-{args.devices // 2:07d}"
                pages = {
                    "overview": "/console/",
                    "devices": "/console/devices",
                    "devices, deep page": f"/console/devices?after={args.devices // 2}",
                    "devices version=2.0.0": "/console/devices?version=2.0.0",
                    "devices silent 7 days": "/console/devices?silent_days=7",
                    "device": f"/console/devices/{mid}",
                    "device with log": "/console/devices/bench-0000001",
                    "release": f"/console/releases/{rid}",
                    "release live": f"/console/releases/{rid}/live",
                    "certificates": "/console/certificates",
                    "audit": "/console/audit",
                    "audit verify": "/console/audit?verify=1",
                }
                times: dict[str, dict[str, float]] = {}
                for name, path in pages.items():
                    ms = []
                    for _ in range(args.repeat):
                        t0 = time.perf_counter()
                        resp = c.get(str(path))
                        ms.append((time.perf_counter() - t0) * 1000)
                        if resp.status_code != 200:
                            raise SystemExit(f"{path}: {resp.status_code} {resp.text[:200]}")
                    times[name] = {
                        "cold_ms": round(ms[0], 1),
                        "median_ms": round(statistics.median(ms), 1),
                    }
                out["pages"] = times
    if args.json:
        print(json.dumps(out, indent=2))
    else:
        print(
            f"console pages, PostgreSQL, {args.devices:,} devices "
            f"(setup: import {out['setup_s']['import']:.1f} s, "  # type: ignore[index]
            f"inventory {out['setup_s']['inventory']:.1f} s)"
        )  # type: ignore[index]
        for name, t in out["pages"].items():  # type: ignore[attr-defined]
            print(f"  {name:<24} cold {t['cold_ms']:>8.1f} ms   median {t['median_ms']:>8.1f} ms")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        sys.exit(2)
