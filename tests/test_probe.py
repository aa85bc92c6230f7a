"""Know the firmware before writing to it: `mpseal probe`, `mpseal install`, and the decision.

The decision (device/probe.py ``decide``) is pure and tested on facts; every other test
runs the device-side probe (runtime/mpseal_probe.py) on real firmware: the virtual board
(unix port VM, littlefs flash) on a pty, MicroPython 1.9.2 on a micro:bit in QEMU, and
stock MicroPython v1.28.0 for the Cortex-M3 MPS2-AN385 in QEMU. "Nothing written" is
checked on the board itself: the file list (QEMU boards) or the flash image's bytes.
"""

from __future__ import annotations

import ast
import hashlib
import json
import random
from dataclasses import replace
from pathlib import Path

import pytest
from conftest import run_mpseal
from serial_boards import qemu_microbit, qemu_mps2_an385

from mpseal.device.probe import (
    GUARD_HEAP,
    ROMFS_PARTITION,
    VERIFIED_FILES,
    VFSROM_RAM,
    BoardFacts,
    Flash,
    MpyAbi,
    Needs,
    RomPartition,
    arch_runs,
    decide,
    parse_facts,
)
from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import SimLink
from mpseal.errors import FormatError

# -- the decision, on facts ------------------------------------------------------------

PICO = BoardFacts(  # stock RPI_PICO v1.28.0, as the firmware notes describe it
    version=(1, 28, 0),
    platform="rp2",
    machine="Raspberry Pi Pico with RP2040",
    mpy=MpyAbi(6, 3, "armv6m"),
    sha256=True,
    aes_cbc=True,
    ssl=False,
    json=True,
    unique_id="machine",
    rename=True,
    vfs=True,
    vfsrom=False,
    rom=None,
    mounts=(("/", "VfsLfs2"),),
    flash=Flash(4096, 352, 340),
    mem_free=241 * 1024,
    mem_alloc=8 * 1024,
)
RELEASE = Needs(
    app="app",
    version="1.0.0",
    mpy_version="6.3",
    arch="armv6m",
    native=True,
    image_size=60 * 1024,
    artifact_size=61 * 1024,
    largest_file=12 * 1024,
    extra_files=(4000,) * 10,
)


def test_mpy_word_decoded_as_micropython_encodes_it() -> None:
    assert MpyAbi.decode(0x0B06) == MpyAbi(6, 3, "x64")  # the unix VM
    assert MpyAbi.decode(0x1B06) == MpyAbi(6, 3, "armv7em")  # QEMU MPS2-AN385
    assert MpyAbi.decode((10 << 2 | 3) << 8 | 6) == MpyAbi(6, 3, "xtensawin")
    assert MpyAbi.decode(0x0306).arch == "none"  # no native emitter
    with pytest.raises(FormatError):
        MpyAbi.decode(1 << 16)


def test_thumb_firmware_loads_older_thumb_code_only() -> None:
    assert arch_runs("armv7emsp", "armv6m") and arch_runs("armv6m", "armv6m")
    assert not arch_runs("armv6m", "armv7m")  # an RP2040 cannot run Cortex-M4 code
    assert not arch_runs("x64", "xtensawin") and not arch_runs("none", "none")


def test_no_vfsrom_uses_the_verified_files_mount() -> None:
    d = decide(PICO, RELEASE)
    assert d.ok and d.mount == VERIFIED_FILES
    assert d.ram_needed == RELEASE.largest_file + GUARD_HEAP  # the largest file, not the image


def test_the_guards_choice_vfsrom_from_ram_and_a_partition_wins() -> None:
    """As mpseal_guard.mount_plan chooses: partition, else VfsRom over RAM, else files."""
    assert decide(replace(PICO, vfsrom=True), RELEASE).mount == VFSROM_RAM
    # too little heap for the image: the guard's auto mode serves verified files instead
    small = decide(replace(PICO, vfsrom=True, mem_free=RELEASE.image_size), RELEASE)
    assert small.ok and small.mount == VERIFIED_FILES and "too little heap" in small.notes[0]
    starved = decide(replace(PICO, mem_free=RELEASE.largest_file), RELEASE)
    assert not starved.ok and "free heap for the verified-files mount" in starved.missing[0]
    rom = replace(PICO, vfsrom=True, rom=RomPartition(1, 256 * 1024, True))
    assert decide(rom, RELEASE).mount == ROMFS_PARTITION
    tiny = decide(replace(rom, rom=RomPartition(1, 32 * 1024, True)), RELEASE)
    assert not tiny.ok and "a ROMFS partition of 60 KiB" in tiny.missing[0]
    no_parts = replace(rom, rom=RomPartition(0, 0, False))  # rom_ioctl, no partition
    assert decide(no_parts, RELEASE).mount == VFSROM_RAM


