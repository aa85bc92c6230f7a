"""Releases encrypted at rest and bound to the device (formats/encrypted.py): a copy of the
storage (an SD card or USB drive, the slot files copied off the board's filesystem) opens
neither on the host nor on another board, and still opens on the board it was made for.

The virtual board's stand-in for machine.unique_id() is the file /mpseal/sim-id: that one
file plays the silicon and is never part of a copy (as in test_ota_attacks.py)."""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import run_mpseal
from release_support import boot_files_in_a_heap_below_the_image, release

from mpseal.device.sim import SIM_ID, VirtualBoard
from mpseal.errors import BadDataError, FormatError, IntegrityError, MpsealError
from mpseal.formats import artifact, encrypted, fileindex, manifest, romfs
from mpseal.packaging.package import read_release_key
from mpseal.packaging.project import Project

SECRET = "the-recipe-is-42-parts-vanilla"
MAIN = """\
import recipe
from mpseal_guard import confirm, status
def main():
    print("running {version}", recipe.SECRET)
    with open("/rom/data/notes.txt") as f:
        print("notes", f.read().strip())
    print("mount", status()["mount"])
    confirm()
"""


def encrypted_release(
    project: Path,
    version: str = "1.0.0",
    counter: int = 1,
    main: str = MAIN,
    profile: str = "field",
) -> bytes:
    cfg = project / "mpseal.toml"
    text = cfg.read_text()
    if "encrypt = true" not in text:
        cfg.write_text(text.replace("[build]\n", "[build]\nencrypt = true\n", 1))
    app = project / "app"
    (app / "recipe.py").write_text(f"SECRET = {SECRET!r}\n")
    (app / "data").mkdir(exist_ok=True)
    (app / "data" / "notes.txt").write_text(f"notes about {SECRET}\n")
    return release(project, version, counter, main, profile=profile)


def project_at(folder: Path) -> Path:
    res = run_mpseal("init", folder, "--board", "unix", "--name", "hello")
    assert res.returncode == 0, res.stderr
    return folder


@dataclass
class Setup:
    project: Path
    blob: bytes
    key: bytes
    board: VirtualBoard
    tmp: Path

    def fresh_board(self, name: str, hardware_id: str | None = None) -> VirtualBoard:
        """A board with the guard and trust root; ``hardware_id``: the same chip as another."""
        b = VirtualBoard.create(self.tmp / name, flash_size=1024 * 1024)
        if hardware_id is not None:
            b.put(hardware_id.encode() + b"\n", SIM_ID)
        b.install_guard(Project.load(self.project).trust_root(), "field")
        return b


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Setup:
    tmp = tmp_path_factory.mktemp("enc")
    project = project_at(tmp / "proj")
    blob = encrypted_release(project)
    key = read_release_key(Project.load(project).artifact_path())
    assert key is not None
    board = VirtualBoard.create(tmp / "own", flash_size=1024 * 1024)
    board.install(blob, Project.load(project).trust_root(), profile="field", release_key=key)
    return Setup(project, blob, key, board, tmp)


def slot_copy(board: VirtualBoard) -> dict[str, bytes]:
    """What a copy of the storage holds: every file of /mpseal but the chip's id."""
    return {
        f"/mpseal/{name}": board.get(f"/mpseal/{name}")
        for name, is_dir, _ in board.listdir("/mpseal")
        if not is_dir and f"/mpseal/{name}" != SIM_ID
    }


def test_encrypted_release_boots_on_its_board_file_by_file(setup: Setup) -> None:
    """Stock unix firmware has VfsRom, but the encrypted release is served by the
    verified-files mount (decrypted file by file), and the guard says so."""
    report = setup.board.boot(run_for=20)
    assert report.ran() == [("hello", "1.0.0", 1)], report.output
    assert f"running 1.0.0 {SECRET}" in report.output
    assert f"notes notes about {SECRET}" in report.output
    assert "mount verified-files" in report.output
    assert "encrypted release: verified-files mount instead of vfsrom-ram" in report.guard_lines


