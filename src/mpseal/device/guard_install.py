"""The boot guard's files as they go onto a device (or into a frozen firmware manifest).

The guard's modules are compiled with the real mpy-cross for the board, so the
device never compiles source at boot (less RAM, and firmware built without the
compiler works too).

p256_thumb (the verifier's field arithmetic in Thumb-1 assembly, and p256_fast that
drives it) goes only to ARM
boards, precompiled with the board's -march: compiling its 3,000 lines of inline
assembler on the device at import would need far more RAM than the guard may use,
and a board without the inline assembler could not compile it at all. p256 finds it
at import and otherwise verifies with Python integers (slower, same answers).
"""

from __future__ import annotations

import ast
import functools
import hashlib
import json

from mpseal.device.transport import DeviceError, Progress, Transport
from mpseal.device.vm import runtime_dir
from mpseal.errors import BadDataError, FormatError
from mpseal.formats import romfs
from mpseal.formats.boards import get_board
from mpseal.packaging.mpycross import CompileOptions, Compiler, Module

# Device-side modules of the guard, shipped from mpseal/runtime/.
GUARD_MODULES = (
    "mpseal_guard",
    "mpseal_release",
    "mpseal_stage",
    "mpseal_state",
    "mpseal_port",
    "mpseal_lockdown",
    "mpseal_appfs",
    "mpseal_encfs",
    "mpseal_romfs",
    "mpseal_meta",
    "mpseal_secrets",
    "mpseal_ota",
    "mpseal_renew",
    "mpseal_logs",
    "p256",
    "p256_fast",
    "p256_thumb",
    "mpseal_delta",
)
# The modules a boot loads (after mpseal_guard itself), also written as one file that the
# guard serves to the importer while it boots (runtime/mpseal_guard.py, _Pack): on littlefs
# each module found on sys.path costs ~4 lookups (~5 ms on a Pico), the pack one.
BOOT_PACK = "/lib/mpseal-boot.pack"
BOOT_MODULES = (
    "mpseal_port",
    "mpseal_release",
    "mpseal_state",
    "p256",
    "p256_fast",
    "p256_thumb",
    "mpseal_lockdown",
    "mpseal_appfs",
    "mpseal_encfs",
    "mpseal_romfs",
)
# The guard in a ROMFS partition (runtime/mpseal_romfs.py): on a port whose partition takes
# block writes (rp2) the boot's modules also go, as one ROMFS image, to the partition's head,
# which the firmware mounts at /rom before main.py: their code runs in place from flash
# instead of being loaded onto the heap. The app's verified image is mirrored after it, at
# the image's length rounded up to GUARD_BLOCK (the device's rule: mpseal_romfs.guard_region).
ROM_MODULES = ("mpseal_guard", *BOOT_MODULES, "mpseal_stage")
GUARD_BLOCK = 4096
ROM_WRITE_TIMEOUT = 60.0
INCOMING_ROM = "/mpseal/incoming.rom"
# Writes the image in file {path} ({n} bytes, sha256 {sha}) to the partition's head: block 0
# (the header) is erased first and written last, so a cut anywhere leaves no valid image
# there and the guard loads from /lib, as on a board without one. Blocks holding their
# bytes already are not written again. Standalone, not mpseal_romfs.Partition: the session
# may hold that module loaded from the very image being rewritten.
ROM_PUT = """import vfs, hashlib, binascii
d = vfs.rom_ioctl(2, 0)
m = memoryview(d)
bs = d.ioctl(5, 0)
n = {n}
k = (n + bs - 1) // bs
b = bytearray(bs)
w = 0
if binascii.hexlify(hashlib.sha256(m[:n]).digest()).decode() != {sha!r}:
    d.ioctl(6, 0)
    w = 1
    with open({path!r}, 'rb') as f:
        for i in list(range(1, k)) + [0]:
            f.seek(i * bs)
            got = f.readinto(b)
            for j in range(got, bs):
                b[j] = 0xFF
            if i == 0 or bytes(m[i * bs:(i + 1) * bs]) != b:
                if i:
                    d.ioctl(6, i)
                d.writeblocks(i, b, 0)
print("ROM", binascii.hexlify(hashlib.sha256(m[:n]).digest()).decode(), w)
"""
# Takes a guard image off the partition's head (its header block erased): the guard loads
# from /lib again and mirrors the app from the partition's start.
ROM_DROP = """import vfs
d = vfs.rom_ioctl(2, 0)
w = bytes(memoryview(d)[:3]) == {magic!r}
if w:
    d.ioctl(6, 0)
print('ROM dropped', int(w))
"""
# Modules only for boards whose native code is ARM Thumb (the inline assembler's target).
THUMB_ONLY = ("p256_fast", "p256_thumb")
THUMB_ARCHS = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")
# /main.py: imports the guard and boots; locked idle even if the guard cannot be loaded.
MAIN_SHIM = (runtime_dir() / "mpseal_main.py").read_bytes()
GUARD_DIR = "/mpseal"
TRUST_ROOT = "/mpseal/trust-root.mpsr"
DEVICE_CONFIG = "/mpseal/device.json"
INCOMING = "/mpseal/incoming.mpseal"
STAGE_TIMEOUT = 300.0  # the guard verifies a signature and copies the image: minutes on a Pico
# Hands the artifact to the board's guard; prints one literal: what it staged, or why not.
INCOMING_KEY = "/mpseal/incoming.key"  # an encrypted release's key record for this board
STAGE = (
    "import mpseal_guard\n"
    "try:\n"
    " _k = None\n"
    " if {key!r}:\n"
    "  with open({key!r}, 'rb') as _f: _k = _f.read(64)\n"
    " _r = mpseal_guard.stage({path!r}, _k)\n"
    " print(repr(('STAGED', _r.version, mpseal_guard._state.trial)))\n"
    "except Exception as e:\n"
    " print(repr(('REFUSED', str(e)[:160])))\n"
)