def test_mount_names_are_the_guards_own() -> None:
    """The decision names the mount the way the guard logs it (mpseal_guard.MOUNTS)."""
    import ast

    from mpseal.device.probe import MOUNT_PATHS
    from mpseal.device.vm import runtime_dir

    tree = ast.parse((runtime_dir() / "mpseal_guard.py").read_text())
    mounts = next(
        ast.literal_eval(n.value)
        for n in tree.body
        if isinstance(n, ast.Assign)
        and any(isinstance(t, ast.Name) and t.id == "MOUNTS" for t in n.targets)
    )
    assert set(MOUNT_PATHS) == set(mounts) - {"auto"}


def test_a_forced_mount_needs_what_that_path_needs() -> None:
    """device.json "mount" forces a path; the guard then takes no other (no fallback)."""
    d = decide(PICO, RELEASE, mount=ROMFS_PARTITION)
    assert not d.ok and "for the forced romfs-partition mount" in d.missing[0]
    assert (
        "vfs.VfsRom for the forced vfsrom-ram" in decide(PICO, RELEASE, mount=VFSROM_RAM).missing[0]
    )
    ram = replace(PICO, vfsrom=True, mem_free=RELEASE.image_size)  # auto would fall to files
    assert "free heap for the vfsrom-ram mount" in decide(ram, RELEASE, mount=VFSROM_RAM).missing[0]
    assert decide(replace(PICO, vfsrom=True), RELEASE, mount=VERIFIED_FILES).mount == VERIFIED_FILES


def test_every_missing_feature_is_named() -> None:
    bare = replace(
        PICO,
        sha256=False,
        json=False,
        rename=False,
        mounts=(),
        flash=None,
        aes_cbc=False,
        ssl=False,
        unique_id=None,
    )
    d = decide(bare, replace(RELEASE, secrets=True, tls=True, identity=True))
    assert not d.ok and d.mount is None
    text = "; ".join(d.missing)
    for name in (
        "hashlib.sha256",
        "json",
        "os.rename",
        "a writable filesystem",
        "cryptolib AES-CBC",
        "ssl.SSLContext",
        "machine.unique_id",
    ):
        assert name in text


def test_flash_for_two_slots_plus_staging() -> None:
    full = replace(PICO, flash=Flash(4096, 352, 40))  # 160 KiB free: under 3 x 61 KiB
    d = decide(full, RELEASE)
    assert not d.ok and "free flash for two slots plus staging" in d.missing[0]
    # The old slots an install replaces count as free.
    assert decide(full, RELEASE, replaced=(61 * 1024, 61 * 1024)).ok


def test_mpy_version_and_arch_against_the_release() -> None:
    old = replace(PICO, mpy=None, version=(1, 9, 2))
    assert "MicroPython >= 1.23; this board runs 1.9.2" in decide(old, RELEASE).missing[0]
    v62 = replace(PICO, mpy=MpyAbi(6, 2, "armv6m"))
    assert not decide(v62, RELEASE).ok  # native code needs the same sub-version
    assert decide(v62, replace(RELEASE, native=False)).ok  # bytecode loads on any 6.x
    esp = replace(RELEASE, arch="xtensawin", native=False)
    assert "built for xtensawin; this board is armv6m" in decide(PICO, esp).missing[0]
    no_emitter = replace(PICO, mpy=MpyAbi(6, 3, "none"))
    assert "no native emitter" in decide(no_emitter, RELEASE).missing[0]
    assert decide(no_emitter, replace(RELEASE, native=False)).ok