def test_encrypted_artifact_hides_file_names_and_contents(setup: Setup) -> None:
    """What the server stores and every device downloads: no name, no string of the app."""
    for word in (SECRET, "recipe", "notes.txt", "main.mpy", "running"):
        assert word.encode() not in setup.blob, word
    man = artifact.decode(setup.blob).manifest
    assert man.files is None and man.encrypted is not None
    assert b'"files":null' in artifact.decode(setup.blob).manifest_bytes


def test_storage_copy_of_an_encrypted_slot_does_not_open_on_the_host(setup: Setup) -> None:
    """The copy (slot, key record, config, trust root, log) holds no key: nothing in it
    unwraps the release key, and the ciphertext shows none of the app."""
    copy = slot_copy(setup.board)
    slot = copy["/mpseal/slot-a.mpseal"]
    assert SECRET.encode() not in b"".join(copy.values())
    art_part, record = slot[: len(setup.blob)], slot[len(setup.blob) :]
    assert art_part == setup.blob and len(record) == encrypted.RECORD_LENGTH
    man = artifact.decode(art_part).manifest
    hw = setup.board.hardware_id
    assert not [p for p, data in copy.items() if hw.encode() in data or bytes.fromhex(hw) in data]
    candidates = {
        w
        for data in copy.values()
        for w in re.split(rb'[\s"\',:{}\[\]]+', data)
        if 8 <= len(w) <= 64
    }
    assert candidates
    for c in candidates:
        key = encrypted.unwrap(record, c.decode("latin-1"), man.image_sha256)
        with pytest.raises(IntegrityError):
            encrypted.open_table(man, artifact.decode(art_part).image, key)
    # The real id (which the copy does not hold) opens it: the test is not vacuous.
    key = encrypted.unwrap(record, hw, man.image_sha256)
    files, image = encrypted.decrypt(man, artifact.decode(art_part).image, key)
    assert SECRET.encode() in image and any(f[0] == "recipe.mpy" for f in files)


def test_storage_copy_of_an_encrypted_slot_does_not_open_on_another_board(setup: Setup) -> None:
    other = setup.fresh_board("other")
    other.put_many(slot_copy(setup.board))
    report = other.boot()
    assert report.outcome == "idle", report.output
    assert report.ran() == []
    assert SECRET not in report.output
    assert any("does not open on this device" in ln for ln in report.guard_lines), report.output


def test_storage_copy_of_an_encrypted_slot_opens_on_its_own_board(setup: Setup) -> None:
    """The same copy on a board with the original chip (its flash erased and the copy
    written back): it boots."""
    same = setup.fresh_board("same-chip", hardware_id=setup.board.hardware_id)
    same.put_many(slot_copy(setup.board))
    report = same.boot(run_for=20)
    assert report.ran() == [("hello", "1.0.0", 1)], report.output
    assert f"running 1.0.0 {SECRET}" in report.output


def test_encrypted_release_with_another_boards_key_is_not_staged(setup: Setup) -> None:
    other = setup.fresh_board("wrong-key")
    man = artifact.decode(setup.blob).manifest
    record = encrypted.wrap(setup.key, setup.board.hardware_id, man.image_sha256)
    other.put_many({"/mpseal/incoming.mpseal": setup.blob, "/mpseal/incoming.key": record})
    result = other._call("stage", "/mpseal/incoming.mpseal", "/mpseal/incoming.key")
    assert isinstance(result, dict) and "does not open on this device" in str(result.get("refused"))
    with pytest.raises(MpsealError, match="encrypted"):
        other.install(setup.blob, Project.load(setup.project).trust_root(), profile="field")
    assert not [n for n, _, _ in other.listdir("/mpseal") if n.startswith("slot-")]


# -- the format, on the host -------------------------------------------------------------


def _plain(files: dict[str, bytes]) -> tuple[manifest.Manifest, bytes]:
    image, index = fileindex.append(romfs.write(files), romfs.entries(romfs.write(files)))
    man = manifest.Manifest(
        app="hello",
        version="1.0",
        counter=1,
        board="unix",
        port="unix",
        mpy_version="6.3",
        arch="x64",
        image_sha256=hashlib.sha256(image).hexdigest(),
        image_size=len(image),
        files=index,
    )
    return man, image


