"""Delta updates end to end: the real server makes deltas at publish time from the releases
its inventory says devices run and offers each device the one for its version; the
device client in the MicroPython VM rebuilds the release from its running slot and the
guard verifies it. A delta damaged or forged in transit is refused and the device takes
the full artifact in the same round."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from ota_support import World, guard_log, ota_world

from mpseal.formats import delta as delta_mod

BIG_APP = """\
from mpseal_guard import confirm
import mpseal_ota
TABLE = {table!r}
LIMIT = {limit}
def main():
    print("running {{version}}")
    confirm()
    mpseal_ota.report_boot()
"""


@pytest.fixture
def world(project: Path, tmp_path: Path):
    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as w:
        yield w


@pytest.fixture
def any_db_world(project: Path, tmp_path: Path, db_url: str):
    """The fleet test on SQLite and on a real PostgreSQL (the inventory query, the deltas)."""
    with ota_world(tmp_path, db_url, project) as w:
        yield w


def build(world: World, version: str, counter: int, limit: int) -> bytes:
    from release_support import release

    main = BIG_APP.format(table=[f"entry number {i}" for i in range(200)], limit=limit)
    return release(world.project, version, counter, main)


def release_info(world: World, rid: int) -> dict:
    with world.admin() as admin:
        r = admin.get(f"/v1/admin/releases/{rid}")
        assert r.status_code == 200, r.text
        return r.json()["release"]


def gets(world: World, since: int, prefix: str) -> list[str]:
    return [p for p in world.mirror.seen[since:] if p.startswith("GET /v1/" + prefix)]


def updated_by_delta(world: World, board, version: str) -> None:
    mark = len(world.mirror.seen)
    assert world.ota(board) == {"result": "staged"}
    assert len(gets(world, mark, "deltas/")) == 1, world.mirror.seen[mark:]
    assert gets(world, mark, "artifacts/") == [], "the full artifact was downloaded"
    assert any(f"release {version} rebuilt from a" in ln for ln in guard_log(board))
    report = board.boot()
    assert [r[1] for r in report.ran()] == [version]
    assert any(ln.startswith(f"committed hello {version}") for ln in report.guard_lines)


def test_fleet_updated_by_deltas_from_two_base_releases(any_db_world: World) -> None:
    world = any_db_world
    v1 = build(world, "1.0.0", 1, 10)
    world.publish(v1)
    a, b = world.board(v1), world.board(v1)
    assert world.ota(a) == {"result": "none"} and world.ota(b) == {"result": "none"}
    v2 = build(world, "1.1.0", 2, 11)
    r2 = world.publish(v2)
    info = release_info(world, r2)
    assert [d["from"] for d in info["deltas"]] == ["1.0.0"]
    updated_by_delta(world, b, "1.1.0")
    assert world.ota(b) == {"result": "none"}  # the inventory learns b runs 1.1.0
    v3 = build(world, "1.2.0", 3, 12)
    r3 = world.publish(v3)
    deltas = {d["from"]: d for d in release_info(world, r3)["deltas"]}
    assert set(deltas) == {"1.0.0", "1.1.0"}
    for d in deltas.values():
        assert d["size"] <= len(v3) // 4, (d, len(v3))
    updated_by_delta(world, a, "1.2.0")  # from 1.0.0
    updated_by_delta(world, b, "1.2.0")  # from 1.1.0
    assert world.ota(a) == {"result": "none"}


def _offered_delta(world: World, rid: int) -> str:
    (d,) = release_info(world, rid)["deltas"]
    return f"/v1/deltas/{d['sha256']}.mpsd"


def full_fallback(world: World, board, version: str, reason: str) -> None:
    mark = len(world.mirror.seen)
    assert world.ota(board) == {"result": "staged"}
    assert len(gets(world, mark, "artifacts/")) == 1, world.mirror.seen[mark:]
    assert any(
        "delta refused, fetching the full release" in ln and reason in ln for ln in guard_log(board)
    ), guard_log(board)[-4:]
    assert [r[1] for r in board.boot().ran()] == [version]


def test_delta_tampered_in_transit_is_refused_with_full_artifact_fallback(world: World) -> None:
    v1 = build(world, "1.0.0", 1, 10)
    world.publish(v1)
    board = world.board(v1)
    assert world.ota(board) == {"result": "none"}
    rid = world.publish(build(world, "1.1.0", 2, 11))
    path = _offered_delta(world, rid)
    real = world.admin().get(path)  # an admin client is not a device: fetch it as the mirror
    assert real.status_code in (401, 403)
    data = bytearray((Path(world.tmp) / "artifacts" / path.rsplit("/", 1)[1]).read_bytes())
    data[-10] ^= 0xFF  # one bit pattern flipped in the literal stream
    world.mirror.answer(path, 200, bytes(data))
    full_fallback(world, board, "1.1.0", "delta")


def test_delta_for_another_signed_release_is_refused_with_full_fallback(
    world: World, tmp_path: Path
) -> None:
    """A mirror serves a well-formed delta that rebuilds another validly signed release
    (mix-and-match): the timestamp names another manifest, so it is refused."""
    v1 = build(world, "1.0.0", 1, 10)
    world.publish(v1)
    board = world.board(v1)
    assert world.ota(board) == {"result": "none"}
    other = build(world, "1.0.5", 1, 99)  # signed by the release key, never published
    rid = world.publish(build(world, "1.1.0", 2, 11))
    forged = delta_mod.make(v1, other)
    world.mirror.answer(_offered_delta(world, rid), 200, forged)

    def resize(body: bytes) -> bytes:  # the offer names the forged delta's size
        offer = json.loads(body)
        offer["delta"]["size"] = len(forged)
        return json.dumps(offer).encode()

    world.mirror.rewrite["/v1/device/check"] = resize
    full_fallback(world, board, "1.1.0", "mix-and-match")