def test_hostile_probe_replies_raise_only_format_error() -> None:
    """Endless or malformed data from the board: a bounded parse, one error type."""
    good = {
        "version": (1, 28, 0),
        "platform": "rp2",
        "mpy": 0x1006,
        "mem_free": 1,
        "mounts": [("/", "VfsLfs2")],
        "statvfs": (4096, 10, 5, 0),
        "rom": (1, 2, True),
    }
    assert parse_facts(good).root_fs == "VfsLfs2"
    rng = random.Random(9)
    junk = [None, -1, 2**70, "x" * 10000, (), [], {}, ("a",), [1, 2], True, b"\x00", 1.5]
    for _ in range(400):
        bad = dict(good)
        for key in rng.sample(sorted(good) + ["unique_id"], rng.randint(1, 3)):
            bad[key] = rng.choice(junk)
        try:
            facts = parse_facts(bad)
        except FormatError:
            continue
        assert len(facts.platform) <= 80 and facts.mem_free >= 0
    for bad_top in (None, [], "x", 3):
        with pytest.raises(FormatError):
            parse_facts(bad_top)


def test_the_device_probe_runs_in_the_vm_and_its_reply_parses(tmp_path: Path) -> None:
    """runtime/mpseal_probe.py run straight in the MicroPython VM (vm.run): one literal per
    call, parsed by the host's strict parser; file digests are the files' SHA-256."""
    from mpseal.device import vm

    data = b"some bytes the probe hashes\n" * 40
    target = tmp_path / "blob.bin"
    target.write_bytes(data)
    driver = tmp_path / "drive.py"
    driver.write_text(
        (vm.runtime_dir() / "mpseal_probe.py").read_text()
        + f"\nmpp_probe()\nmpp_files([{str(target)!r}, '/no/such/file'], True)\n"
    )
    res = vm.run(driver, [])
    assert res.returncode == 0, res.stderr
    facts_line, files_line = res.stdout.strip().splitlines()
    facts = parse_facts(ast.literal_eval(facts_line))
    assert facts.mpy == MpyAbi(6, 3, "x64") and facts.sha256 and facts.vfsrom
    assert (
        facts.root_fs == "VfsPosix" and not facts.writable_fs
    )  # the host's own files: not a board
    files = ast.literal_eval(files_line)
    assert files == {str(target): (len(data), hashlib.sha256(data).digest())}


# -- real firmware -------------------------------------------------------------------


def flash_digest(board: VirtualBoard) -> str:
    return hashlib.sha256(board.flash.read_bytes()).hexdigest()


@pytest.fixture
def vboard(tmp_path: Path) -> VirtualBoard:
    return VirtualBoard.create(tmp_path / "board", flash_size=512 * 1024)


def on_pty(board: VirtualBoard) -> SimLink:
    """The virtual board's VM on a pty: ``mpseal --port link.path`` talks to it."""
    return SimLink(board.flash)


def test_probe_the_virtual_board_on_a_pty(vboard: VirtualBoard) -> None:
    link = on_pty(vboard)
    try:
        res = run_mpseal("probe", "--port", link.path, "--json")
    finally:
        link.close()
    assert res.returncode == 0, res.stderr
    board = json.loads(res.stdout)["board"]
    assert board["mpy"] == {"version": "6.3", "arch": "x64"}
    assert board["root_fs"] == "VfsLfs2" and board["sha256"] and board["vfsrom"]
    assert board["flash"]["block"] == 4096 and board["flash"]["blocks"] == 128


def test_install_on_the_virtual_board_then_it_boots(
    project: Path, built: Path, vboard: VirtualBoard
) -> None:
    vboard.put(b"print('my own main.py')\n", "/main.py")  # as mpremote cp would leave it
    link = on_pty(vboard)
    try:
        res = run_mpseal("install", "--port", link.path, built, "-C", project, "--json")
        assert res.returncode == 0, res.stderr
        first = json.loads(res.stdout)
        assert first["mount"] == VFSROM_RAM and first["slot"] == "a"
        assert "/lib/mpseal_guard.mpy" in first["written"] and "/main.py" in first["written"]
        assert first["replaced"] == ["/main.py"]  # said, not silently overwritten
        assert first["written"][-1] == "/main.py"  # last: never a main.py before its guard
        # Again: the guard is current, only the release is staged (and --reset boots it).
        res = run_mpseal("install", "--port", link.path, built, "-C", project, "--json", "--reset")
        assert res.returncode == 0, res.stderr
        again = json.loads(res.stdout)
        assert again["written"] == [] and again["reset"] is True
        assert "/lib/mpseal_guard.mpy" in again["unchanged"]
    finally:
        link.close()
    report = vboard.boot()
    assert report.ran()[-1][:2] == ("hello", "1.0.0")
    assert "Hello from a sealed MicroPython app!" in report.output
    assert not [name for name, _, _ in vboard.listdir("/mpseal") if "incoming" in name]


