"""A whole fleet of virtual boards updating from the real server: a 10% cohort first, then
everyone; a release that fails its health check halts itself; a download cut off resumes;
power cuts during download and install leave a bootable board that finishes later."""

from __future__ import annotations

import hashlib
import itertools
import re
from pathlib import Path

import pytest
from ota_support import World, ota_world

from mpseal.fleet.rollout import cohort_bucket

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first

FLEET = 10


@pytest.fixture
def world(db_url: str, project: Path, tmp_path: Path):
    """The OTA world on SQLite and on a real PostgreSQL (conftest's db_url)."""
    with ota_world(tmp_path, db_url, project) as w:
        yield w


def fleet_ids(release_id: int, percent: float) -> list[str]:
    """FLEET hardware ids, exactly one of them in the release's ``percent`` cohort.

    Random ids leave a 10 % cohort of 10 boards empty in about 35 % of runs (0.9**10), and
    then the test checks nothing; the even spread of cohort_bucket is the fleet tests' job.
    """
    inside: list[str] = []
    outside: list[str] = []
    for i in itertools.count():
        hw = hashlib.sha256(b"fleet board %d" % i).hexdigest()[:16]
        (inside if cohort_bucket(release_id, hw) < percent else outside).append(hw)
        if inside and len(outside) >= FLEET - 1:
            return inside[:1] + outside[: FLEET - 1]
    raise AssertionError("unreachable")


def running(board) -> str:
    ran = board.boot().ran()
    return ran[-1][1] if ran else ""


# A fleet of ten virtual boards through three releases is the suite's longest server test
# (90 s a database): it runs on PostgreSQL, whose report path is its own
# (releasestore._record_reports_pg); the same halt on SQLite, the default, is
# test_server_rollout's test_release_halts_itself_when_too_many_devices_fail.
@pytest.mark.parametrize("db_url", ["postgresql"], indirect=True)
def test_staged_rollout_cohort_then_everyone_then_a_bad_release_halts(world: World) -> None:
    v1 = world.release("1.0.0", 1)
    rid = world.publish(world.release("2.0.0", 2), percent=0)  # uploaded, offered to nobody
    boards = [world.board(v1, hardware_id=hw) for hw in fleet_ids(rid, 10)]
    with world.admin() as admin:
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 10}).status_code == 200
        )
    in_cohort = {b.hardware_id for b in boards if cohort_bucket(rid, b.hardware_id) < 10}
    assert len(in_cohort) == 1
    for b in boards:
        expected = "staged" if b.hardware_id in in_cohort else "none"
        assert world.ota(b) == {"result": expected}, b.hardware_id
    for b in boards:  # the cohort boots 2.0.0 on trial, confirms and reports
        assert running(b) == ("2.0.0" if b.hardware_id in in_cohort else "1.0.0")
    with world.admin() as admin:
        assert (
            admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100}).status_code
            == 200
        )
        for b in boards:
            world.ota(b)
            assert running(b) == "2.0.0"
        rel = admin.get(f"/v1/admin/releases/{rid}").json()["release"]
        assert rel["state"] == "active"

    # 3.0.0 fails its own health check: each trial crashes, is reverted, and reports it.
    bad = world.release("3.0.0", 3, health="raise RuntimeError('sensor offline')")
    rid3 = world.publish(bad, percent=100)
    results = []
    for b in boards:
        res = world.ota(b)
        results.append(res)
        if res == {"result": "staged"}:
            assert running(b) == "2.0.0"  # trial crashed, reverted, 2.0.0 reports the rollback
    with world.admin() as admin:
        rel = admin.get(f"/v1/admin/releases/{rid3}").json()["release"]
    assert rel["state"] == "halted", rel
    # The reason counts the crashed trials as rolled back (and nothing else).
    assert re.fullmatch(
        r"(\d+) of \d+ devices failed \(\1 rolled back\), above the 20% limit", rel["halt_reason"]
    ), rel["halt_reason"]
    staged = sum(r == {"result": "staged"} for r in results)
    assert 2 <= staged < FLEET  # the halt stopped the rest of the fleet from trying
    assert all(running(b) == "2.0.0" for b in boards)


def test_cut_download_resumes_with_range(world: World) -> None:
    board = world.board(world.release("1.0.0", 1))
    full = world.release("2.0.0", 2)
    world.publish(full)
    offer = world.admin().get("/v1/admin/releases").json()["releases"][0]
    path = f"/v1/artifacts/{offer['file_sha256']}.mpseal"
    world.mirror.answer(path, 200, full[: len(full) // 3])  # the line drops after a third
    res = world.ota(board)
    assert "download" in str(res.get("failed")) or "closed" in str(res.get("failed")), res
    world.mirror.rules.pop(path)
    assert world.ota(board) == {"result": "staged"}
    # The second round asked only for what it did not have yet.
    assert [r for p, r in world.mirror.ranges if p == path] == [None, f"bytes={len(full) // 3}-"]
    assert running(board) == "2.0.0"


# The cuts are the board's; the server only serves the download: one database (the default).
@pytest.mark.parametrize("db_url", ["sqlite"], indirect=True)
def test_power_cut_during_download_and_install(world: World) -> None:
    """Power lost at sampled flash writes of an OTA round (download and stage): the board
    boots a valid release every time, and a later round completes the update."""
    board = world.board(world.release("1.0.0", 1))
    world.publish(world.release("2.0.0", 2))
    before = board.flash.read_bytes()
    res = board.command("ota", cut=10_000)
    assert res.replies()[-1] == {"result": "staged"}
    total = _writes_of_a_round(board, before)
    cuts = sorted(set(range(1, total, max(1, total // 12))) | {total - 1})
    for n in cuts:
        board.flash.write_bytes(before)
        res = board.command("ota", cut=n)
        assert "PowerCut" in res.stdout + res.stderr, n
        after = running(board)  # a valid release boots after the cut: old, or new if staged
        assert after in ("1.0.0", "2.0.0"), n
        if after == "1.0.0":  # a later round finishes the update
            out = board.command("ota").replies()[-1]
            assert out == {"result": "staged"}, (n, out)
            assert running(board) == "2.0.0", n


def _writes_of_a_round(board, before: bytes) -> int:
    """How many block writes one whole OTA round makes (binary search on the cut point)."""
    lo, hi = 1, 4096
    while lo < hi:
        mid = (lo + hi) // 2
        board.flash.write_bytes(before)
        res = board.command("ota", cut=mid)
        if "PowerCut" in res.stdout + res.stderr:
            lo = mid + 1
        else:
            hi = mid
    board.flash.write_bytes(before)
    return lo
