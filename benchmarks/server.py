#!/usr/bin/env python3
"""Update server benchmark (issues 5 and 11): checks, failure reports, the database at scale.

A fleet of registered devices (default 1,000,000, each with its own bearer token, put in
with the bulk import path, which is timed), in the inventory as if each had checked in an
hour ago (``--inventory settled``; ``empty``: never), and a release promoted to 10 %. In
one run, against one ``mpseal serve`` on 127.0.0.1 (PostgreSQL by default), separate load
phases, each with devices of its own:

1. update checks only, keep-alive connections: checks/s, p50/p99;
2. the same with ``--failure-share`` (5 %) of the requests being failure reports
   (``rolled_back``) from devices in the release's cohort (they count towards its halt;
   its policy is set so that it never halts): checks/s and p99 again. The reports go
   over connections of their own (``--reports-on own``, twice ``--connections``), one
   sent for each share of them the checks earned, so the checks keep their connections
   whatever a report's latency, as a fleet's checks do not wait for other devices'
   reports; until run 20 each connection sent a report in 5 % of its turns and waited for
   it, so fewer connections checked while reports waited for their batch (up to 0.15 s):
   that mix is run too, after phase 5, and printed beside it (``--reports-on shared``: it
   alone, in every mixed phase);
3. checks only again: phase 2 is compared with the mean of phases 1 and 3 (the earlier
   phases' writes can slow each later phase; phase 1 alone would favour the checks without
   reports);
4. failure reports alone (on four times ``--connections``): reports/s;
5. the ratio of phases 2 and 1-3 again, interleaved: one load of about twice a phase, in
   slots of 2 s without and with the failure reports in turn; checks/s of each kind of
   slot, each counted from 0.3 s into the slot. The machine's own speed drifts between
   phases (the same checks phase read 6,967 - 8,970/s over one session), and two slots
   2 s apart share that drift; what a report costs later than its slot (vacuum; the
   other workers' reading of the feed, within a second) is spread over both kinds of slot
   (the inventory is written as its chunks fill: until run 27 it was written every 5 s
   in one burst of most of a second of the machine, which fell in 0, 1 or 2 slots of a
   pair and moved the slots' checks by up to a third);
   each mixed slot is also read against the slots without reports beside it (the median
   and range of those ratios: a burst of other work on the machine moves one or two of
   them, where it moves the slots' totals);
   then the same slots with, in place of the failure reports, as many checks sent where
   the protocol does not answer them (a query string: the app answers them, as it does a
   report): what mixing in a request of the app's costs the checks on this machine, for a
   request that writes nothing (the control of phase 5); and its calibration, the same
   slots with plain checks on the report connections in place of the reports (a request
   that costs one check: the checks should keep 1 - share of their rate, 95 %);
6. with ``--tls tls|mtls``: checks over a new TLS connection each (mtls: with a client
   certificate), the cost of a handshake per request;
7. the HTTP floor, once the update server stopped: the same checks (plain HTTP) against
   benchmarks/asgi_floor.py, an ASGI app served the same way (uvicorn, uvloop, the
   server's protocol and limits, the same workers) that answers a check's bytes at once,
   then one that first spends ``--floor-burn-us`` (100) of CPU a request. What this
   machine's server stack and load generator allow, in the same run: the check path's
   rate read against it is a figure of the code, not of the machine. (A check the server
   holds all it needs for is answered in the HTTP protocol, around the ASGI stack that
   this floor app still goes through: docs/updates.md, "Checks answered in the protocol".)

From the phases' CPU (server, database, load generator, read from ``/proc``) it prints
what a failure report costs the machine in checks: alone (phase 4) and in the mix (phase
2's CPU less its checks', over its reports), beside the most it may cost for the goal
(with a share s of reports the checks keep (1 - s) / (1 - s + s * cost) of their rate:
2.11 checks for 90 % at 5 %). The figure in the mix multiplies the phases' noise by 1 / s.

The load generator is a separate process speaking raw HTTP/1.1 (asyncio + uvloop, no HTTP
library on the hot path), run as a batch task (Linux ``SCHED_BATCH``, ``--loadgen-sched``):
an answer that wakes it does not preempt a server worker (run 23, 200,000 devices: the
same checks ~30 % faster, a check costing the workers ~12 us and the load generator ~15 us
less). wrk (C, its Lua drawing each request) was tried in its place, scheduled normally: 22
- 24 us of CPU per request against this one's 24 - 27, not worth a second tool. Everything
runs on this machine (2 cores): server workers, the database and the load generator share
them. "busy before" is the share of the machine's
CPU already busy (other work) before the run: figures with a high one are low.

Goals (issue 11, 2 cores, PostgreSQL, 1 M devices): checks with 5 % failure reports
>= 90 % of checks without (phase 5; phases 1-3 printed beside it, and phase 5's checks and
reports together, what the server answered, against its checks alone); reports >= 3,000/s;
keep-alive checks (phase 1) >= 10,000/s, p99 < 50 ms. The header prints the machine's
plain-Python speed: the same server code costs machines of this workplace different CPU
times per request.

Run: .venv/bin/python benchmarks/server.py [--db postgresql|sqlite|both] [--devices 1000000]
     [--failure-share 0.05] [--inventory settled|empty] [--tls none|tls|mtls] [--workers 2] [--connections 128]
     [--seconds 15] [--cache-seconds 1] [--floor-burn-us 100] [--loadgen-sched batch|normal]
     [--json] [--strict]
Exit status: 0 when measured (--strict: 1 if a goal is missed), 2 if the benchmark fails.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
MPSEAL = Path(sys.executable).parent / "mpseal"
GOAL_RATE = 10_000  # keep-alive checks per second
GOAL_P99_MS = 50.0
GOAL_MIXED_RATIO = 0.9  # checks/s with failure reports / checks/s without
GOAL_REPORTS = 3000  # failure reports per second
WARMUP_SECONDS = 3.0
# The interleaved phase: slots of this many seconds, without and with failure reports in
# turn; a slot is counted from GUARD_SECONDS after it began (by then the reports of the
# slot before have been answered: their p99 is ~0.15 s), so each kind of slot is measured
# in its steady state.
SLOT_SECONDS = 2.0
GUARD_SECONDS = 0.3
# The HTTP floor (benchmarks/asgi_floor.py): the same load on the same server stack with an
# app that answers at once, then one that spends this much CPU a request first.
FLOOR_BURN_US = 100.0
FLOOR_SECONDS = 8.0
PG_SHARED_BUFFERS = "2GB"


# -- the load generator (its own process) ----------------------------------------------


class _Client(asyncio.Protocol):
    """One keep-alive connection: send a request (a check or a report), parse the answer,
    send the next."""

    def __init__(
        self,
        pick: Any,
        start: float,
        end: float,
        lat: dict[str, list[float]],
        stats: dict[str, Any],
        done: asyncio.Future[None],
        slot: float,
    ) -> None:
        self.pick, self.start, self.end = pick, start, end
        self.lat, self.stats, self.done = lat, stats, done
        self.slot = slot  # interleaved: seconds a slot; 0: one kind of load throughout
        self.buf = b""
        self.t0 = 0.0
        self.kind = ""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self._next()

    def _next(self) -> None:
        """What the connection does once open and after each answer: its next request."""
        self._send()

    def _send(self) -> None:
        self.t0 = time.perf_counter()
        if self.t0 >= self.end:
            self.transport.close()  # type: ignore[attr-defined]
            return
        self.kind, request = self.pick()
        self.transport.write(request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        self.buf = self.buf + data if self.buf else data  # one segment per answer: no copy
        answer = _answer(self.buf)
        if answer is None:
            return
        head, body, self.buf = answer
        _record(self, head, body, time.perf_counter())
        self._next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            self.done.set_result(None)


class _Paced:
    """Reports on connections of their own, paced by the checks: each check sent earns
    ``share / (1 - share)`` of a report (in a report slot, when interleaved), sent by an
    idle report connection. A device waiting for its report's answer does not hold back
    the rest of the fleet's checks: the check connections keep their number whatever a
    report's latency. Whether a check earns is a flag the slots' timers set (a clock read
    and two calls a check cost the load generator ~0.3 us a check more than a phase of
    checks alone, charged to the reports)."""

    def __init__(self, share: float, slot: float, start: float) -> None:
        self.per_check = share / (1.0 - share)
        self.slot, self.start = slot, start
        # interleaved: set in every second slot from start (timers); the warm-up sends
        # reports, as slot -1 would (the report path and its connections warmed up)
        self.on = True
        self.owed = 0.0
        self.idle: list[_Reporter] = []
        if slot:
            loop = asyncio.get_running_loop()
            loop.call_later(max(0.0, start - time.perf_counter()), self._flip, 0)

    def _flip(self, n: int) -> None:
        """Slot ``n`` begins now; the next one is timed."""
        self.on = n % 2 == 1
        delay = self.start + (n + 1) * self.slot - time.perf_counter()
        asyncio.get_running_loop().call_later(max(0.0, delay), self._flip, n + 1)

    def earn(self) -> None:
        self.owed += self.per_check
        while self.owed >= 1.0 and self.idle:
            self.owed -= 1.0
            self.idle.pop()._send()

    def ready(self, reporter: _Reporter) -> bool:
        """A report connection is free: True if it owes a report now (else it waits)."""
        if self.owed >= 1.0:
            self.owed -= 1.0
            return True
        self.idle.append(reporter)
        return False


class _Reporter(_Client):
    """A report connection of ``_Paced``: sends a report when the checks earned one."""

    def __init__(self, paced: _Paced, *args: Any) -> None:
        super().__init__(*args)
        self.paced = paced

    def _next(self) -> None:
        if self.paced.ready(self):
            self._send()


def _report_slot(now: float, start: float, slot: float) -> bool:
    """Whether reports are sent at ``now``: always, or (interleaved, ``slot`` seconds a
    slot) in every second slot from ``start``."""
    return not slot or int((now - start) // slot) % 2 == 1


def _answer(buf: bytes) -> tuple[bytes, bytes, bytes] | None:
    head_end = buf.find(b"\r\n\r\n")
    if head_end < 0:
        return None
    head = buf[:head_end]
    i = head.find(b"content-length:")  # as the server writes it; else any spelling
    if i < 0:
        i = head.lower().find(b"content-length:")
    j = head.find(b"\r\n", i)
    length = int(head[i + 15 : j if j > 0 else len(head)]) if i >= 0 else 0
    total = head_end + 4 + length
    if len(buf) < total:
        return None
    return head, buf[head_end + 4 : total], buf[total:]


def _record(c: Any, head: bytes, body: bytes, t1: float) -> None:
    if c.t0 < c.start:
        return
    kind = c.kind
    if c.slot:  # interleaved: by the slot it was answered in, past the slot's guard
        n, into = divmod(t1 - c.start, c.slot)
        if into < GUARD_SECONDS or t1 >= c.end:
            return
        if kind == "check":  # each slot's checks: the pairs' ratios (slot_ratios)
            counts = c.stats["check_slots"]
            counts[int(n)] = counts.get(int(n), 0) + 1
        if n % 2:
            kind = "mixed " + kind
    c.lat.setdefault(kind, []).append(t1 - c.t0)
    if head[9:12] != b"200":
        c.stats["errors"] += 1
        c.stats.setdefault(
            "first_error", (head[:12] + b" " + body[:200]).decode("ascii", "replace")
        )
    elif b'"update":true' in body:
        c.stats["offered"] += 1


async def _one_per_connection(
    host: str,
    port: int,
    pick: Any,
    ssl_ctx: Any,
    start: float,
    end: float,
    lat: dict[str, list[float]],
    stats: dict[str, Any],
) -> None:
    """A new (TLS) connection for every request: handshake included in its latency."""

    class C:
        pass

    c: Any = C()
    c.start, c.end, c.lat, c.stats, c.slot = start, end, lat, stats, 0.0
    while True:
        c.t0 = time.perf_counter()
        if c.t0 >= end:
            return
        c.kind, request = pick()
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ssl_ctx, server_hostname="127.0.0.1"
            )
        except OSError as e:
            stats["errors"] += 1
            stats.setdefault("first_error", str(e))
            await asyncio.sleep(0.01)
            continue
        writer.write(request)
        buf = b""
        answer = None
        while answer is None:
            chunk = await reader.read(65536)
            if not chunk:
                break
            buf += chunk
            answer = _answer(buf)
        writer.close()
        if answer is None:
            stats["errors"] += 1
            continue
        _record(c, answer[0], answer[1], time.perf_counter())


def _summary(lat: dict[str, list[float]], seconds: float) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kind, values in lat.items():
        values.sort()
        n = len(values)
        out[kind] = {
            "count": n,
            "rate": n / seconds,
            "p50_ms": values[n // 2] * 1000 if n else None,
            "p99_ms": values[min(n - 1, int(n * 0.99))] * 1000 if n else None,
            "max_ms": values[-1] * 1000 if n else None,
        }
    return out


async def _load(spec: dict[str, Any]) -> dict[str, Any]:
    import ssl

    loop = asyncio.get_running_loop()
    rnd = random.Random()
    checks = [_request("check", spec, i) for i in spec["check_devices"]]
    other = spec.get("other", "report")  # the control phase: "app check"
    reports = [_request(other, spec, i) for i in spec["report_devices"]]
    share = spec["report_share"]

    n_checks, n_reports, draw = len(checks), len(reports), rnd.random
    slot = float(spec.get("slot", 0.0))

    paced: _Paced | None = None  # set once the load's start is known

    def pick() -> tuple[str, bytes]:  # uniform draws, as randrange (which costs more)
        if paced is not None:
            if paced.on:
                paced.earn()
            return "check", checks[int(draw() * n_checks)]
        if share and draw() < share and _report_slot(time.perf_counter(), start, slot):
            return other, reports[int(draw() * n_reports)]
        return "check", checks[int(draw() * n_checks)]

    print("READY", flush=True)  # the parent's CPU window counts from here
    now = time.perf_counter()
    start, end = now + WARMUP_SECONDS, now + WARMUP_SECONDS + spec["seconds"]
    if spec.get("paced") and 0 < share < 1:
        paced = _Paced(share, slot, start)
    lat: dict[str, list[float]] = {}
    stats: dict[str, Any] = {"errors": 0, "offered": 0, "check_slots": {}}
    ssl_ctx = None
    if spec.get("ca"):
        ssl_ctx = ssl.create_default_context(cafile=spec["ca"])
        if spec.get("client_cert"):
            ssl_ctx.load_cert_chain(spec["client_cert"], spec["client_key"])
    if spec.get("new_connections"):
        await asyncio.gather(
            *(
                _one_per_connection(
                    spec["host"], spec["port"], pick, ssl_ctx, start, end, lat, stats
                )
                for _ in range(spec["connections"])
            )
        )
    else:
        dones = []
        for _ in range(spec["connections"]):
            done: asyncio.Future[None] = loop.create_future()
            await loop.create_connection(
                lambda d=done: _Client(pick, start, end, lat, stats, d, slot),
                spec["host"],
                spec["port"],
                ssl=ssl_ctx,
                server_hostname="127.0.0.1" if ssl_ctx else None,
            )
            dones.append(done)
        if paced is not None:

            def report() -> tuple[str, bytes]:
                return other, reports[int(draw() * n_reports)]

            for _ in range(spec.get("report_connections", spec["connections"])):
                done = loop.create_future()
                await loop.create_connection(
                    lambda d=done: _Reporter(paced, report, start, end, lat, stats, d, slot),
                    spec["host"],
                    spec["port"],
                    ssl=ssl_ctx,
                    server_hostname="127.0.0.1" if ssl_ctx else None,
                )
                dones.append(done)

            def close_idle() -> None:  # the checks are over: so are the idle reporters
                for r in paced.idle:
                    r.transport.close()
                paced.idle.clear()

            loop.call_later(max(0.0, end - time.perf_counter()) + 0.5, close_idle)
        await asyncio.wait_for(asyncio.gather(*dones), WARMUP_SECONDS + spec["seconds"] + 60)
    if not slot:
        return {"seconds": spec["seconds"], **_summary(lat, spec["seconds"]), **stats}
    # Each kind of slot was measured for half of the slots, each past its guard.
    measured = spec["seconds"] / slot / 2 * (slot - GUARD_SECONDS)
    return {"seconds": measured, **_summary(lat, measured), **stats}


def _request(kind: str, spec: dict[str, Any], i: int) -> bytes:
    hw = f"bench-{i:07d}"
    if kind == "plain check":  # the calibration's: a check, counted apart from the checks
        return _request("check", spec, i)
    if kind == "app check":  # a check the protocol leaves to the app (a query string)
        return _request("check", spec, i).replace(
            b"POST /v1/device/check ", b"POST /v1/device/check?via=app ", 1
        )
    if kind == "check":
        body = json.dumps(
            {
                "hardware_id": hw,
                "board": "esp32",
                "app": "hello",
                "version": "1.0.0",
                "counter": 1,
                "timestamp_version": 0,
            }
        )
        path = b"/v1/device/check"
    else:
        body = json.dumps(
            {
                "hardware_id": hw,
                "event": "rolled_back",
                "version": "1.1.0",
                "app": "hello",
                "board": "esp32",
                "reason": "benchmark",
            }
        )
        path = b"/v1/device/report"
    auth = (
        b""
        if spec.get("client_cert")
        else (b"Authorization: Bearer " + token_of(i).encode() + b"\r\n")
    )
    return (
        b"POST "
        + path
        + b" HTTP/1.1\r\nHost: bench\r\n"
        + auth
        + b"Content-Type: application/json\r\nContent-Length: "
        + str(len(body)).encode()
        + b"\r\n\r\n"
        + body.encode()
    )


def as_batch_task() -> None:
    """This process as a batch task (Linux ``SCHED_BATCH``): woken by an answer, it does not
    preempt the process running (a server worker), it waits for its turn and then reads
    every answer that came meanwhile. Devices run on machines of their own; a load
    generator that preempts the server at each answer costs the server what no fleet does
    (run 23: 0.55 involuntary context switches a request, ~12 us of the workers' system
    time and ~15 us of the load generator's a check, against 0.05 as a batch task)."""
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))