def test_install_cut_off_midway_is_simply_run_again(
    project: Path, built: Path, tmp_path: Path
) -> None:
    """The cable goes (the VM dies) part-way through the guard's files; a second install
    on the powered-up board finishes, and the board boots the release."""
    from serial_boards import VirtualBoardOnPty

    from mpseal.device.install import install
    from mpseal.packaging.project import Project

    proj = Project.load(project)
    board = VirtualBoardOnPty(tmp_path / "cut")
    try:
        t = board.connect()
        real_write, written = t.write_file, []

        def cutting_write(path: str, data: bytes, progress: object = None) -> None:
            if len(written) == 4:
                board.cut(t)
            written.append(path)
            real_write(path, data, progress)  # type: ignore[arg-type]

        t.write_file = cutting_write  # type: ignore[method-assign]
        with pytest.raises(Exception) as info:
            install(t, built.read_bytes(), proj.trust_root(), profile="dev")
        assert "mpseal" in type(info.value).__module__  # an mpseal error, not a crash
        t2 = board.connect()  # power back: a new VM on the same flash
        done = install(t2, built.read_bytes(), proj.trust_root(), profile="dev")
        assert done.slot == "a" and "/main.py" in done.written
    finally:
        board.close()
    report = board.board.boot()
    assert report.ran()[-1][:2] == ("hello", "1.0.0")


def test_install_forcing_verified_files_on_the_virtual_board(
    project: Path, built: Path, vboard: VirtualBoard
) -> None:
    """The stock-firmware mount (no VfsRom) exercised on a board that has VfsRom; a forced
    path the firmware lacks is refused before anything is written."""
    before = flash_digest(vboard)
    link = on_pty(vboard)
    try:
        res = run_mpseal(
            "install", "--port", link.path, built, "-C", project, "--mount", "romfs-partition"
        )
        assert res.returncode == 3 and "for the forced romfs-partition mount" in res.stderr
        assert flash_digest(vboard) == before
        res = run_mpseal(
            "install",
            "--port",
            link.path,
            built,
            "-C",
            project,
            "--mount",
            "verified-files",
            "--json",
        )
        assert res.returncode == 0, res.stderr
        assert json.loads(res.stdout)["mount"] == VERIFIED_FILES
    finally:
        link.close()
    report = vboard.boot()
    assert (
        f"hello 1.0.0 (counter 1) from slot a on trial (mount: {VERIFIED_FILES})" in report.output
    )
    assert "sum of squares below 1000: 332833500" in report.output


def test_install_refuses_a_release_for_another_arch_and_writes_nothing(
    tmp_path: Path, vboard: VirtualBoard
) -> None:
    """An esp32 (xtensawin) release with @native code, offered to an x64 board."""
    proj = tmp_path / "espapp"
    assert run_mpseal("init", proj, "--board", "esp32", "--name", "espapp").returncode == 0
    res = run_mpseal("build", "-C", proj)
    assert res.returncode == 0, res.stderr
    art = proj / "dist" / "espapp-1.0.0.mpseal"
    before = flash_digest(vboard)
    link = on_pty(vboard)
    try:
        res = run_mpseal("install", "--port", link.path, art, "-C", proj)
        probe = run_mpseal("probe", "--port", link.path, "--artifact", art)
    finally:
        link.close()
    assert res.returncode == 3
    line = res.stderr.strip()
    assert "\n" not in line and "built for xtensawin; this board is x64" in line
    assert "nothing was written" in line
    assert probe.returncode == 3 and "xtensawin" in probe.stderr
    assert flash_digest(vboard) == before  # not one byte of the flash changed


