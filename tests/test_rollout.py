"""Staged rollout policy (mpseal.fleet.rollout), pure: cohorts, groups, pins, what a device
would accept on its own, which release a channel names, and when a release halts."""

from __future__ import annotations

from dataclasses import replace

import pytest

from mpseal.fleet.rollout import (
    DeviceView,
    HaltPolicy,
    ReleaseStats,
    ReleaseView,
    Running,
    choose,
    cohort_bucket,
    current_releases,
    halt_reason,
    in_rollout,
)

REL = ReleaseView(
    id=7,
    app="hello",
    board="esp32",
    channel="stable",
    version="1.2.0",
    counter=4,
    manifest_sha256="a" * 64,
    percent=100.0,
)
DEV = DeviceView(id=1, hardware_id="hw-1", group="default")
RUN = Running(app="hello", board="esp32", version="1.1.0", counter=3)
OFFERED = {"a" * 64}


def devices(n: int) -> list[DeviceView]:
    return [DeviceView(i, f"hw-{i:05d}", "default") for i in range(n)]


def test_cohort_bucket_is_stable_uniform_and_per_release() -> None:
    assert cohort_bucket(1, "hw-1") == cohort_bucket(1, "hw-1")
    buckets = [cohort_bucket(1, f"hw-{i}") for i in range(20_000)]
    assert all(0 <= b < 100 for b in buckets)
    for lo in range(0, 100, 10):  # each decile holds about a tenth
        share = sum(lo <= b < lo + 10 for b in buckets) / len(buckets)
        assert 0.09 < share < 0.11
    # Each release draws its own cohort: the same devices are not always first.
    first = {i for i in range(2000) if cohort_bucket(1, f"hw-{i}") < 10}
    other = {i for i in range(2000) if cohort_bucket(2, f"hw-{i}") < 10}
    assert len(first & other) < len(first) / 2


@pytest.mark.parametrize("percent", [1, 10, 50])
def test_percent_cohort_size_and_widening_only_adds(percent: float) -> None:
    fleet = devices(5000)
    small = {d.hardware_id for d in fleet if in_rollout(replace(REL, percent=percent), d)}
    wider = {d.hardware_id for d in fleet if in_rollout(replace(REL, percent=percent * 2), d)}
    assert abs(len(small) - 50 * percent) < 5000 * 0.02 + 10
    assert small <= wider


def test_groups_and_pins_are_in_the_rollout_whatever_the_percent() -> None:
    rel = replace(REL, percent=0.0, groups=frozenset({"beta"}), pins=frozenset({"hw-pinned"}))
    assert in_rollout(rel, replace(DEV, group="beta"))
    assert in_rollout(rel, replace(DEV, hardware_id="hw-pinned"))
    assert not in_rollout(rel, DEV)
    assert not in_rollout(replace(REL, percent=0.0), DEV)
    assert in_rollout(replace(REL, percent=100.0), DEV)


def test_only_what_the_device_would_accept_is_offered() -> None:
    assert choose([REL], DEV, RUN, OFFERED) == REL
    assert choose([REL], DEV, replace(RUN, board="rp2"), OFFERED) is None  # other board
    assert choose([REL], DEV, replace(RUN, app="other"), OFFERED) is None
    assert choose([REL], DEV, replace(RUN, counter=5), OFFERED) is None  # below its counter
    assert choose([REL], DEV, replace(RUN, counter=4), OFFERED) == REL  # equal is fine
    assert choose([REL], DEV, replace(RUN, version="1.2.0"), OFFERED) is None  # runs it
    assert choose([REL], DEV, RUN, set()) is None  # not in the signed timestamp
    assert choose([REL], replace(DEV, failed=frozenset({7})), RUN, OFFERED) is None
    assert choose([replace(REL, state="paused")], DEV, RUN, OFFERED) is None
    assert choose([replace(REL, state="halted")], DEV, RUN, OFFERED) is None


def test_a_channel_names_the_newest_promoted_release_per_app_and_board() -> None:
    old = replace(REL, id=3, version="1.1.0", manifest_sha256="b" * 64)
    new = replace(REL, id=9, version="1.3.0", manifest_sha256="c" * 64, percent=0.0)
    rp2 = replace(REL, id=5, board="rp2", manifest_sha256="d" * 64)
    assert current_releases([old, REL, new, rp2]) == [REL, rp2]  # unpromoted 1.3.0 left out
    assert current_releases([old, replace(REL, state="halted")]) == [old]  # halted: back to old
    assert current_releases([old, replace(REL, state="paused")]) == [old]  # paused: too


def test_halting_or_lowering_never_downgrades_devices_that_updated() -> None:
    old = replace(REL, id=3, version="1.1.0", counter=4, manifest_sha256="b" * 64)
    halted = replace(REL, state="halted")
    # A device on the halted 1.2.0 is not pushed back to 1.1.0 ...
    on_new = replace(RUN, version="1.2.0", counter=4)
    assert choose([old, halted], DEV, on_new, {"b" * 64}) is None
    # ... while a device still on 1.0.0 gets 1.1.0 again.
    assert choose([old, halted], DEV, replace(RUN, version="1.0.0"), {"b" * 64}) == old


def test_halt_needs_enough_attempts_and_a_failure_share_above_the_limit() -> None:
    policy = HaltPolicy(min_attempts=5, max_failure_ratio=0.2)
    assert halt_reason(ReleaseStats(attempts=4, rolled_back=4), policy) is None  # too few
    assert halt_reason(ReleaseStats(attempts=5, updated=4, refused=1), policy) is None  # 20%
    reason = halt_reason(
        ReleaseStats(attempts=5, updated=3, rolled_back=1, trial_timeouts=1), policy
    )
    assert reason == (
        "2 of 5 devices failed (1 rolled back, 1 trial not confirmed), above the 20% limit"
    )
    stats = ReleaseStats(attempts=10, updated=2, refused=1, rolled_back=1, trial_timeouts=1)
    assert (stats.failed, stats.in_progress) == (3, 5)


def test_after_a_resume_the_halt_counts_only_what_came_after() -> None:
    """Resumed after a halt: the devices that had finished then (confirmed or failed) are
    its base; the ones still in progress then and any later ones are counted afresh."""
    policy = HaltPolicy(min_attempts=5, max_failure_ratio=0.2)
    halted = ReleaseStats(attempts=10, updated=3, rolled_back=4, cohort=100)  # 3 in progress
    assert halt_reason(halted, policy) is not None
    base = halted.finished()
    assert (base.attempts, base.failed, base.in_progress) == (7, 4, 0)
    resumed = replace(halted, base=base)
    assert halt_reason(resumed, policy) is None  # the same failures: no halt at once
    window = resumed.since_resume()
    assert (window.attempts, window.failed, window.in_progress) == (3, 0, 3)
    # One of the three in progress then rolls back: 1 of 3, too few devices to decide.
    later = replace(resumed, rolled_back=5)
    assert halt_reason(later, policy) is None
    # Three new devices, two confirm and one refuses: 2 failed of 6, above 20 %.
    later = replace(resumed, attempts=13, updated=5, rolled_back=5, refused=1)
    assert halt_reason(later, policy) == (
        "2 of 6 devices failed since it was resumed (1 refused, 1 rolled back), above the 20% limit"
    )
    # A device that had confirmed and rolls back later is a failure since the resume
    # (the counts never go below the base, whatever order reports arrive in).
    odd = replace(resumed, updated=2, rolled_back=5).since_resume()
    assert (odd.updated, odd.rolled_back, odd.attempts) == (0, 1, 3)