def token_of(i: int) -> str:
    return f"tok-bench-{i:07d}"


def loadgen_main(spec_file: str) -> None:
    import uvloop

    spec = json.loads(Path(spec_file).read_text())
    if spec.get("sched") == "batch":
        try:
            as_batch_task()
        except (AttributeError, OSError) as e:  # not Linux, or refused
            sys.exit(
                f"the load generator cannot run as SCHED_BATCH here ({e}): --loadgen-sched normal"
            )
    print(json.dumps(uvloop.run(_load(spec))))


# -- the setup: a fleet, a release, the server -------------------------------------------


@contextmanager
def database(kind: str, folder: Path) -> Iterator[str]:
    if kind == "sqlite":
        yield f"sqlite:///{folder / 'mpseal.db'}"
        return
    from postgres import postgres_server

    # PostgreSQL's own default (128 MB) is for a machine it shares: with it, the million
    # devices' tables and indexes outgrew the buffers during a run and each later phase
    # read slower than the first (10,919 -> 9,816 checks/s); a database server is given a
    # share of its memory (PostgreSQL's docs: 25 % of RAM as a start). With 2 GB the checks
    # phase after the mixed one read as the first (10,957 / 10,994 checks/s).
    with postgres_server(f"-c shared_buffers={PG_SHARED_BUFFERS}") as url:
        yield url