def test_a_board_locked_by_the_field_profile_says_how_to_open_it(
    project: Path, built: Path, vboard: VirtualBoard
) -> None:
    link = on_pty(vboard)
    try:
        res = run_mpseal("install", "--port", link.path, built, "-C", project, "--profile", "field")
        assert res.returncode == 0, res.stderr
    finally:
        link.close()
    powered = SimLink(vboard.flash, boot=True)  # power on: the guard runs, Ctrl-C is off
    try:
        res = run_mpseal("probe", "--port", powered.path)
    finally:
        powered.close()
    assert res.returncode == 4
    line = res.stderr.strip()
    assert "\n" not in line and "field or sealed profile" in line and "unlock-token" in line


def test_install_refuses_to_replace_another_trust_root(
    project: Path, built: Path, tmp_path: Path, vboard: VirtualBoard
) -> None:
    other = tmp_path / "other"
    assert run_mpseal("init", other, "--board", "unix", "--name", "other").returncode == 0
    assert run_mpseal("build", "-C", other).returncode == 0
    link = on_pty(vboard)
    try:
        assert run_mpseal("install", "--port", link.path, built, "-C", project).returncode == 0
        art = other / "dist" / "other-1.0.0.mpseal"
        res = run_mpseal("install", "--port", link.path, art, "-C", other)
        assert res.returncode == 3 and "--replace-root" in res.stderr
        res = run_mpseal("install", "--port", link.path, art, "-C", other, "--replace-root")
        assert res.returncode == 0, res.stderr
    finally:
        link.close()


def _device_files(pts: str) -> object:
    t = SerialTransport(pts)
    try:
        return t.eval("__import__('os').listdir()")
    finally:
        t.close()


def test_microbit_is_refused_with_what_it_lacks_and_nothing_written(
    project: Path, built: Path
) -> None:
    """MicroPython 1.9.2: no .mpy 6, no hashlib, no vfs, a flat filesystem."""
    assert run_mpseal("ca", "init", project / "ca").returncode == 0
    with qemu_microbit() as pts:
        before = _device_files(pts)
        res = run_mpseal("install", "--port", pts, built, "-C", project, timeout=180)
        after = _device_files(pts)
        probe = run_mpseal("probe", "--port", pts, "--json", timeout=180)
        prov = run_mpseal(
            "provision", "--port", pts, "-C", project, "--artifact", built, "--json", timeout=180
        )
        after_provision = _device_files(pts)
    # provision refuses it the same way, before a key is issued or a byte written
    assert prov.returncode == 3
    failed = json.loads(prov.stdout)["devices"][0]
    assert failed["outcome"] == "failed" and "hashlib.sha256" in failed["error"]
    assert after_provision == before
    listed = run_mpseal("registry", "list", "-C", project, "--json")
    assert json.loads(listed.stdout) == []
    assert res.returncode == 3, res.stderr
    line = res.stderr.strip()
    assert "\n" not in line and "MicroPython 1.9.2 on microbit cannot run hello 1.0.0" in line
    for name in (
        ".mpy 6.3 (MicroPython >= 1.23",
        "hashlib.sha256",
        "vfs.mount",
        "a writable filesystem",
    ):
        assert name in line
    assert after == before
    facts = json.loads(probe.stdout)["board"]
    assert facts["mpy"] is None and facts["unique_id"] == "machine"


def test_mps2_an385_stock_firmware_is_refused_without_a_filesystem(
    project: Path, tmp_path: Path
) -> None:
    """Stock v1.28.0 on a Cortex-M3: VfsRom yes, but no writable filesystem to keep slots on.

    The release is built for rp2 (armv6m: Thumb code a Cortex-M3 loads), so only the filesystem
    is missing: the refusal names that alone."""
    proj = tmp_path / "m3"
    assert run_mpseal("init", proj, "--board", "rp2", "--name", "m3").returncode == 0
    assert run_mpseal("build", "-C", proj).returncode == 0
    art = proj / "dist" / "m3-1.0.0.mpseal"
    with qemu_mps2_an385() as pts:
        before = _device_files(pts)
        probe = run_mpseal("probe", "--port", pts, "--json")
        res = run_mpseal("install", "--port", pts, art, "-C", proj)
        after = _device_files(pts)
    facts = json.loads(probe.stdout)["board"]
    assert facts["version"] == "1.28.0" and facts["mpy"] == {"version": "6.3", "arch": "armv7em"}
    assert facts["vfsrom"] is True and facts["rom"] is None and facts["unique_id"] is None
    assert res.returncode == 3
    assert "missing a writable filesystem at / (littlefs); nothing was written" in res.stderr
    assert after == before


