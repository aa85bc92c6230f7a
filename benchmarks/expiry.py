#!/usr/bin/env python3
"""Fleet certificate expiry at scale (issue 13 item 4): the expiry report over a registry of
N devices (default 1,000,000) on PostgreSQL, each with its provisioning certificate
(expiries spread over a year) and a share of them with renewed 30-day ones (1 % of those
failed to renew).

Measured in one run: the report as mpseal runs it (``fleet/certstore.expiry``: a range on
``ix_certificates_not_after``, superseded certificates dropped through the device index),
and, for the ratio, the naive query (every device's last certificate by GROUP BY, then
filtered and sorted: all lapsing devices), checked to agree. Prints milliseconds (median of 5) and the
ratio.

Run: .venv/bin/python benchmarks/expiry.py [--devices 1000000] [--renewed 0.3] [--json]
Exit status: 0 when measured, 2 if the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))


def fill(engine, n: int, renewed: float) -> float:  # type: ignore[no-untyped-def]
    """N active devices, a provisioning certificate each (expiring over the next year), and
    for a share of them a later 30-day renewal certificate (1 % of those past renewal)."""
    t0 = time.perf_counter()
    n = int(n)
    every = int(max(1, round(1 / renewed))) if renewed > 0 else 0
    with engine.begin() as c:
        c.exec_driver_sql(
            "INSERT INTO devices (id, hardware_id, board, state, group_name, created_at, "  # noqa: S608 - n: an int
            "updated_at) SELECT i, 'dev-' || i, 'esp32', 'active', 'default', now(), now() "
            f"FROM generate_series(1, {n}) i"
        )
        c.exec_driver_sql(
            "INSERT INTO certificates (id, device_id, role, subject, serial, fingerprint, "  # noqa: S608
            "not_after, not_before, status, created_at, issued_via) SELECT i, i, 'device', "
            "'CN=dev-' || i, md5('s' || i), md5('f' || i) || md5('g' || i), "
            f"now() + (i %% 365) * interval '1 day' + interval '1 hour', "
            "now() - interval '1 day', 'valid', now(), 'provision' "
            f"FROM generate_series(1, {n}) i"
        )
        if every:
            c.exec_driver_sql(
                "INSERT INTO certificates (id, device_id, role, subject, serial, fingerprint, "  # noqa: S608
                "not_after, not_before, status, created_at, issued_via) SELECT "
                f"{n} + i, i, 'device', 'CN=dev-' || i, md5('r' || i), "
                "md5('h' || i) || md5('k' || i), "
                # a healthy renewal fleet: 10 to 30 days left (renewed at two thirds); one
                # device in a hundred failed to renew and has 0 to 10 days left
                "now() + CASE WHEN i %% 100 = 0 THEN (i %% 10) ELSE 10 + (i %% 20) END "
                "* interval '1 day' + interval '1 hour', "
                "now() - interval '1 day', 'valid', now(), 'renewal' "
                f"FROM generate_series(1, {n}) i WHERE i %% {every} = 0"
            )
        c.exec_driver_sql("ANALYZE devices")
        c.exec_driver_sql("ANALYZE certificates")
    return time.perf_counter() - t0


NAIVE = """
SELECT d.hardware_id, c.not_after FROM certificates c JOIN devices d ON d.id = c.device_id
JOIN (SELECT device_id, MAX(id) AS last FROM certificates
      WHERE status = 'valid' AND role = 'device' GROUP BY device_id) m ON m.last = c.id
WHERE d.state = 'active' AND c.not_after < %(h)s AND c.not_after >= %(l)s
ORDER BY c.not_after
"""


def timed(fn, rounds: int = 5) -> tuple[float, object]:  # type: ignore[no-untyped-def]
    out, times = None, []
    for _ in range(rounds):
        t0 = time.perf_counter()
        out = fn()
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument("--renewed", type=float, default=0.3)
    ap.add_argument("--within-days", type=float, default=10.0)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    from postgres import postgres_server

    from mpseal.fleet.certstore import expiry
    from mpseal.fleet.registry import Registry

    try:
        with postgres_server() as url:
            reg = Registry.open(url)
            fill_s = fill(reg.engine, args.devices, args.renewed)
            now = datetime.now(UTC)
            within, lapsed = timedelta(days=args.within_days), timedelta(days=365)
            ours_ms, (rows, more) = timed(lambda: expiry(reg, now, within, lapsed, 1000))
            with reg.engine.connect() as c:
                raw = c.connection.dbapi_connection
                params = {"h": now + within, "l": now - lapsed}

                def naive() -> list[tuple[str, datetime]]:
                    with raw.cursor() as cur:  # type: ignore[union-attr]
                        cur.execute(NAIVE, params)
                        return list(cur.fetchall())

                naive_ms, naive_rows = timed(naive, 3)
            # The same answer: every device listed lapses by the naive query too, and the
            # expiries listed are the soonest ones (ties in any order).
            everyone = dict(naive_rows)  # type: ignore[arg-type]
            soonest = sorted(t for _, t in naive_rows)[: len(rows)]  # type: ignore[misc]
            same = (
                all(r.hardware_id in everyone for r in rows)
                and [r.not_after for r in rows] == soonest
            )
            reg.engine.dispose()
    except Exception as e:  # noqa: BLE001 - a one-line failure
        print(f"benchmark failed: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    result = {
        "devices": args.devices,
        "renewed_share": args.renewed,
        "fill_seconds": round(fill_s, 1),
        "lapsing_within_days": args.within_days,
        "more": more,
        "listed": len(rows),
        "report_ms": round(ours_ms, 1),
        "naive_ms": round(naive_ms, 1),
        "speedup": round(naive_ms / ours_ms, 1),
        "same_devices": same,
    }
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"{args.devices:,} devices ({args.renewed:.0%} renewed), filled in {fill_s:.1f} s")
        print(
            f"expiry report (first {len(rows)} lapsing within {args.within_days:g} days"
            f"{', more' if more else ''}): {ours_ms:.1f} ms; naive GROUP BY: {naive_ms:.1f} ms; "
            f"ratio {naive_ms / ours_ms:.1f}x; same devices: {same}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
