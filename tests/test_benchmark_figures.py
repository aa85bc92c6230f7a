"""The server benchmark's report cost (benchmarks/server.py ``report_cost``): what a
failure report costs the machine, in checks, and the most it may cost for the goal. The
figures are read from the phases' CPU; a wrong formula would send the next change to the
wrong place."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks" / "server.py"


@pytest.fixture(scope="module")
def bench() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_server", BENCH)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def phase(checks: float, reports: float, us: dict[str, float], seconds: float = 10.0) -> Any:
    """A phase's figures as run_one keeps them: rates, and CPU seconds by role over
    ``seconds`` for ``us`` microseconds of each role a request."""
    n = checks + reports
    return {
        "check": {"rate": checks} if checks else None,
        "report": {"rate": reports} if reports else None,
        "cpu": {role: v * n * seconds / 1e6 for role, v in us.items()},
        "cpu_seconds": seconds,
    }


def test_a_report_costing_the_limit_keeps_the_goal_share_of_the_checks(bench: ModuleType) -> None:
    limit = bench.cost_limit(0.05)
    assert limit == pytest.approx(2.111, abs=0.001)
    share = 0.05
    assert (1 - share) / (1 - share + share * limit) == pytest.approx(bench.GOAL_MIXED_RATIO)


def test_report_cost_reads_alone_and_mixed_costs_in_checks(bench: ModuleType) -> None:
    check = {"server": 80.0, "database": 5.0, "db_background": 0.0, "load": 15.0}  # 100 us
    # a report: 250 us alone; in the mix 400 us (what mixing costs shows there)
    report = {"server": 150.0, "database": 80.0, "db_background": 0.0, "load": 20.0}
    mixed_us = 0.95 * 100 + 0.05 * 400
    phases = {
        "checks": phase(10_000, 0, check),
        "checks after": phase(9_000, 0, check),
        "reports": phase(0, 4_000, report),
        "checks+failures": phase(9_500, 500, {"server": mixed_us, "load": 0.0}),
    }
    cost = bench.report_cost(phases)
    assert cost == pytest.approx({"check_us": 100.0, "alone": 2.5, "mixed": 4.0})
    # a role the machine did other work in is not the benchmark's: left out
    phases["reports"]["cpu"]["other"] = 99.0
    assert bench.report_cost(phases)["alone"] == pytest.approx(2.5)


def test_report_cost_is_none_without_cpu_figures_or_reports(bench: ModuleType) -> None:
    check = {"server": 100.0}
    phases = {
        "checks": phase(10_000, 0, check),
        "checks after": phase(10_000, 0, check),
        "reports": phase(0, 4_000, {"server": 200.0}),
        "checks+failures": phase(9_500, 0, check),  # no report was answered
    }
    assert bench.report_cost(phases) is None
    phases["checks+failures"] = phase(9_500, 500, check)
    phases["reports"]["cpu"] = {}
    assert bench.report_cost(phases) is None


def test_slot_ratios_set_each_mixed_slot_against_its_neighbours(bench: ModuleType) -> None:
    # the machine slows from slot 2 on: each mixed slot is read against its own neighbours
    counts = {"0": 1000, "1": 900, "2": 800, "3": 720, "4": 800, "5": 760}
    ratios = bench.slot_ratios(counts)
    assert ratios == pytest.approx([900 / 900, 720 / 800, 760 / 800])
    assert bench._median(ratios) == pytest.approx(0.95)
    assert bench._median([0.8, 0.9]) == pytest.approx(0.85)
    assert bench.slot_ratios({"1": 500}) == []  # no slot without reports beside it


def test_checks_earn_reports_only_in_the_report_slots(bench: ModuleType) -> None:
    """Interleaved pacing: the warm-up and every second slot from the start (1, 3, ...)
    earn reports (a share of 1/4: one report each three checks), the slots between earn
    none; an earned report goes to an idle report connection at once."""
    import asyncio
    import time

    class Reporter:
        sent = 0

        def _send(self) -> None:
            Reporter.sent += 1

    async def go() -> list[tuple[bool, int]]:
        slot = 0.5
        start = time.perf_counter() + slot / 2
        paced = bench._Paced(0.25, slot, start)
        paced.idle.extend(Reporter() for _ in range(50))
        seen = []
        for at in (-0.1, 0.25, 0.75, 1.25):  # mid warm-up, slots 0, 1 and 2
            await asyncio.sleep(max(0.0, start + at - time.perf_counter()))
            before = Reporter.sent
            for _ in range(6):  # six checks
                if paced.on:
                    paced.earn()
            seen.append((paced.on, Reporter.sent - before))
        return seen

    assert asyncio.run(go()) == [(True, 2), (False, 0), (True, 2), (False, 0)]


def test_the_load_generator_runs_as_a_batch_task(bench: ModuleType) -> None:
    import os
    import subprocess

    code = (
        "import importlib.util, os, sys;"
        f"s = importlib.util.spec_from_file_location('b', {str(BENCH)!r});"
        "m = importlib.util.module_from_spec(s); s.loader.exec_module(m);"
        "m.as_batch_task(); print(os.sched_getscheduler(0) == os.SCHED_BATCH)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "True"
    assert os.sched_getscheduler(0) != os.SCHED_BATCH  # this process untouched