def test_probe_a_virtual_pico_folder_with_sim(tmp_path: Path) -> None:
    """`--sim DIR` of a virtual Pico powers it on for the probe, as provision does."""
    sim = tmp_path / "pico"
    assert run_mpseal("sim", "create", "--board", "rp2", "--sim", sim).returncode == 0
    res = run_mpseal("probe", "--sim", sim, "--json", timeout=300)
    assert res.returncode == 0, res.stderr
    board = json.loads(res.stdout)["board"]
    assert board["platform"] == "rp2" and board["mpy"]["arch"] == "armv6m"
    assert board["vfsrom"] is False and board["rom"] is None and board["root_fs"] == "VfsLfs2"
    assert board["unique_id"] == "machine" and board["mem_free"] > 200 * 1024


def test_probe_the_romfs_pico_finds_its_partition_as_a_block_device(tmp_path: Path) -> None:
    """RPI_PICO_ROMFS: VfsRom and a 256 KiB partition that rom_ioctl(2, 0) hands back as an
    rp2.Flash block device; the guard mounts from it (romfs-partition)."""
    sim = tmp_path / "pico"
    assert run_mpseal("sim", "create", "--board", "rp2", "--romfs", "--sim", sim).returncode == 0
    rp2 = tmp_path / "rp2app"
    assert run_mpseal("init", rp2, "--board", "rp2", "--name", "rp2app").returncode == 0
    assert run_mpseal("build", "-C", rp2).returncode == 0
    res = run_mpseal(
        "probe",
        "--sim",
        sim,
        "--artifact",
        rp2 / "dist" / "rp2app-1.0.0.mpseal",
        "--json",
        timeout=300,
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["board"]["vfsrom"] is True
    assert out["board"]["rom"] == {"count": 1, "size": 256 * 1024, "block_device": True}
    assert out["release"]["mount"] == ROMFS_PARTITION


@pytest.mark.parametrize(("romfs", "mount"), [(False, VERIFIED_FILES), (True, ROMFS_PARTITION)])
def test_install_an_rp2_release_on_a_virtual_pico_which_boots_it(
    tmp_path: Path, romfs: bool, mount: str
) -> None:
    """Stock RPI_PICO v1.28.0 in rp2040js (no VfsRom: the guard serves verified files) and
    the RPI_PICO_ROMFS build (a ROMFS partition: the guard mirrors the image there).

    `mpseal install --reset` on its USB serial port: probed, guard written, staged by the
    board's own guard, reset; the board then boots the release, mounted as predicted."""
    from mpseal.device.pico import VirtualPico

    proj = tmp_path / "picoapp"
    assert run_mpseal("init", proj, "--board", "rp2", "--name", "picoapp").returncode == 0
    res = run_mpseal("build", "-C", proj)
    assert res.returncode == 0, res.stderr
    art = proj / "dist" / "picoapp-1.0.0.mpseal"
    pico = VirtualPico.create(tmp_path / "pico", romfs=romfs)
    try:
        path = pico.start()
        pico.wait_repl(30)
        probe = run_mpseal("probe", "--port", path, "--artifact", art, "--json", timeout=300)
        assert probe.returncode == 0, probe.stderr
        out = json.loads(probe.stdout)
        assert out["board"]["mpy"] == {"version": "6.3", "arch": "armv6m"}
        assert out["board"]["vfsrom"] is romfs and out["release"]["mount"] == mount
        res = run_mpseal(
            "install", "--port", path, art, "-C", proj, "--reset", "--json", timeout=600
        )
        assert res.returncode == 0, res.stderr
        done = json.loads(res.stdout)
        assert done["slot"] == "a" and done["reset"] is True and done["mount"] == mount
        assert pico.wait_output(b"committed picoapp 1.0.0", 120), pico.output.decode(
            "utf-8", "replace"
        )[-600:]
        log = pico.output.decode("utf-8", "replace")
        # the guard mounted it the way the probe said it would, and the app ran
        assert f"picoapp 1.0.0 (counter 1) from slot a on trial (mount: {mount})" in log
        assert "sum of squares below 1000: 332833500" in log
    finally:
        pico.stop()