HARDWARE_ID = "import mpseal_port\nprint(mpseal_port.unique_id())"


def hardware_id(transport: Transport) -> str:
    """The board's id as its guard reads it (``mpseal_port.unique_id()``: machine.unique_id()
    in hex), once the guard is installed: what an encrypted release's key is wrapped for."""
    out = transport.exec(HARDWARE_ID).strip()
    hw = out.splitlines()[-1] if out else ""
    if not 4 <= len(hw) <= 64 or any(c not in "0123456789abcdef" for c in hw):
        raise BadDataError(f"the board's hardware id {hw[:70]!r} is not hex")
    return hw


def device_config(
    board: str,
    profile: str,
    max_tries: int = 3,
    max_image: int = 4 * 1024 * 1024,
    mount: str = "auto",
) -> bytes:
    """/mpseal/device.json; ``mount`` forces one of the guard's mount paths ("auto": its
    own choice by feature detection, and then the key is left out)."""
    cfg: dict[str, object] = {
        "board": board,
        "profile": profile,
        "max_tries": max_tries,
        "max_image": max_image,
    }
    if mount != "auto":
        cfg["mount"] = mount
    return json.dumps(cfg, sort_keys=True).encode()


def compiled_guard(board: str) -> dict[str, bytes]:
    """``/lib/<module>.mpy`` -> bytes, compiled for ``board`` (once per process)."""
    return dict(_compiled_guard(board))


def _guard_compiler(board: str) -> Compiler:
    """mpy-cross as the guard's modules are compiled for ``board``: -O2, no line numbers."""
    b = get_board(board)
    return Compiler(CompileOptions(b.mpy, b.arch, opt=2, source_lines=False), cache_dir=None)


@functools.cache
def _compiled_guard(board: str) -> dict[str, bytes]:
    b = get_board(board)
    compiler = _guard_compiler(board)
    src = runtime_dir()
    names = [n for n in GUARD_MODULES if b.arch in THUMB_ARCHS or n not in THUMB_ONLY]
    # Source name = module name (a qstr the firmware makes for the import anyway): with
    # "<name>.py" each module loaded added one more qstr, and past ~300 of them the board
    # allocates its next qstr pool (~2 KB) at boot. No line numbers are kept (-X
    # no-source-lines), so a traceback loses nothing.
    modules = [Module(name, (src / f"{name}.py").read_bytes()) for name in names]
    out = compiler.compile_all(modules)
    files = {f"/lib/{name}.mpy": data for name, data in out.items()}
    files[BOOT_PACK] = boot_pack(files)
    return files


