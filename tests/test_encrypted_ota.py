"""An encrypted release over the real update server: published once with its key, the same
encrypted bytes downloaded by every device, its key wrapped per device in the check reply
(formats/encrypted.py). The boards are virtual unix boards provisioned like a fleet's."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from ota_support import World, guard_log, ota_world
from server_support import ADMIN_TOKEN
from test_encrypted import SECRET, encrypted_release, project_at

from mpseal.formats import artifact, encrypted
from mpseal.packaging.package import read_release_key
from mpseal.server.client import AdminClient

MAIN = """\
import recipe
from mpseal_guard import confirm
import mpseal_ota
def main():
    print("running {version}", recipe.SECRET)
    confirm()
    mpseal_ota.report_boot()
"""


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    tmp = tmp_path_factory.mktemp("encota")
    project = project_at(tmp / "proj")
    with ota_world(tmp, f"sqlite:///{tmp / 'fleet.db'}", project) as w:
        yield w


def publish(world: World, blob: bytes, key: bytes | None) -> int:
    headers = {encrypted.PUBLISH_HEADER: key.hex()} if key else {}
    with world.admin() as admin:
        r = admin.post("/v1/admin/releases?channel=stable", content=blob, headers=headers)
        assert r.status_code == 201, r.text
        rid = r.json()["release"]["id"]
        assert key is None or key.hex() not in r.text
        r = admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})
        assert r.status_code == 200, r.text
    return int(rid)


@pytest.fixture(scope="module")
def fleet(world: World) -> dict[str, Any]:
    """Two boards on plain 1.0.0, both updated over the air to encrypted 1.1.0 and booted;
    what each round did is recorded here, so that no test depends on another's run."""
    v1 = world.release("1.0.0", 1)
    publish(world, v1, None)
    boards = {"a": world.board(v1), "b": world.board(v1)}
    v2 = encrypted_release(world.project, "1.1.0", 2, MAIN)
    key = read_release_key(world.proj.artifact_path())
    assert key is not None and artifact.decode(v2).manifest.encrypted is not None
    # Without its key the server refuses it: it could not give any device the key; with
    # a key that does not open it, or a key for a plain release, too.
    with world.admin() as admin:
        url = "/v1/admin/releases?channel=stable"
        refused = admin.post(url, content=v2)
        wrong = admin.post(url, content=v2, headers={encrypted.PUBLISH_HEADER: "00" * 32})
        plain = admin.post(url, content=v1, headers={encrypted.PUBLISH_HEADER: key.hex()})
    # `mpseal release publish`'s client sends the .key beside the artifact with it.
    with AdminClient(world.server_url, ADMIN_TOKEN, world.ca_dir / "root.pem") as client:
        rid = client.publish(world.proj.artifact_path(), "stable")["id"]
    with world.admin() as admin:
        r = admin.post(f"/v1/admin/releases/{rid}/promote", json={"percent": 100})
        assert r.status_code == 200, r.text
    out: dict[str, Any] = {"boards": boards, "v2": v2, "key": key, "refused": refused}
    out["wrong"], out["plain"] = wrong, plain
    # A new board provisioned straight onto the encrypted release (its key wrapped for it).
    out["provisioned"] = world.board(v2, release_key=key)
    for name, board in boards.items():
        mark = len(world.mirror.seen)
        staged = world.ota(board)
        downloads = [p for p in world.mirror.seen[mark:] if "/artifacts/" in p]
        report = board.boot()
        out[name] = {
            "staged": staged,
            "log": guard_log(board),
            "downloads": downloads,
            "report": report,
            "again": world.ota(board),
            "slot": board.get("/mpseal/slot-b.mpseal"),
        }
    return out


def test_encrypted_release_needs_its_key_to_be_published(fleet: dict[str, Any]) -> None:
    r = fleet["refused"]
    assert r.status_code == 400 and "encrypted" in r.text, r.text
    assert fleet["wrong"].status_code == 400, fleet["wrong"].text  # it does not open with it
    assert fleet["plain"].status_code == 400 and "not encrypted" in fleet["plain"].text


def test_encrypted_release_updates_boards_over_the_real_server(fleet: dict[str, Any]) -> None:
    for name in ("a", "b"):
        done = fleet[name]
        assert done["staged"] == {"result": "staged"}, done["log"][-3:]
        assert len(done["downloads"]) == 1, "the full artifact: no delta to an encrypted one"
        report = done["report"]
        assert [r[1] for r in report.ran()] == ["1.1.0"], report.output
        assert f"running 1.1.0 {SECRET}" in report.output
        assert any(ln.startswith("committed hello 1.1.0") for ln in report.guard_lines)
        assert done["again"] == {"result": "none"}


def test_a_board_is_provisioned_onto_an_encrypted_release(fleet: dict[str, Any]) -> None:
    board = fleet["provisioned"]
    slot = board.get("/mpseal/slot-a.mpseal")
    assert slot[: len(fleet["v2"])] == fleet["v2"] and len(slot) == len(fleet["v2"]) + 40
    assert any("booting hello 1.1.0" in ln for ln in guard_log(board))


def test_the_download_is_the_same_ciphertext_for_every_device_and_only_the_key_differs(
    fleet: dict[str, Any],
) -> None:
    """What travels (and sits in the slot) is the encrypted artifact the server stores; the
    key records differ per device."""
    v2 = fleet["v2"]
    slots = {n: fleet[n]["slot"] for n in ("a", "b")}
    for data in slots.values():
        assert data[: len(v2)] == v2 and SECRET.encode() not in data
    assert slots["a"][len(v2) :] != slots["b"][len(v2) :]


def test_storage_copy_of_an_encrypted_slot_from_another_board_does_not_open(
    fleet: dict[str, Any],
) -> None:
    """Board a's slot file copied onto board b (over b's own copy of the same release): b
    cannot open it and falls back to its other slot; it never runs a's copy."""
    b = fleet["boards"]["b"]
    b.put_many({"/mpseal/slot-b.mpseal": fleet["a"]["slot"]})
    report = b.boot()
    assert any("does not open on this device" in ln for ln in report.guard_lines), report.output
    assert "1.1.0" not in [r[1] for r in report.ran()]
    assert SECRET not in report.output