def test_encrypted_manifest_round_trips_and_its_sizes_must_agree() -> None:
    plain, image = _plain({"main.mpy": b"M" * 100, "data/a.txt": b"secret text"})
    key = encrypted.new_key()
    outer, stored = encrypted.encrypt(plain, image, key)
    assert manifest.parse(outer.encode()) == outer
    assert plain.files is not None
    rom = image[: plain.files.offset]
    assert encrypted.decrypt(outer, stored, key) == (romfs.entries(rom), rom)
    bad = outer.encode().replace(b'"romfs_size":', b'"romfs_size":1', 1)
    with pytest.raises(FormatError):
        manifest.parse(bad)
    with pytest.raises(BadDataError):
        encrypted.unwrap(b"MPSK\x02" + bytes(35), "aa", outer.image_sha256)


def test_cli_builds_and_installs_an_encrypted_release_with_the_key_beside_it(
    tmp_path: Path,
) -> None:
    """`mpseal build` writes dist/<app>-<version>.key (mode 600) beside the artifact and
    `mpseal sim install` wraps it for the board it installs on."""
    project = project_at(tmp_path / "proj")
    cfg = project / "mpseal.toml"
    cfg.write_text(cfg.read_text().replace("[build]\n", "[build]\nencrypt = true\n", 1))
    assert run_mpseal("build", "-C", project).returncode == 0
    art = project / "dist" / "hello-1.0.0.mpseal"
    key = project / "dist" / "hello-1.0.0.key"
    assert key.stat().st_mode & 0o777 == 0o600
    assert artifact.decode(art.read_bytes()).manifest.encrypted is not None
    sim = tmp_path / "sim"
    assert run_mpseal("sim", "create", "--sim", sim).returncode == 0
    res = run_mpseal("sim", "install", art, "--sim", sim, "-C", project)
    assert res.returncode == 0, res.stderr
    res = run_mpseal("sim", "boot", "--sim", sim)
    assert "encrypted release: verified-files mount" in res.stdout, res.stdout + res.stderr
    key.unlink()  # without its key the board cannot be given the release
    res = run_mpseal("sim", "install", art, "--sim", sim, "-C", project)
    assert res.returncode != 0 and "encrypted" in res.stderr + res.stdout


def test_encrypted_release_ram_follows_the_largest_file_not_the_image(tmp_path: Path) -> None:
    """A 256 KB encrypted app of 32 KB files boots in a heap that cannot hold its image:
    each file is decrypted alone when it is opened."""
    project = project_at(tmp_path / "proj")
    cfg = project / "mpseal.toml"
    cfg.write_text(cfg.read_text().replace("[build]\n", "[build]\nencrypt = true\n", 1))
    board = VirtualBoard.create(tmp_path / "b", flash_size=2 * 1024 * 1024)
    boot_files_in_a_heap_below_the_image(project, board)


def test_warranty_check_finds_an_encrypted_slot_intact(tmp_path: Path) -> None:
    """The key record after the image is what an encrypted slot must end with: the warranty
    check (`mpseal inspect-device`) calls the unit official, not "trailing bytes"."""
    project = project_at(tmp_path / "proj")
    blob = encrypted_release(project, profile="dev")  # dev: the unit answers at its REPL
    key = read_release_key(Project.load(project).artifact_path())
    board = VirtualBoard.create(tmp_path / "b", flash_size=1024 * 1024)
    board.install(blob, Project.load(project).trust_root(), profile="dev", release_key=key)
    assert board.boot().ran() == [("hello", "1.0.0", 1)]
    res = run_mpseal("inspect-device", "--sim", board.folder, "-C", project, "--json")
    doc = json.loads(res.stdout)
    slot = next(s for s in doc["slots"] if s["running"])
    assert slot["image"] == "intact" and slot["signed_by_us"], doc
    assert doc["verdict"] == "official", doc["evidence"]
