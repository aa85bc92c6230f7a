"""The boot guard on the stock MicroPython v1.28.0 RPI_PICO firmware (no vfs.VfsRom) in the
virtual Pico: an app of several modules, one @micropython.native, mounted through the
verified-files filesystem; update, revert, refusals; the RPI_PICO_ROMFS build's partition
written through rp2's block device; a total boot on the real firmware's serial line.
(The power-cut test on the same firmware is tests/test_pico_powercut.py.)

One board is shared by the scenario tests of this module (each step needs the last).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import run_mpseal
from release_support import release

from mpseal.device.guard_install import stage_artifact
from mpseal.device.picoboard import PicoBoard
from mpseal.errors import BadDataError
from mpseal.formats import artifact
from mpseal.packaging.project import Project

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first

RAW_REPL_BANNER = "raw REPL; CTRL-B to exit"

APP_MAIN = """\
import helper
from pkg import tool
from mpseal_guard import confirm, status
def main():
    print("running {version}", helper.NAME, tool.double(21), status()["mount"])
    confirm()
"""

CRASHING_MAIN = """\
def main():
    raise RuntimeError("health check failed")
"""


def add_modules(project: Path) -> None:
    app = project / "app"
    (app / "helper.py").write_text("NAME = 'helper'\n")
    (app / "pkg").mkdir(exist_ok=True)
    (app / "pkg" / "__init__.py").write_text("")
    (app / "pkg" / "tool.py").write_text(
        "import micropython\n\n\n@micropython.native\ndef double(x):\n    return 2 * x\n"
    )


@pytest.fixture(scope="module")
def rp2_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("rp2g") / "proj"
    assert run_mpseal("init", folder, "--board", "rp2", "--name", "hello").returncode == 0
    add_modules(folder)
    return folder


@pytest.fixture(scope="module")
def pico(rp2_project: Path) -> PicoBoard:
    board = PicoBoard.create(rp2_project / "sim" / "pico")
    blob = release(rp2_project, "1.0", 1, APP_MAIN, profile="dev")
    board.install(blob, Project.load(rp2_project).trust_root(), profile="dev")
    return board


def root(project: Path):
    return Project.load(project).trust_root()


def no_repl(text: str) -> None:
    assert ">>> " not in text and RAW_REPL_BANNER not in text, text


def test_native_multi_module_app_boots_verified_on_stock_rpi_pico(
    rp2_project: Path, pico: PicoBoard
) -> None:
    blob = release(rp2_project, "1.0", 1, APP_MAIN, profile="dev")
    art = artifact.decode(blob)
    assert art.manifest.arch == "armv6m" and "pkg/tool.mpy" in {f[0] for f in art.files()}
    report = pico.boot()
    assert report.ran()[:1] == [("hello", "1.0", 1)], report.output
    assert (
        "booting hello 1.0 (counter 1) from slot a on trial (mount: verified-files)"
        in report.guard_lines
    )
    assert "running 1.0 helper 42 verified-files" in report.output
    assert "committed hello 1.0 (counter 1) in slot a" in report.guard_lines
    assert "AttributeError" not in report.output
    status = pico.status()
    assert status["state"]["counter"] == 1 and status["mount"] == "verified-files"


def test_update_trial_confirm_commit_on_the_pico(rp2_project: Path, pico: PicoBoard) -> None:
    staged = pico.install(
        release(rp2_project, "2.0", 2, APP_MAIN, profile="dev"), root(rp2_project)
    )
    assert staged["slot"] == "b"
    report = pico.boot()
    assert (
        "booting hello 2.0 (counter 2) from slot b on trial (mount: verified-files)"
        in report.guard_lines
    ), report.output
    assert "running 2.0 helper 42 verified-files" in report.output
    assert "committed hello 2.0 (counter 2) in slot b" in report.guard_lines
    state = pico.status()["state"]
    assert state["committed"] == "b" and state["counter"] == 2 and state["trial"] is None


def test_crashing_release_is_reverted_on_the_pico(rp2_project: Path, pico: PicoBoard) -> None:
    pico.install(release(rp2_project, "3.0", 3, CRASHING_MAIN, profile="dev"), root(rp2_project))
    report = pico.boot()
    assert any(
        "trial of slot a reverted: app crashed: RuntimeError: health check failed" in ln
        for ln in report.guard_lines
    ), report.output
    report = pico.boot()  # dev profile: the REPL followed; the next boot runs the last good one
    assert report.ran()[-1] == ("hello", "2.0", 2), report.output
    state = pico.status()["state"]
    assert state["committed"] == "b" and state["counter"] == 2


def test_tampered_and_rolled_back_releases_are_refused_on_the_pico(
    rp2_project: Path, pico: PicoBoard
) -> None:
    """Sent straight to the board's guard (no host check on the way)."""
    bad = bytearray(release(rp2_project, "4.0", 4, APP_MAIN, profile="dev"))
    bad[-3] ^= 0x40
    old = release(rp2_project, "1.5", 1, APP_MAIN, profile="dev")
    with pico.session() as link:
        with pytest.raises(BadDataError, match="image hash does not match the signed manifest"):
            stage_artifact(link, bytes(bad))
        with pytest.raises(BadDataError, match="security counter 1 is below 2: rollback refused"):
            stage_artifact(link, old)
    assert pico.boot().ran()[-1] == ("hello", "2.0", 2)
    state = pico.status()["state"]
    assert state["counter"] == 2 and state["trial"] is None