def boot_pack(files: dict[str, bytes]) -> bytes:
    """The boot modules of ``files`` (``/lib/<name>.mpy`` -> bytes) as the guard's pack."""
    index: dict[str, list[int]] = {}
    data = bytearray()
    for name in BOOT_MODULES:
        blob = files.get(f"/lib/{name}.mpy")
        if blob is not None:
            index[f"{name}.mpy"] = [len(data), len(blob)]
            data += blob
    head = json.dumps(index, separators=(",", ":")).encode()
    return len(head).to_bytes(4, "little") + head + bytes(data)


@functools.cache
def guard_rom_image(board: str) -> bytes:
    """The ROMFS image of the guard's boot modules for ``board`` (``lib/<name>.mpy``).

    p256_thumb goes there as runtime/p256_thumb_rom.py, which runs p256_thumb's machine
    code in place from ``lib/p256_thumb.bin`` (an .mpy's machine code is copied onto the
    heap at import, even from ROMFS: ~6 KB of a Pico's RAM during the boot's signature
    check). The .bin is one byte k, k bytes of padding, the code: k puts the code at an
    even offset of the image (the partition starts on a flash sector, so at an even
    address too), as Thumb code must be. (Cached: bytes, which no caller can change.)"""
    files = _compiled_guard(board)  # read only: no copy
    rom = {f"lib/{n}.mpy": files[f"/lib/{n}.mpy"] for n in ROM_MODULES if f"/lib/{n}.mpy" in files}
    if "lib/p256_thumb.mpy" in rom:
        code = native_code(rom["lib/p256_thumb.mpy"])
        src = (runtime_dir() / "p256_thumb_rom.py").read_bytes()
        out = _guard_compiler(board).compile_all([Module("p256_thumb", src)])
        rom["lib/p256_thumb.mpy"] = out["p256_thumb"]
        for k in (0, 1):
            rom["lib/p256_thumb.bin"] = bytes((k,)) + bytes(k) + code
            image, entries = romfs.write_with_entries(rom)
            at = next(off for path, _, off, _ in entries if path == "lib/p256_thumb.bin")
            if (at + 1 + k) % 2 == 0:
                return image
        raise FormatError("p256_thumb's code lands at an odd offset of the guard's image")
    return romfs.write(rom)


def native_code(mpy: bytes) -> bytes:
    """The machine code of the one inline-assembler function of ``mpy`` (.mpy version 6, a
    module that defines nothing else: p256_thumb)."""

    def uint(i: int) -> tuple[int, int]:
        return romfs.read_uint(mpy, i, len(mpy), "p256_thumb.mpy")

    if mpy[:2] != b"M\x06":
        raise FormatError("not an .mpy of version 6")
    n_qstr, i = uint(4)
    n_obj, i = uint(i)
    for _ in range(n_qstr):
        v, i = uint(i)
        if not v & 1:
            i += (v >> 1) + 1
    if n_obj:
        raise FormatError("p256_thumb.mpy has constants: not one module of functions")
    kind_len, i = uint(i)
    if kind_len & 3 != 0 or not kind_len & 4:
        raise FormatError("p256_thumb.mpy is not one module of functions")
    i += kind_len >> 3  # the module's own bytecode
    n_children, i = uint(i)
    found = []
    for _ in range(n_children):
        kind_len, i = uint(i)
        kind, size = kind_len & 3, kind_len >> 3
        if kind_len & 4:
            raise FormatError("p256_thumb.mpy has nested functions")
        data, i = mpy[i : i + size], i + size
        if kind == 3:  # MP_CODE_NATIVE_ASM: scope flags, argument count, type signature
            for _ in range(3):
                _, i = uint(i)
            found.append(data)
        elif kind == 1:  # native Python: prelude offset
            _, i = uint(i)
        elif kind == 2:  # viper: scope flags (and maybe more): not expected here
            raise FormatError("p256_thumb.mpy has a viper function")
    if len(found) != 1 or i != len(mpy):
        raise FormatError("p256_thumb.mpy does not hold exactly one assembler function")
    return bytes(found[0])