@contextmanager
def server(
    url: str,
    keys: Any,
    folder: Path,
    port: int,
    args: argparse.Namespace,
    tls: dict[str, Path] | None,
) -> Iterator[int]:
    """``mpseal serve`` on the database ``url``; yields its pid once it is ready."""
    from server_support import ADMIN_TOKEN

    extra: list[str] = []
    if tls:
        extra = ["--tls-cert", str(tls["cert"]), "--tls-key", str(tls["key"])]
        if args.tls == "mtls":
            extra += ["--client-ca", str(tls["client_ca"])]
    argv = [
        str(MPSEAL),
        "serve",
        "--db",
        url,
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--roots",
        str(keys.roots_dir),
        "--timestamp-key",
        str(keys.folder / "timestamp.pem"),
        "--artifacts",
        str(folder / "artifacts"),
        "--cache-seconds",
        str(args.cache_seconds),
        "--max-connections",
        "4096",
        *extra,
    ]
    ready = f"{'https' if tls else 'http'}://127.0.0.1:{port}/readyz"
    env = {"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
    verify: Any = str(tls["ca"]) if tls else True
    with _process(argv, env, folder / "server.log", ready, args.workers, verify) as pid:
        yield pid


@contextmanager
def floor_server(folder: Path, port: int, workers: int, burn_us: float) -> Iterator[int]:
    """benchmarks/asgi_floor.py served as the update server is (same protocol, limits and
    workers), spending ``burn_us`` of CPU a request."""
    argv = [sys.executable, str(HERE / "asgi_floor.py"), str(port), str(workers)]
    env = {"MPSEAL_BENCH_BURN_US": str(burn_us)}
    with _process(argv, env, folder / "floor.log", f"http://127.0.0.1:{port}/", workers) as pid:
        yield pid


@contextmanager
def _process(
    argv: list[str], env: dict[str, str], log: Path, ready: str, workers: int, verify: Any = True
) -> Iterator[int]:
    """``argv`` in its own session (``env`` added to ours, its errors in ``log``); yields its
    pid once ``ready`` answers 200 and every worker had a moment to come up; stops its whole
    process group after."""
    from server_support import stop_group, wait_ready

    with open(log, "wb") as out:
        proc = subprocess.Popen(
            argv,
            env={**os.environ, **env},
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=out,
            start_new_session=True,
        )
        try:
            wait_ready(proc, ready, log.read_text, 120, verify)
            time.sleep(1.0 if workers > 1 else 0)  # let every worker come up
            yield proc.pid
        finally:
            stop_group(proc, 20)


def wait_directory(admin: Any, workers: int) -> dict[str, Any]:
    """Wait until the server's workers hold their device directory (PostgreSQL) or have
    none: the phases measure a server in its running state, not one still loading."""
    t0 = time.perf_counter()
    streak, status = 0, {}
    while streak < 4 * workers and time.perf_counter() - t0 < 600:
        status = admin.get("/healthz").json()["directory"]
        streak = streak + 1 if status["state"] != "loading" else 0
        time.sleep(0.05 if status["state"] != "loading" else 0.5)
    return {**status, "seconds": round(time.perf_counter() - t0, 1)}


def worker_rss_mb(server_pid: int) -> list[float]:
    """The resident memory of each of the server's worker processes."""
    from server_support import worker_pids

    out = []
    for pid in worker_pids(server_pid):
        try:
            status = Path(f"/proc/{pid}/status").read_text()
        except OSError:
            continue
        kb = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
        out.append(kb / 1024)
    return sorted(out)


def _cpu_by_role(server_pid: int) -> dict[tuple[str, int], float]:
    """CPU seconds used so far by each process of the server (its session), the database
    (background ones apart: autovacuum, WAL writer...) and the load generator, keyed (role,
    pid): what each request costs, whatever else runs on the machine."""
    tick = os.sysconf("SC_CLK_TCK")
    out: dict[tuple[str, int], float] = {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            stat = (proc / "stat").read_text()
            cmd = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        comm = stat[stat.index("(") + 1 : stat.rindex(")")]
        f = stat[stat.rindex(")") + 2 :].split()
        used = (int(f[11]) + int(f[12])) / tick  # utime + stime
        if int(f[3]) == server_pid:  # session id
            out[("server", int(proc.name))] = used
        elif comm == "postgres":  # not a client's backend: autovacuum, WAL writer...
            role = "database" if b"127.0.0.1(" in cmd else "db_background"
            out[(role, int(proc.name))] = used
        elif b"--loadgen" in cmd:
            out[("load", int(proc.name))] = used
    return out


class CpuWindow:
    """The CPU each role used during one phase's measured window (after its warm-up)."""

    def __init__(self, server_pid: int, delay: float, seconds: float) -> None:
        import threading

        self.used: dict[str, float] = {}
        self.seconds = seconds

        def measure() -> None:
            time.sleep(delay)
            a = _cpu_by_role(server_pid)
            busy_a, _ = _cpu_times()
            time.sleep(seconds)
            b = _cpu_by_role(server_pid)
            busy_b, _ = _cpu_times()
            # Per process: one that started in the window counts from 0; one that ended
            # in it is lost (its CPU shows in "other").
            self.used = dict.fromkeys(("server", "database", "db_background", "load"), 0.0)
            for (role, pid), used in b.items():
                self.used[role] += used - a.get((role, pid), 0.0)
            # What else ran meanwhile (CPU seconds of the machine not used by the three):
            # a phase with much of it measured a shared machine, not the server.
            tick = os.sysconf("SC_CLK_TCK")
            self.used["other"] = max(0.0, (busy_b - busy_a) / tick - sum(self.used.values()))
            self.used["database"] += self.used["db_background"]  # shown apart as well

        self.thread = threading.Thread(target=measure, daemon=True)
        self.thread.start()

    def result(self) -> dict[str, float]:
        self.thread.join()
        return self.used


def _cpu_times() -> tuple[int, int]:
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
    idle = fields[3] + fields[4]
    return sum(fields) - idle, sum(fields)


def python_speed() -> float:
    """Millions of steps a second of a plain Python loop on one core (the best of three):
    the same server code costs machines of this workplace different CPU times per request
    (docs/updates.md, run 10), so each figure is printed with its machine's speed."""
    best = 0.0
    for _ in range(3):
        t0 = time.perf_counter()
        total = 0
        for i in range(2_000_000):
            total += i
        best = max(best, 2.0 / (time.perf_counter() - t0))
    return best


def background_busy(seconds: float = 2.0) -> float:
    """Share of this machine's CPU busy before the run (other work shares the machine)."""
    b0, t0 = _cpu_times()
    time.sleep(seconds)
    b1, t1 = _cpu_times()
    return (b1 - b0) / max(t1 - t0, 1)


def register_fleet(url: str, n: int, client_fingerprint: str | None) -> float:
    """``n`` active devices bench-0000000... with tokens ``token_of(i)``, through the bulk
    import path (``mpseal registry import``); device 0 holds the client certificate."""
    import hashlib
    from datetime import UTC, datetime, timedelta

    from mpseal.fleet.registry import ImportRow, Registry

    until = datetime.now(UTC) + timedelta(days=365)

    def rows() -> Iterator[ImportRow]:
        for i in range(n):
            fp = client_fingerprint if i == 0 and client_fingerprint else os.urandom(32).hex()
            yield ImportRow(
                f"bench-{i:07d}",
                "esp32",
                "default",
                fp,
                os.urandom(8).hex(),
                until,
                f"CN=bench-{i:07d}",
                hashlib.sha256(token_of(i).encode()).hexdigest(),
            )

    reg = Registry.open(url)
    t0 = time.perf_counter()
    reg.import_identities(rows(), activate=True)
    seconds = time.perf_counter() - t0
    reg.engine.dispose()
    return seconds


def settle_inventory(url: str) -> None:
    """Every device in the inventory as an hour after the fleet went live: each checked in
    once, an hour ago, running 1.0.0. The benchmark's checks then update inventory rows,
    as every hourly check does in a running fleet, against a table of the fleet's size in
    every phase (with an empty inventory, each phase inserts rows into a table the phases
    before it grew: the later phases ran 5 - 10 % slower than the first for that alone,
    a bias against the phase with failure reports, which runs second)."""
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import text

    from mpseal.fleet.models import epoch_day
    from mpseal.fleet.registry import Registry
    from mpseal.server.config import DEFAULT_CHANNEL

    reg = Registry.open(url)
    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    with reg.engine.begin() as conn:
        conn.execute(
            text(
                "INSERT INTO device_status (device_id, app, version, counter, channel, "
                "last_check_at, last_check_day) SELECT id, 'hello', '1.0.0', 1, :ch, :at, :day "
                "FROM devices"
            ),
            {"ch": DEFAULT_CHANNEL, "at": hour_ago, "day": epoch_day(hour_ago)},
        )
    with reg.engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
        pg = reg.engine.dialect.name == "postgresql"
        conn.execute(text("VACUUM ANALYZE device_status" if pg else "ANALYZE"))
    reg.engine.dispose()


def make_tls(folder: Path, client_fp_holder: dict[str, str]) -> dict[str, Path]:
    from cryptography.hazmat.primitives import serialization
    from test_server_tls import make_ca, make_leaf

    folder.mkdir(parents=True, exist_ok=True)
    server_ca, fleet_ca = make_ca("server CA"), make_ca("fleet CA")
    for name, (_, cert) in (("server-ca", server_ca), ("fleet-ca", fleet_ca)):
        (folder / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    cert, key, _ = make_leaf(server_ca, "update-server", True, folder)
    ccert, ckey, fp = make_leaf(fleet_ca, "bench-0000000", False, folder)
    client_fp_holder["fp"] = fp
    return {
        "cert": cert,
        "key": key,
        "ca": folder / "server-ca.pem",
        "client_ca": folder / "fleet-ca.pem",
        "client_cert": ccert,
        "client_key": ckey,
    }


def _phase(spec: Path, server_pid: int, seconds: float) -> dict[str, Any]:
    """One load phase in its own process; the CPU window opens when its requests are built
    (it prints READY, then warms up) and closes before the load ends."""
    proc = subprocess.Popen(
        [sys.executable, __file__, "--loadgen", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    ready = proc.stdout.readline()
    # Inside the measured seconds: the load generator's CPU counts only while it runs.
    window = CpuWindow(server_pid, WARMUP_SECONDS + 0.2, max(0.5, seconds - 0.4))
    try:
        out, err = proc.communicate(timeout=seconds + WARMUP_SECONDS + 180)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise RuntimeError("the load generator did not finish") from None
    if proc.returncode != 0 or ready.strip() != "READY":
        raise RuntimeError((ready + err)[-2000:])
    return {**json.loads(out), "cpu": window.result(), "cpu_seconds": window.seconds}


def _report_share(phase: dict[str, Any]) -> float:
    """The share of failure reports among the requests of the interleaved mixed slots."""
    checks = phase["mixed check"]["rate"]
    reports = (phase.get("mixed report") or {}).get("rate", 0.0)
    return float(reports / (checks + reports)) if checks + reports else 0.0


def _machine_us(phase: dict[str, Any]) -> tuple[float, float] | None:
    """The machine's CPU a request of a phase (server, database and load generator), and
    the share of failure reports among its requests; None without CPU figures."""
    checks = (phase.get("check") or {}).get("rate", 0.0)
    reports = (phase.get("report") or {}).get("rate", 0.0)
    cpu = phase.get("cpu") or {}
    if not checks + reports or not cpu or not phase.get("cpu_seconds"):
        return None
    used = sum(cpu.get(k, 0.0) for k in ("server", "database", "db_background", "load"))
    return used / phase["cpu_seconds"] / (checks + reports) * 1e6, reports / (checks + reports)


def report_cost(phases: dict[str, Any]) -> dict[str, float] | None:
    """What a failure report costs the machine, in checks: alone (the reports phase) and in
    the mix (the mixed phase's CPU less its checks', over its reports), against the mean
    check of the phases before and after. With a machine busy in both, checks with a share
    ``s`` of reports keep ``(1 - s) / (1 - s + s * cost)`` of the checks alone."""
    before, after = (_machine_us(phases[k]) for k in ("checks", "checks after"))
    alone, mixed = _machine_us(phases["reports"]), _machine_us(phases["checks+failures"])
    if before is None or after is None or alone is None or mixed is None or not mixed[1]:
        return None
    c = (before[0] + after[0]) / 2
    mix_us, share = mixed
    return {
        "check_us": c,
        "alone": alone[0] / c,
        "mixed": (mix_us - (1 - share) * c) / share / c,
    }


def cost_limit(share: float, ratio: float = GOAL_MIXED_RATIO) -> float:
    """The most a report may cost, in checks, for checks with this share of reports to keep
    ``ratio`` of the checks alone."""
    return (1 - share) * (1 / ratio - 1) / share


def slot_ratios(counts: dict[Any, int]) -> list[float]:
    """Each mixed slot's checks against the mean of the slots without reports beside it
    (the one before, and the one after if measured): one ratio a slot, each from seconds
    of the same machine speed, so a burst of other work on the machine moves one or two of
    them, not the whole figure (as it moves the slots' totals)."""
    n = {int(k): v for k, v in counts.items()}
    out = []
    for i in sorted(k for k in n if k % 2):
        around = [n[j] for j in (i - 1, i + 1) if n.get(j)]
        if around:
            out.append(n[i] / (sum(around) / len(around)))
    return out


def slots_read(phase: dict[str, Any]) -> tuple[float, list[float]]:
    """An interleaved phase's checks in the mixed slots against the others: over all of its
    slots, and slot by slot (``slot_ratios``)."""
    ratio = phase["mixed check"]["rate"] / phase["check"]["rate"]
    return ratio, slot_ratios(phase.get("check_slots") or {})


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def interleaved_seconds(seconds: float) -> float:
    """About twice a phase, in whole pairs of slots (at least two pairs)."""
    return 2 * SLOT_SECONDS * max(2, round(seconds / SLOT_SECONDS))


def run_one(kind: str, args: argparse.Namespace) -> dict[str, Any]:
    import httpx
    from server_support import ADMIN_TOKEN, free_port, make_artifact, make_keys

    from mpseal.fleet.rollout import cohort_bucket

    with (
        tempfile.TemporaryDirectory(prefix="mpseal-bench-") as tmp,
        database(kind, Path(tmp)) as url,
    ):
        folder = Path(tmp)
        keys = make_keys(folder / "keys")
        holder: dict[str, str] = {}
        tls = make_tls(folder / "pki", holder) if args.tls != "none" else None
        from mpseal.fleet.registry import Registry

        Registry.open(url).engine.dispose()  # the schema, before the timed import
        register_seconds = register_fleet(url, args.devices, holder.get("fp"))
        if args.inventory == "settled":
            settle_inventory(url)
        port = free_port()
        scheme = "https" if tls else "http"
        with server(url, keys, folder, port, args, tls) as server_pid:
            admin = httpx.Client(
                base_url=f"{scheme}://127.0.0.1:{port}",
                timeout=120,
                verify=str(tls["ca"]) if tls else True,
                headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            )
            directory = wait_directory(admin, args.workers)
            directory["worker_rss_mb"] = worker_rss_mb(server_pid)
            rel = admin.post(
                "/v1/admin/releases", content=make_artifact(keys.release, "1.1.0", 2)
            ).json()["release"]
            t0 = time.perf_counter()
            admin.post(f"/v1/admin/releases/{rel['id']}/promote", json={"percent": 10})
            promote_seconds = time.perf_counter() - t0
            # The benchmark's failure reports must not halt the release (they all fail).
            admin.post(f"/v1/admin/releases/{rel['id']}/policy", json={"max_failure_ratio": 1})
            t0 = time.perf_counter()
            page = admin.get(
                "/v1/admin/devices", params={"after": str(args.devices // 2), "limit": "1000"}
            )
            inventory_ms = (time.perf_counter() - t0) * 1000
            assert page.status_code == 200, page.text
            rnd = random.Random(1)
            # Each check phase has devices of its own (disjoint when the fleet is large
            # enough): a device's first check in a server process writes its inventory row,
            # as every hourly check does in a real fleet; a phase reusing the devices of
            # the one before would skip those writes and look cheaper than it is.
            per_phase = min(200_000, max(1, args.devices // 5))
            pool = rnd.sample(range(args.devices), min(args.devices, 5 * per_phase))
            checkers = pool[:per_phase]
            mixed_checkers = pool[per_phase : 2 * per_phase] or checkers
            after_checkers = pool[2 * per_phase : 3 * per_phase] or checkers
            interleaved_checkers = pool[3 * per_phase :] or checkers  # a phase twice as long
            # The failure reports of each mixed phase come from devices of its own that have
            # not reported: a device reports a failed release once, and a first report costs
            # more than a repeat (its row inserted, a feed row, its release moved in every
            # worker's directory). Until run 25 the interleaved slots sent repeats (the
            # devices of the phases before), which read 90 - 91 % where the mixed phase's
            # first reports read 87 - 88 % in the same runs.
            cohort = [
                i
                for i in rnd.sample(range(args.devices), min(args.devices, 1_200_000))
                if cohort_bucket(rel["id"], f"bench-{i:07d}") < 10
            ]
            # (a million devices: ~40,000 each for the mixed phase and the interleaved slots,
            # first reports for ~50 s of either at ~750 a second; the reports phase repeats
            # the rest and the mixed phase's, ~60,000 devices: at ~10,000 reports a second
            # for 60 s, ~10 each, under a device's report rate)
            share = max(1, 2 * len(cohort) // 5)
            mixed_reporters = cohort[:share]
            interleaved_reporters = cohort[share : 2 * share] or mixed_reporters
            cohort = cohort[2 * share :] + mixed_reporters  # the reports phase's
            time.sleep(1.0)
            busy_before = background_busy()
            speed = python_speed()
            base = {
                "host": "127.0.0.1",
                "port": port,
                "connections": args.connections,
                "seconds": args.seconds,
                "check_devices": checkers,
                "report_devices": cohort,
                "ca": str(tls["ca"]) if tls else None,
                # the mixed phases' reports: on connections of their own (twice as many
                # as the checks': a report waits up to 0.15 s for its batch) or theirs
                "paced": args.reports_on == "own",
                "report_connections": 2 * args.connections,
                "sched": args.loadgen_sched,
            }

            def slots(**over: Any) -> dict[str, Any]:
                """An interleaved load (phase 5): its checks' devices, in 2 s slots."""
                return {
                    "report_share": args.failure_share,
                    "check_devices": interleaved_checkers,
                    "report_devices": interleaved_checkers[:30_000],  # the controls' "other"
                    "slot": SLOT_SECONDS,
                    "seconds": interleaved_seconds(args.seconds),
                    **over,
                }

            phases = [
                ("checks", {"report_share": 0.0}),
                (
                    "checks+failures",
                    {
                        "report_share": args.failure_share,
                        "check_devices": mixed_checkers,
                        "report_devices": mixed_reporters,
                    },
                ),
                # The checks again: the writes of the phases before (tables and indexes
                # growing, their vacuum) can make each later phase slower than the first
                # (10,439 -> 9,265 checks/s over one run with 128 MB of buffers; same
                # devices again, no writes: no trend); the mixed phase is compared with
                # the mean of the checks before and after it, which that drift does not favour.
                ("checks after", {"report_share": 0.0, "check_devices": after_checkers}),
                # Four times the connections: a worker's batch waits for 64 reports or
                # 0.15 s, and 64 connections a worker, each waiting for its answer, wait
                # out the linger (run 20: 7,137 - 7,792/s, the machine a third idle).
                (
                    "reports",
                    {
                        "report_share": 1.0,
                        "report_devices": cohort,
                        "connections": 4 * args.connections,
                    },
                ),
                # The ratio again, measured so that the machine's own drift cancels out:
                # slots without and with failure reports in turn (SLOT_SECONDS each), in
                # one load. Over a session the same checks phase read 6,967 - 8,970/s on
                # this workplace's slower machine, so two phases a minute apart differ by
                # the machine alone by up to 16 %; slots two seconds apart share it.
                ("interleaved", slots(report_devices=interleaved_reporters)),
                # Its control: the same slots, the failure reports' share sent as checks
                # the app answers (the protocol answers a plain one itself).
                ("interleaved control", slots(other="app check")),
                # Its calibration: the same slots, the failure reports' share sent as plain
                # checks over the report connections (counted apart): a request that costs
                # the machine what a check costs, which the checks should read at 1 - share
                # (95 %) of their rate; what the method itself reads apart from a report's
                # cost (session 25: 92.6 % over six phases of 8 slot pairs).
                ("interleaved calibration", slots(other="plain check")),
            ]
            if args.reports_on == "own":
                # The mix as the benchmark sent it until run 20: each of the 128 connections
                # sends a failure report in 5 % of its turns and waits for its answer, so
                # the connections checking are fewer while reports wait for their batch
                # (devices of phase 2 again).
                phases.append(
                    (
                        "checks+failures, shared",
                        {
                            "report_share": args.failure_share,
                            "check_devices": mixed_checkers,
                            "paced": False,
                        },
                    )
                )
            if tls:
                phases.append(
                    (
                        "new connections",
                        {
                            "report_share": 0.0,
                            "new_connections": True,
                            "connections": 32,
                            **(
                                {
                                    "client_cert": str(tls["client_cert"]),
                                    "client_key": str(tls["client_key"]),
                                    "check_devices": [0],
                                }
                                if args.tls == "mtls"
                                else {}
                            ),
                        },
                    )
                )
            results: dict[str, Any] = {}
            for name, over in phases:
                spec = folder / "load.json"
                spec.write_text(json.dumps({**base, **over}))
                results[name] = _phase(spec, server_pid, float(over.get("seconds", args.seconds)))
            counts = admin.get(f"/v1/admin/releases/{rel['id']}").json()["release"]["counts"]
        # The floor, once the update server is gone (the database idles): the same load on
        # an app that costs nothing, then FLOOR_BURN_US of CPU, a request.
        floor: dict[str, Any] = {}
        for burn in sorted({0.0, args.floor_burn_us}):
            port = free_port()
            with floor_server(folder, port, args.workers, burn) as floor_pid:
                spec = folder / "load.json"
                seconds = min(args.seconds, FLOOR_SECONDS)
                spec.write_text(  # plain HTTP, whatever --tls says
                    json.dumps(
                        {**base, "port": port, "seconds": seconds, "report_share": 0.0, "ca": None}
                    )
                )
                floor[f"{burn:g}"] = _phase(spec, floor_pid, seconds)
    # Again at the end: the machine's speed moves within minutes (run 17 read 14.4 M steps/s
    # at a run's start and its floor as fast as at 25.9 M), so a run's figures go with both.
    speed_end = python_speed()
    return {
        "db": kind,
        "devices": args.devices,
        "connections": args.connections,
        "workers": args.workers,
        "tls": args.tls,
        "failure_share": args.failure_share,
        "loadgen_sched": args.loadgen_sched,
        "background_busy": round(busy_before, 3),
        "python_msteps_per_s": round(speed, 1),
        "python_msteps_per_s_end": round(speed_end, 1),
        "register_seconds": round(register_seconds, 1),
        "promote_seconds": round(promote_seconds, 2),
        "inventory_page_ms": round(inventory_ms, 1),
        "directory": directory,
        "release_counts": counts,
        "phases": results,
        "floor": floor,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--db", choices=["sqlite", "postgresql", "both"], default="postgresql")
    ap.add_argument("--devices", type=int, default=1_000_000)
    ap.add_argument(
        "--failure-share",
        type=float,
        default=0.05,
        help="Share of requests that are failure reports in the mixed phase.",
    )
    ap.add_argument(
        "--inventory",
        choices=["settled", "empty"],
        default="settled",
        help="settled (default): every device checked in once an hour ago, as in a running "
        "fleet; empty: a fleet whose devices never checked in (each check inserts a row).",
    )
    ap.add_argument(
        "--tls",
        choices=["none", "tls", "mtls"],
        default="none",
        help="Serve over TLS (mtls: the new-connection phase with a client "
        "certificate); adds a phase with a new connection per check.",
    )
    ap.add_argument("--connections", type=int, default=128)
    ap.add_argument(
        "--reports-on",
        choices=["own", "shared"],
        default="own",
        help="own (default): the mixed phases' failure reports go over connections of "
        "their own, one for each check's share earned, and the checks keep their "
        "--connections; shared: each connection sends a report in its share of turns and "
        "waits for it (a phase of this is also run with own).",
    )
    ap.add_argument(
        "--loadgen-sched",
        choices=["batch", "normal"],
        default="batch",
        help="batch (default): the load generator runs as a Linux SCHED_BATCH task, which "
        "does not preempt the server when an answer wakes it; normal: as runs 1 - 22 did.",
    )
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--cache-seconds", type=float, default=1.0)
    ap.add_argument(
        "--floor-burn-us",
        type=float,
        default=FLOOR_BURN_US,
        help="The HTTP floor's second app spends this much CPU a request (0: only the "
        "first, which answers at once).",
    )
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--strict", action="store_true")
    ap.add_argument("--loadgen", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.loadgen:
        loadgen_main(args.loadgen)
        return 0
    kinds = ["sqlite", "postgresql"] if args.db == "both" else [args.db]
    results = []
    try:
        for kind in kinds:
            results.append(run_one(kind, args))
    except Exception as e:  # noqa: BLE001 - report and fail cleanly
        print(f"benchmark failed: {e}", file=sys.stderr)
        return 2
    missed = False
    for r in results:  # in checks of the machine: see report_cost
        r["report_cost"] = report_cost(r["phases"])
    if args.json:
        print(json.dumps(results, indent=2))
    for r in results:
        ph = r["phases"]
        plain = ph["checks"]["check"]
        mixed = ph["checks+failures"]["check"]
        reports = ph["reports"]["report"]
        after = ph["checks after"]["check"]
        sequential = mixed["rate"] / ((plain["rate"] + after["rate"]) / 2)
        inter = ph["interleaved"]
        ratio, pairs = slots_read(inter)
        # what the server answered in those slots, reports included (the goal counts checks)
        served = (
            inter["mixed check"]["rate"] + (inter.get("mixed report") or {}).get("rate", 0.0)
        ) / inter["check"]["rate"]
        control = ph["interleaved control"]
        control_ratio, c_pairs = slots_read(control)
        calibration = ph["interleaved calibration"]
        calibration_ratio, k_pairs = slots_read(calibration)
        missed |= (
            ratio < GOAL_MIXED_RATIO
            or reports["rate"] < GOAL_REPORTS
            or plain["rate"] < GOAL_RATE
            or plain["p99_ms"] >= GOAL_P99_MS
        )
        if args.json:
            continue
        print(
            f"{r['db']}: {r['devices']:,} devices (bulk import {r['register_seconds']} s), "
            f"{r['connections']} connections, {r['workers']} worker(s), transport "
            f"{r['tls']}; {args.seconds:g} s per phase after {WARMUP_SECONDS:g} s warm-up; "
            f"load generator scheduled {r['loadgen_sched']}; "
            + (f"shared_buffers {PG_SHARED_BUFFERS}; " if r["db"] == "postgresql" else "")
            + f"machine {r['background_busy']:.0%} busy before, plain Python "
            f"{r['python_msteps_per_s']} M loop steps/s a core at the start, "
            f"{r['python_msteps_per_s_end']} M at the end"
        )
        print(f"  {'phase':<42}{'per s':>9}{'p50 ms':>9}{'p99 ms':>9}{'errors':>8}")
        rows = [
            ("checks, keep-alive, 0 % reports", plain, ph["checks"]),
            (
                f"checks, keep-alive, {args.failure_share:.0%} failure reports",
                mixed,
                ph["checks+failures"],
            ),
            ("  (its failure reports)", ph["checks+failures"].get("report"), ph["checks+failures"]),
            (
                "  same, reports on the checks' connections",
                (ph.get("checks+failures, shared") or {}).get("check"),
                ph.get("checks+failures, shared") or {},
            ),
            ("checks, keep-alive, 0 % reports, after", after, ph["checks after"]),
            ("failure reports alone", reports, ph["reports"]),
            (f"interleaved {SLOT_SECONDS:g} s slots: checks, 0 %", inter["check"], inter),
            (
                f"  checks, {args.failure_share:.0%} failure reports",
                inter["mixed check"],
                inter,
            ),
            ("  (their failure reports)", inter.get("mixed report"), inter),
            ("control slots: checks, 0 %", control["check"], control),
            (
                f"  checks, {args.failure_share:.0%} checks through the app",
                control["mixed check"],
                control,
            ),
            ("  (their checks through the app)", control.get("mixed app check"), control),
            ("calibration slots: checks, 0 %", calibration["check"], calibration),
            (
                f"  checks, {args.failure_share:.0%} plain checks as reports",
                calibration["mixed check"],
                calibration,
            ),
            ("  (their plain checks)", calibration.get("mixed plain check"), calibration),
        ]
        if "new connections" in ph:
            rows.append(
                (
                    f"checks, new {r['tls'].upper()} connection each",
                    ph["new connections"]["check"],
                    ph["new connections"],
                )
            )
        for name, m, whole in rows:
            if m:
                print(
                    f"  {name:<42}{m['rate']:>9,.0f}{m['p50_ms']:>9.1f}{m['p99_ms']:>9.1f}"
                    f"{whole['errors']:>8}"
                )
            for key in ("first_error",):
                if whole.get(key) and m is not None and name.startswith(("checks", "failure")):
                    print(f"    first error: {whole[key]}")
        for label, key in (
            ("checks", "checks"),
            ("checks + failures", "checks+failures"),
            ("checks after", "checks after"),
            ("reports", "reports"),
        ):
            whole = ph[key]
            n = sum(m["rate"] for m in (whole.get("check"), whole.get("report")) if m)
            cpu = whole.get("cpu") or {}
            if n and cpu:
                per = {k: v / whole["cpu_seconds"] / n * 1e6 for k, v in cpu.items()}
                other = cpu.get("other", 0.0) / whole["cpu_seconds"] / (os.cpu_count() or 1)
                print(
                    f"    CPU per request, {label}: server {per['server']:.0f} us, database "
                    f"{per['database']:.0f} us (background {per.get('db_background', 0):.0f}), "
                    f"load generator {per['load']:.0f} us (other work: {other:.0%} of the machine)"
                )
        print(
            "  HTTP floor (benchmarks/asgi_floor.py: the same server stack, workers and load; "
            "no update server; plain HTTP):"
        )
        for burn, whole in r["floor"].items():
            m = whole["check"]
            server_us = whole["cpu"]["server"] / whole["cpu_seconds"] / m["rate"] * 1e6
            what = "answering at once" if burn == "0" else f"spending {burn} us of CPU a request"
            share = (  # the keep-alive checks went over TLS: not the same load
                f"; keep-alive checks are {plain['rate'] / m['rate']:.0%} of it"
                if r["tls"] == "none"
                else ""
            )
            print(
                f"    an app {what}: {m['rate']:,.0f}/s, p99 {m['p99_ms']:.1f} ms, server "
                f"{server_us:.0f} us a request{share}"
            )
        shared = ph.get("checks+failures, shared")
        report_share = _report_share(inter)
        print(
            "  failure reports: "
            + (
                f"on {2 * args.connections} connections of their own, one for each "
                f"{args.failure_share:.0%} share the checks earned (the checks keep their "
                f"{args.connections}); they were {report_share:.1%} of the slots' requests"
                if args.reports_on == "own"
                else f"on the checks' {args.connections} connections"
            )
            + (
                " - BEHIND: more report connections needed"
                if report_share < 0.9 * args.failure_share
                else ""
            )
        )
        if shared:
            print(
                "  the same with each report on a check's connection (each waits for its "
                f"answer: fewer connections check meanwhile): "
                f"{shared['check']['rate'] / ((plain['rate'] + after['rate']) / 2):.0%} of the "
                "checks alone (phases)"
            )
        print(
            f"  checks with {args.failure_share:.0%} failure reports / without: interleaved "
            f"slots {ratio:.0%}"
            + (
                f" (slot by slot: median {_median(pairs):.0%}, {min(pairs):.0%} - "
                f"{max(pairs):.0%} over {len(pairs)} slots)"
                if pairs
                else ""
            )
            + f" (goal >= {GOAL_MIXED_RATIO:.0%}; checks and reports together "
            f"{served:.0%}); phases (against the mean of "
            f"before and after) {sequential:.0%}; reports {reports['rate']:,.0f}/s (goal >= "
            f"{GOAL_REPORTS:,}); keep-alive checks goal >= {GOAL_RATE:,}/s, p99 < "
            f"{GOAL_P99_MS:g} ms"
        )
        cost = r["report_cost"]
        if cost:
            print(
                f"  a failure report costs the machine (server, database, load generator) "
                f"{cost['alone']:.2f} checks alone, {cost['mixed']:.2f} in the mix (a check: "
                f"{cost['check_us']:.0f} us); for {GOAL_MIXED_RATIO:.0%} with "
                f"{args.failure_share:.0%} reports it may cost {cost_limit(args.failure_share):.2f}"
            )
        print(
            f"  control: checks with {args.failure_share:.0%} of the requests checks the app "
            f"answers (no write) / without: interleaved slots {control_ratio:.0%}"
            + (f" (slot by slot: median {_median(c_pairs):.0%})" if c_pairs else "")
            + " (what "
            "mixing in any request the protocol does not answer costs the checks here)"
        )
        print(
            f"  calibration: checks with {args.failure_share:.0%} of the requests plain checks "
            f"on the report connections / without: interleaved slots {calibration_ratio:.0%}"
            + (f" (slot by slot: median {_median(k_pairs):.0%})" if k_pairs else "")
            + f" (a request that costs a check: {1 - args.failure_share:.0%} if the method "
            "reads true)"
        )
        print(
            f"  promote to 10 % (cohort count) {r['promote_seconds']} s; an inventory page "
            f"half-way through {r['inventory_page_ms']} ms; release counts "
            f"{r['release_counts']}"
        )
        d = r["directory"]
        print(
            f"  device directory (each worker): {d['state']}, {d['credentials']:,} credentials, "
            f"{d['seconds']} s from ready to loaded; workers' memory (RSS) "
            f"{', '.join(f'{m:,.0f}' for m in d['worker_rss_mb'])} MB"
        )
    return 1 if args.strict and missed else 0


if __name__ == "__main__":
    sys.exit(main())