# The app says where the guard ran from, and where a module the guard loads after the app
# took /rom comes from (the update path: mpseal_stage).
ROM_APP_MAIN = APP_MAIN.replace(
    'status()["mount"])',
    'status()["mount"], status()["guard"], __import__("mpseal_stage").__file__)',
)
XIP_BASE = 0x10000000  # where the RP2040 maps its flash: a partition's address -> flash.img


def test_romfs_partition_written_through_rp2_block_device(tmp_path: Path) -> None:
    """RPI_PICO_ROMFS: rom_ioctl(3|4|5) answer -22 there; install puts the guard's boot
    modules at the partition's head (written through the rp2.Flash block device), the
    firmware mounts them at /rom and the guard runs from there in place; the guard mirrors
    the app after them and mounts it with VfsRom. A mirror changed on the flash is copied
    again from the verified slot; a guard image taken off the head leaves the guard in /lib."""
    project = tmp_path / "proj"
    assert run_mpseal("init", project, "--board", "rp2", "--name", "hello").returncode == 0
    add_modules(project)
    board = PicoBoard.create(tmp_path / "pico", romfs=True)
    installed = board.install(
        release(project, "1.0", 1, ROM_APP_MAIN, profile="dev"), root(project)
    )
    assert installed["guard_at"] == "romfs"
    report = board.boot()
    assert "copying slot a to the ROMFS partition (block device)" in report.guard_lines, (
        report.output
    )
    ran = (
        "running 1.0 helper 42 romfs-partition /rom/lib/mpseal_guard.mpy "
        "/.mpseal-guard/lib/mpseal_stage.mpy"
    )
    assert ran in report.output
    report = board.boot()  # mirrored once: the next boot only re-hashes it
    assert not any("copying" in ln for ln in report.guard_lines)
    assert ran in report.output

    with board.session() as link:
        # The verifier the guard loads from its image runs p256_thumb's machine code where it
        # lies in flash (runtime/p256_thumb_rom.py, the image's lib/p256_thumb.mpy), not a
        # copy on the heap and not the Python-integer fallback.
        got = link.exec(
            "import p256, p256_thumb\n"
            "print(p256.FAST, p256_thumb.__file__, hasattr(p256_thumb, '_code'))"
        )
        assert got.split()[-3:] == ["True", "/.mpseal-guard/lib/p256_thumb.mpy", "True"], got
        head = (
            int(
                link.exec(
                    "import vfs, uctypes\nprint(uctypes.addressof(memoryview(vfs.rom_ioctl(2, 0))))"
                ).split()[-1]
            )
            - XIP_BASE
        )
    flash = bytearray(board.pico.flash.read_bytes())
    assert bytes(flash[head : head + 3]) == b"\xd2\xcd\x31"  # the guard's ROMFS image
    # the app's mirror: the next ROMFS image on a 4 KB block, past the guard's
    app = next(
        a for a in range(head + 4096, len(flash), 4096) if flash[a : a + 3] == b"\xd2\xcd\x31"
    )
    flash[app + 200] ^= 0x01  # the mirror changed on the flash: copied again, then run
    board.pico.flash.write_bytes(bytes(flash))
    report = board.boot()
    assert "copying slot a to the ROMFS partition (block device)" in report.guard_lines
    assert ran in report.output

    def guard_in_rom() -> list[str]:
        res = run_mpseal("inspect-device", "-C", project, "--sim", tmp_path / "pico", "--json")
        evidence = json.loads(res.stdout)["evidence"]
        return [e["mark"] for e in evidence if e["what"] == "guard in ROMFS"]

    assert guard_in_rom() == ["ok"]
    flash = bytearray(board.pico.flash.read_bytes())
    flash[head + 2000] ^= 0x01  # the guard's image changed on the flash: inspect says so
    board.pico.flash.write_bytes(bytes(flash))
    assert guard_in_rom() == ["unknown"]

    flash[head : head + 4096] = b"\xff" * 4096  # no guard image: the firmware mounts none
    board.pico.flash.write_bytes(bytes(flash))
    report = board.boot()
    lib = "running 1.0 helper 42 romfs-partition /lib/mpseal_guard.mpy /lib/mpseal_stage.mpy"
    assert lib in report.output, report.output