def guard_region(image: bytes) -> int:
    """Bytes of the partition the guard's image takes: whole GUARD_BLOCKs."""
    return -(-len(image) // GUARD_BLOCK) * GUARD_BLOCK


def place_guard_rom(
    transport: Transport, board: str, partition: tuple[int, bool] | None, app_size: int
) -> str:
    """Put the guard's image at the head of the board's ROMFS partition (``partition``: its
    size and whether it takes block writes, from the probe) when the app's image still fits
    after it -> "romfs"; otherwise take any guard image off the head -> "lib" (the guard
    loads from /lib then). The /lib copies are written either way: they serve when the
    partition holds no valid image (a cut while writing it, a partition erased)."""
    if partition is None or not partition[1]:
        return "lib"  # no partition, or one written through rom_ioctl(3): erased from its start
    image = guard_rom_image(board)
    if guard_region(image) + app_size > partition[0]:
        out = transport.exec(ROM_DROP.format(magic=romfs.HEADER), timeout=ROM_WRITE_TIMEOUT)
        _restart_if(transport, out.strip().endswith("1"))
        return "lib"
    sha = hashlib.sha256(image).hexdigest()
    transport.write_file(INCOMING_ROM, image)
    try:
        out = transport.exec(
            ROM_PUT.format(n=len(image), sha=sha, path=INCOMING_ROM), timeout=ROM_WRITE_TIMEOUT
        )
    finally:
        transport.remove(INCOMING_ROM)
    if f"ROM {sha}" not in out:
        raise BadDataError(
            "the guard's image did not read back from the ROMFS partition; install again"
        )
    _restart_if(transport, out.strip().endswith("1"))
    return "romfs"


def _restart_if(transport: Transport, changed: bool) -> None:
    """The partition's head changed under modules this session may hold (the guard imported
    them from there when the board booted): a soft reset drops them before the guard is used
    again (staging). A transport without one (the unix VM) starts afresh at every exec."""
    soft_reset = getattr(transport, "soft_reset", None)
    if changed and soft_reset is not None:
        soft_reset()


def guard_files(
    board: str, profile: str, trust_root: bytes, mount: str = "auto"
) -> dict[str, bytes]:
    """Device path -> bytes for everything the guard needs, main.py included."""
    files = compiled_guard(board)
    files["/main.py"] = MAIN_SHIM
    files[DEVICE_CONFIG] = device_config(board, profile, mount=mount)
    files[TRUST_ROOT] = trust_root
    return files


def stage_artifact(
    transport: Transport,
    data: bytes,
    progress: Progress | None = None,
    key_record: bytes | None = None,
) -> str:
    """Write ``data`` to the board and have its guard stage it; return the slot it went to.

    The guard verifies it itself (signature, hash, board, counter) while copying it into
    the inactive slot; the staging file is removed afterwards either way. An encrypted
    release goes with ``key_record``, its key wrapped for this board (formats/encrypted.py).
    """
    transport.write_file(INCOMING, data, progress)
    if key_record is not None:
        transport.write_file(INCOMING_KEY, key_record)
    key = INCOMING_KEY if key_record is not None else ""
    try:
        out = transport.exec(STAGE.format(path=INCOMING, key=key), timeout=STAGE_TIMEOUT)
    except DeviceError:
        transport.remove(INCOMING)
        if key:
            transport.remove(INCOMING_KEY)
        raise
    transport.remove(INCOMING)
    if key:
        transport.remove(INCOMING_KEY)
    lines = [ln for ln in out.strip().splitlines() if ln.startswith("(")]
    try:
        reply = ast.literal_eval(lines[-1]) if lines else None
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        reply = None
    if not (
        isinstance(reply, tuple)
        and len(reply) == 3
        and reply[0] == "STAGED"
        and reply[2] in ("a", "b")
    ):
        if isinstance(reply, tuple) and len(reply) == 2 and reply[0] == "REFUSED":
            why = "".join(c if c.isprintable() else "?" for c in str(reply[1]))
            raise BadDataError(f"the board's guard refused the artifact: {why}")
        raise FormatError(f"the board's guard gave no answer to staging: {out.strip()[-120:]!r}")
    return str(reply[2])