def locked_board(project: Path, folder: Path, config: bytes) -> PicoBoard:
    """A Pico whose guard ran release 1.0 (dev profile, so its REPL could be reached once),
    then given ``config`` as its device.json."""
    board = PicoBoard.create(folder)
    board.install(release(project, "1.0", 1, APP_MAIN, profile="dev"), root(project))
    with board.session() as link:  # the trial boot ran and returned to the REPL (dev)
        link.write_file("/mpseal/device.json", config)
    return board


def test_damaged_config_on_the_pico_idles_locked_without_a_repl(
    rp2_project: Path, tmp_path: Path
) -> None:
    """On the stock firmware: a damaged device.json ends in locked idle with the reason on
    the USB serial line, and no REPL prompt appears there."""
    board = locked_board(rp2_project, tmp_path / "pico", b'{"board": "rp2", "profile": "fie')
    report = board.boot()
    assert report.outcome == "idle", report.output
    assert "locked idle: no usable device config" in report.output
    no_repl(report.output)
    # the whole reason, as the guard logged it
    assert any(
        "locked idle: no usable device config: /mpseal/device.json is damaged" in ln
        for ln in board.status()["log"]
    )


def test_forced_vfsrom_on_stock_rpi_pico_is_reported_as_missing(
    rp2_project: Path, tmp_path: Path
) -> None:
    cfg = json.dumps(
        {
            "board": "rp2",
            "profile": "field",
            "max_tries": 3,
            "max_image": 4194304,
            "mount": "vfsrom-ram",
        }
    ).encode()
    board = locked_board(rp2_project, tmp_path / "pico", cfg)
    report = board.boot()
    assert report.outcome == "idle", report.output
    assert "locked idle: firmware lacks a feature the guard needs" in report.output
    assert any(
        "firmware lacks a feature the guard needs: firmware has no vfs.VfsRom" in ln
        for ln in board.status()["log"]
    )
    assert "app crashed" not in report.output and "AttributeError" not in report.output
    no_repl(report.output)
