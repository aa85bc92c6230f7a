"""``mpseal inspect-device``: the warranty check — is this device running what we shipped?

It reads what the device can tell through the :class:`Transport` and compares it with
the project's official releases and trust roots:

- the firmware's own description (``sys.implementation``, ``os.uname()``) and a
  fingerprint of it;
- the guard: ``main.py`` is the guard's two-line shim, its ``/lib`` modules are the
  ones this mpseal compiles for the board;
- the trust root on the device is one of ours (any version);
- each slot's artifact: header, manifest and signatures read from the device, the
  image hashed on the device; signed by our release key, one of ``dist/*.mpseal``,
  intact; which one runs (the guard's boot state);
- the guard's boot log: refused images, refused unlock tokens, service unlocks.

Verdicts: ``official``; ``tampering attempt recorded`` (what runs is ours, but the log or
a slot shows a foreign or altered image, or a bad unlock token, that the guard
refused); ``modified`` (a foreign trust root, a running release not signed by us, the
guard bypassed); ``unknown`` (the device could not be read, e.g. its REPL is closed).

What this proves, honestly (docs/warranty.md): it is evidence against a T0 owner who
copied files. Everything is reported by the device's own firmware: without Secure
Boot (a T3 protection in the chip) a modified firmware can answer exactly what an
official one would, so only Secure Boot can prove the firmware was not replaced.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace
from enum import StrEnum

from mpseal.device.console import DEFAULT_TIMING, ConsoleCheck, Timing, check_console
from mpseal.device.guard_install import (
    BOOT_PACK,
    GUARD_MODULES,
    MAIN_SHIM,
    TRUST_ROOT,
    compiled_guard,
    guard_rom_image,
)
from mpseal.device.picoboard import PicoBoard
from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import SimLink
from mpseal.device.transport import Transport
from mpseal.errors import BadDataError, ConfigError, FormatError, MpsealError, SignatureError
from mpseal.formats import artifact, encrypted, manifest, sigblock, trustroot
from mpseal.formats.trustroot import TrustRoot
from mpseal.limits import DEFAULT_LIMITS, Limits
from mpseal.lockdown import devicestate as ds
from mpseal.lockdown.probing import DeviceProbes, clean


class Verdict(StrEnum):
    OFFICIAL = "official"
    ATTEMPT = "tampering attempt recorded"
    MODIFIED = "modified"
    UNKNOWN = "unknown"


EXIT_CODES = {Verdict.OFFICIAL: 0, Verdict.ATTEMPT: 1, Verdict.UNKNOWN: 5, Verdict.MODIFIED: 6}


class Mark(StrEnum):
    """What one piece of evidence says."""

    OK = "ok"  # as shipped
    INFO = "info"  # worth knowing, says nothing either way
    ATTEMPT = "attempt"  # someone tried; the guard refused
    MODIFIED = "modified"  # not as shipped
    UNKNOWN = "unknown"  # could not be checked


@dataclass(frozen=True)
class Evidence:
    what: str
    mark: Mark
    detail: str

    def to_dict(self) -> dict[str, str]:
        return {"what": self.what, "mark": self.mark.value, "detail": self.detail}


@dataclass(frozen=True)
class OfficialRelease:
    name: str  # file name in dist/
    manifest_bytes: bytes
    app: str
    version: str
    counter: int


@dataclass(frozen=True)
class Official:
    """What the project calls official: its trust roots (current first), released
    artifacts that verify under them, and the board the guard is compiled for."""

    roots: tuple[TrustRoot, ...]
    releases: tuple[OfficialRelease, ...] = ()
    board: str | None = None
    expect_firmware: str | None = None  # a fingerprint the firmware must report


def official_set(
    roots: list[TrustRoot],
    artifacts: list[tuple[str, bytes]],
    board: str | None = None,
    expect_firmware: str | None = None,
) -> tuple[Official, list[str]]:
    """The official set from the project's roots and ``dist/*.mpseal`` (name, bytes); the
    second value lists the artifacts left out and why."""
    if not roots:
        raise ConfigError("no trust root to compare with")
    releases = []
    skipped = []
    for name, data in artifacts:
        try:
            rel = _verify_any(data, roots)
        except BadDataError as e:
            skipped.append(f"{name}: {e}")
            continue
        m = rel.manifest
        releases.append(
            OfficialRelease(name, rel.artifact.manifest_bytes, m.app, m.version, m.counter)
        )
    return Official(tuple(roots), tuple(releases), board, expect_firmware), skipped


def _verify_any(data: bytes, roots: list[TrustRoot]) -> artifact.VerifiedRelease:
    error: BadDataError | None = None
    for root in roots:
        try:
            return artifact.verify(data, root)
        except SignatureError as e:
            error = error or e
    assert error is not None
    raise error


@dataclass(frozen=True)
class SlotReport:
    slot: str
    present: bool
    running: bool = False
    app: str | None = None
    version: str | None = None
    counter: int | None = None
    board: str | None = None
    keyids: tuple[str, ...] = ()
    signed_by_us: bool | None = None
    signature: str = ""  # what the signature check said
    official_file: str | None = None
    image: str = ""  # "intact" / what is wrong / "not checked"
    problem: str = ""  # the artifact could not be read or parsed

    def to_dict(self) -> dict[str, object]:
        return {
            "slot": self.slot,
            "present": self.present,
            "running": self.running,
            "app": self.app,
            "version": self.version,
            "counter": self.counter,
            "board": self.board,
            "keyids": list(self.keyids),
            "signed_by_us": self.signed_by_us,
            "signature": self.signature,
            "official_file": self.official_file,
            "image": self.image,
            "problem": self.problem,
        }


@dataclass(frozen=True)
class WarrantyReport:
    port: str
    console: ConsoleCheck
    facts: dict[str, object]
    guard: ds.GuardInfo
    trust_root: str
    slots: tuple[SlotReport, ...]
    evidence: tuple[Evidence, ...]
    power_on: tuple[str, ...] = field(default=())

    @property
    def reachable(self) -> bool:
        return self.console.reachable

    @property
    def verdict(self) -> Verdict:
        marks = {e.mark for e in self.evidence}
        if Mark.MODIFIED in marks:
            return Verdict.MODIFIED
        if Mark.UNKNOWN in marks or not self.reachable:
            return Verdict.UNKNOWN
        if Mark.ATTEMPT in marks:
            return Verdict.ATTEMPT
        return Verdict.OFFICIAL

    @property
    def exit_code(self) -> int:
        return EXIT_CODES[self.verdict]

    def summary(self) -> str:
        v = self.verdict
        running = next((s for s in self.slots if s.running), None)
        what = (
            f"{running.app} {running.version} (counter {running.counter})"
            if running and running.app
            else ""
        )
        if v == Verdict.OFFICIAL:
            return f"official: {what} signed by our release key, our trust root, guard intact"
        if v == Verdict.ATTEMPT:
            return (
                f"official release running ({what}); tampering attempt recorded: the guard "
                "refused something (see the evidence)"
            )
        if v == Verdict.MODIFIED:
            return "modified: not as shipped (see the evidence marked 'modified')"
        if not self.reachable:
            return (
                "unknown: the REPL is closed (expected on a locked device); give it a "
                "service unlock token to inspect it (docs/warranty.md)"
            )
        return "unknown: something could not be checked (see the evidence marked 'unknown')"

    def to_dict(self) -> dict[str, object]:
        return {
            "port": self.port,
            "reachable": self.reachable,
            "verdict": self.verdict.value,
            "summary": self.summary(),
            "exit_code": self.exit_code,
            "device": {**self.facts, "fingerprint": ds.fingerprint(self.facts)}
            if self.facts
            else {},
            "trust_root": self.trust_root,
            "guard": self.guard.to_dict(),
            "slots": [s.to_dict() for s in self.slots],
            "evidence": [e.to_dict() for e in self.evidence],
            "power_on": list(self.power_on),
            "cannot_prove": CANNOT_PROVE,
        }


CANNOT_PROVE = (
    "Everything here is reported by the device's own firmware. Without Secure "
    "Boot (T3: ESP32 Secure Boot v2, RP2350 OTP secure boot) a modified firmware "
    "can answer exactly as an official one would, and a firmware flashed and "
    "replaced by the original again leaves no trace here."
)


# --------------------------------------------------------------------------- running


def inspect_port(
    port: str,
    official: Official,
    *,
    timing: Timing = DEFAULT_TIMING,
    power_on: tuple[str, ...] = (),
    limits: Limits = DEFAULT_LIMITS,
) -> WarrantyReport:
    console = check_console(port, timing=timing)
    evidence: list[Evidence] = []
    if not console.reachable:
        # What the guard printed is all there is (the log itself is read when reachable).
        lines = list(power_on) + ds.console_guard_lines(console.output)
        evidence += _log_evidence(lines, "console")
        evidence.append(
            Evidence(
                "REPL",
                Mark.UNKNOWN,
                "no prompt on this line: expected on a device locked by the field/sealed profile. "
                "A service unlock token (signed by the offline root key, bound to this device's "
                "id) opens it for one boot; then inspect again.",
            )
        )
        return WarrantyReport(
            port, console, {}, ds.GuardInfo(False), "not read", (), tuple(evidence), power_on
        )
    transport: Transport = SerialTransport(port, limits=limits)
    probes = DeviceProbes(transport)
    try:
        report = _inspect(port, console, probes, official, evidence, limits, power_on)
        probes.close()
        return report
    finally:
        transport.close()


def inspect_sim(
    board: VirtualBoard | PicoBoard, official: Official, *, timing: Timing = DEFAULT_TIMING
) -> WarrantyReport:
    """Power the virtual board on (its boot sequence runs) and inspect it."""
    if isinstance(board, PicoBoard):
        board.pico.start()
        try:
            board.settle()
            lines = tuple(ds.console_guard_lines(board.pico.output))
            return inspect_port(board.pico.path, official, timing=timing, power_on=lines)
        finally:
            board.pico.stop()
    link = SimLink(board.flash, board.info.heapsize, boot=True)
    try:
        lines = tuple(ds.console_guard_lines(link.power_on_output))
        return inspect_port(link.path, official, timing=timing, power_on=lines)
    finally:
        link.close()


def _inspect(
    port: str,
    console: ConsoleCheck,
    probes: DeviceProbes,
    official: Official,
    evidence: list[Evidence],
    limits: Limits,
    power_on: tuple[str, ...],
) -> WarrantyReport:
    facts, out = ds.read_facts(probes)
    evidence.append(_firmware_evidence(facts, out.text(), official))
    guard = ds.read_guard(probes)
    if not guard.installed:
        evidence.append(
            Evidence("guard", Mark.UNKNOWN, "no /mpseal folder: the mpseal guard is not installed")
        )
        return WarrantyReport(
            port, console, facts, guard, "not installed", (), tuple(evidence), power_on
        )
    evidence += _guard_evidence(probes, guard, official)
    root_text, device_root, root_ev = _trust_root_evidence(probes, official, limits)
    evidence.append(root_ev)
    state = guard.state or {}
    running = state.get("trial") or state.get("committed")
    if not guard.state:
        evidence.append(
            Evidence(
                "boot state", Mark.UNKNOWN, "no intact boot state: which slot runs is not known"
            )
        )
    slots = tuple(_slot(probes, s, s == running, official, device_root, limits) for s in ("a", "b"))
    evidence += _slot_evidence(slots, running)
    if guard.damaged:
        evidence.append(
            Evidence(
                "boot state",
                Mark.INFO,
                f"{guard.damaged} damaged state copy (edited outside the "
                "guard, or flash damage); the guard used the other",
            )
        )
    if guard.state:
        evidence.append(
            Evidence(
                "boot state",
                Mark.INFO,
                f"committed slot {state.get('committed')}, security counter "
                f"{state.get('counter')}, service unlocks used "
                f"{state.get('unlocks')}",
            )
        )
    evidence += _log_evidence(list(guard.log), "guard log")
    return WarrantyReport(port, console, facts, guard, root_text, slots, tuple(evidence), power_on)


# --------------------------------------------------------------------------- evidence


def _firmware_evidence(facts: dict[str, object], failed: str, official: Official) -> Evidence:
    if not facts:
        return Evidence(
            "firmware", Mark.UNKNOWN, f"the firmware's facts could not be read: {failed}"
        )
    fp = ds.fingerprint(facts)
    impl = facts.get("impl") or facts.get("version")
    uname = f", uname {facts['uname']}" if facts.get("uname") else ""
    desc = clean(f"{facts.get('platform')}, {impl}{uname}", 300)
    if official.expect_firmware and fp != official.expect_firmware:
        return Evidence(
            "firmware",
            Mark.MODIFIED,
            f"fingerprint {fp[:16]} is not the expected {official.expect_firmware[:16]}: {desc}",
        )
    mark = Mark.OK if official.expect_firmware else Mark.INFO
    return Evidence(
        "firmware",
        mark,
        f"{desc}; fingerprint {fp[:16]} (what the firmware says "
        "about itself; without Secure Boot it can say anything)",
    )


def _guard_evidence(
    probes: DeviceProbes, guard: ds.GuardInfo, official: Official
) -> list[Evidence]:
    out = []
    shim, why = ds.read_file(probes, "/main.py", 1024)
    if shim is None:
        out.append(Evidence("main.py", Mark.UNKNOWN, f"/main.py: {why}"))
    elif shim.strip() == MAIN_SHIM.strip():
        out.append(
            Evidence("main.py", Mark.OK, "the guard's shim: every boot goes through the guard")
        )
    else:
        out.append(
            Evidence(
                "main.py",
                Mark.MODIFIED,
                f"/main.py is not the guard's shim ({len(shim)} bytes): the guard may be bypassed",
            )
        )
    board = guard.board or official.board
    if not board:
        out.append(
            Evidence("guard", Mark.UNKNOWN, "no board in device.json to compile the guard for")
        )
        return out
    try:
        expected = compiled_guard(board)
    except MpsealError as e:
        out.append(Evidence("guard", Mark.UNKNOWN, f"cannot compile the guard for {board}: {e}"))
        return out
    differ = []
    # the pack holds the boot path's modules again: the guard loads them from it first
    for name, path in [(n, f"/lib/{n}.mpy") for n in GUARD_MODULES] + [(BOOT_PACK[5:], BOOT_PACK)]:
        data = expected.get(path)
        if data is None:
            continue
        got = probes.call("mpa_sha", f"mpa_sha({path!r}, 0, {len(data) + 1})")
        want = hashlib.sha256(data).hexdigest()
        if not (got.ok and got.value == (1, want)):
            differ.append(name if got.ok else f"{name} ({got.text()})")
    if differ:
        out.append(
            Evidence(
                "guard",
                Mark.UNKNOWN,
                "differs from the guard this mpseal installs for "
                f"{board}: {', '.join(differ)} (installed by another mpseal "
                "version, or modified)",
            )
        )
    else:
        out.append(
            Evidence(
                "guard",
                Mark.OK,
                f"/lib/{{{','.join(GUARD_MODULES)}}}.mpy and {BOOT_PACK} are "
                f"byte for byte the guard this mpseal compiles for {board}",
            )
        )
    out.extend(_rom_guard_evidence(probes, board))
    profile = guard.profile or "field (the guard's default)"
    out.append(Evidence("profile", Mark.INFO, f"lockdown profile {profile}"))
    return out


def _rom_guard_evidence(probes: DeviceProbes, board: str) -> list[Evidence]:
    """The head of a ROMFS partition is mounted at /rom, ahead of /lib on sys.path, before
    main.py: where mpseal install put the guard's boot modules there, the code that boots
    is that image, not /lib's."""
    image = guard_rom_image(board)
    got = probes.call("mpa_rom", f"mpa_rom({len(image)})")
    if not got.ok or got.value in (None, 0):
        return []  # no partition, or no image at its head: the guard boots from /lib
    if got.value == hashlib.sha256(image).hexdigest():
        return [
            Evidence(
                "guard in ROMFS",
                Mark.OK,
                "the ROMFS partition's head is byte for byte the guard image this mpseal "
                f"writes for {board} (its boot modules, run in place)",
            )
        ]
    return [
        Evidence(
            "guard in ROMFS",
            Mark.UNKNOWN,
            "the ROMFS partition's head holds an image other than the guard this mpseal "
            "writes (an app mirror from an older install, another version, or modified): "
            "the firmware mounts it at /rom, ahead of /lib, before main.py",
        )
    ]


def _trust_root_evidence(
    probes: DeviceProbes, official: Official, limits: Limits
) -> tuple[str, TrustRoot | None, Evidence]:
    data, why = ds.read_file(probes, TRUST_ROOT, limits.root_max_length + 1)
    if data is None:
        return "unreadable", None, Evidence("trust root", Mark.UNKNOWN, f"{TRUST_ROOT}: {why}")
    for i, root in enumerate(official.roots):
        if data == root.raw:
            older = "" if i == 0 else " (an older version: not yet rotated)"
            return (
                f"ours, version {root.version}",
                root,
                Evidence(
                    "trust root",
                    Mark.OK,
                    f"ours, version {root.version}{older}: same bytes as the project's",
                ),
            )
    try:
        foreign = trustroot.parse(data, limits)
    except BadDataError as e:
        return (
            "damaged",
            None,
            Evidence(
                "trust root", Mark.MODIFIED, f"not a valid trust root ({e}); the guard cannot boot"
            ),
        )
    release = foreign.roles.get("release")
    keys = ", ".join(k[:16] for k in (release.keyids if release else ()))
    ours = {k for r in official.roots for k in r.keys}
    shared = "" if not set(foreign.keys) & ours else " (it shares some keys with ours)"
    return (
        f"NOT ours (version {foreign.version})",
        foreign,
        Evidence(
            "trust root",
            Mark.MODIFIED,
            f"replaced: a valid trust root that is not ours (version {foreign.version}, "
            f"release keys {keys}){shared}: the device trusts someone else's builds",
        ),
    )


def _slot(
    probes: DeviceProbes,
    slot: str,
    running: bool,
    official: Official,
    device_root: TrustRoot | None,
    limits: Limits,
) -> SlotReport:
    path = f"/mpseal/slot-{slot}.mpseal"
    head, why = ds.read_file(probes, path, artifact.HEADER_LENGTH)
    if head is None:
        if why == "missing":
            return SlotReport(slot, False, running)
        return SlotReport(slot, True, running, problem=f"cannot read: {why}")
    try:
        mlen, count, off, ilen = _header(head, limits)
    except BadDataError as e:
        return SlotReport(slot, True, running, problem=str(e))
    sig_end = artifact.HEADER_LENGTH + mlen + count * sigblock.ENTRY_LENGTH
    body, why = ds.read_file(probes, path, sig_end)
    if body is None or len(body) != sig_end:
        return SlotReport(slot, True, running, problem=f"artifact head truncated ({why})")
    mbytes = body[artifact.HEADER_LENGTH : artifact.HEADER_LENGTH + mlen]
    try:
        sigs = sigblock.decode(body[artifact.HEADER_LENGTH + mlen : sig_end], count)
        man = manifest.parse(mbytes, limits)
    except BadDataError as e:
        return SlotReport(slot, True, running, problem=str(e))
    keyids = tuple(s.keyid for s in sigs)
    signed, signature = _signed_by_us(mbytes, sigs, official)
    if not signed and device_root is not None:
        try:
            device_root.verify("release", mbytes, sigs, "manifest")
            signature += "; it verifies under the trust root on the device"
        except SignatureError:
            signature += "; the device's trust root refuses it too"
    official_file = next((r.name for r in official.releases if r.manifest_bytes == mbytes), None)
    # An encrypted release's slot ends with the device's 40-byte key record (formats/
    # encrypted.py): exactly that may follow its image; nothing may follow a plain one.
    tail = encrypted.RECORD_LENGTH if man.encrypted is not None else 0
    digest = probes.call(
        "mpa_sha", f"mpa_sha({path!r}, {off}, {ilen + tail + 1})", timeout=10.0 + ilen / 50_000
    )
    if tail and digest.ok and isinstance(digest.value, tuple) and digest.value[0] == 1:
        digest = probes.call(  # the record is there: the image's own hash
            "mpa_sha", f"mpa_sha({path!r}, {off}, {ilen})", timeout=10.0 + ilen / 50_000
        )
        if digest.ok and isinstance(digest.value, tuple) and len(digest.value) == 2:
            digest = replace(digest, value=(1, digest.value[1]))  # complete, as checked above
    if not digest.ok or digest.value is None:
        image = f"not checked ({digest.text()})"
    elif not (isinstance(digest.value, tuple) and len(digest.value) == 2):
        image = "not checked (malformed reply)"
    elif digest.value[0] == 0:
        image = "trailing bytes after the image" + (" and its key record" if tail else "")
    elif digest.value[0] != 1:
        image = "truncated"
    elif digest.value[1] != man.image_sha256:
        image = "altered: its SHA-256 does not match the signed manifest"
    else:
        image = "intact"
    return SlotReport(
        slot,
        True,
        running,
        man.app,
        man.version,
        man.counter,
        man.board,
        keyids,
        signed,
        signature,
        official_file,
        image,
    )


def _header(head: bytes, limits: Limits) -> tuple[int, int, int, int]:
    """(manifest length, signature count, image offset, image length), checked."""
    if len(head) != artifact.HEADER_LENGTH:
        raise FormatError(f"artifact is truncated: {len(head)} bytes")
    magic, version, hlen, mlen, count, _, off, ilen, check = artifact.HEADER.unpack(head)
    if magic != artifact.MAGIC:
        raise FormatError("not an mpseal artifact (wrong magic bytes)")
    if check != artifact.header_check(head) or hlen != artifact.HEADER_LENGTH:
        raise FormatError("artifact header is damaged")
    if version != artifact.FORMAT_VERSION:
        raise FormatError(f"artifact format version {version} is not supported")
    if mlen > limits.manifest_max_length or not 1 <= count <= limits.signatures_max_count:
        raise FormatError("artifact header has an oversized manifest or signature count")
    if ilen > limits.image_max_length:
        raise FormatError("artifact image is over the size limit")
    sig_end = artifact.HEADER_LENGTH + mlen + count * sigblock.ENTRY_LENGTH
    if off != -(-sig_end // artifact.IMAGE_ALIGN) * artifact.IMAGE_ALIGN:
        raise FormatError("artifact image offset is not where the layout puts it")
    return mlen, count, off, ilen


def _signed_by_us(
    mbytes: bytes, sigs: list[sigblock.SignatureEntry], official: Official
) -> tuple[bool, str]:
    first: str | None = None
    for i, root in enumerate(official.roots):
        try:
            keys = root.verify("release", mbytes, sigs, "manifest")
        except SignatureError as e:
            first = first or str(e)
            continue
        when = "" if i == 0 else f" (of our trust root version {root.version})"
        return True, f"signed by our release key {keys[0][:16]}{when}"
    return False, f"NOT signed by our release key: {first}"


def _slot_evidence(slots: tuple[SlotReport, ...], running: object) -> list[Evidence]:
    out = []
    for s in slots:
        what = f"slot {s.slot}" + (" (running)" if s.running else "")
        if not s.present:
            if s.running:
                out.append(
                    Evidence(what, Mark.MODIFIED, "the boot state names this slot but it is empty")
                )
            continue
        name = f"{s.app} {s.version} (counter {s.counter})" if s.app else "its artifact"
        if s.problem:
            mark = Mark.MODIFIED if s.running else Mark.ATTEMPT
            out.append(Evidence(what, mark, f"{s.problem}: the guard refuses it"))
            continue
        bad_image = s.image != "intact" and not s.image.startswith("not checked")
        if not s.signed_by_us or bad_image:
            mark = Mark.MODIFIED if s.running else Mark.ATTEMPT
            out.append(Evidence(what, mark, f"{name}: {s.signature}; image {s.image}"))
            continue
        if s.image.startswith("not checked"):
            out.append(Evidence(what, Mark.UNKNOWN, f"{name}: {s.signature}; image {s.image}"))
            continue
        where = (
            f"the official release {s.official_file}"
            if s.official_file
            else "signed by us but not among dist/*.mpseal (an older or unpublished build)"
        )
        out.append(Evidence(what, Mark.OK, f"{name}: {s.signature}; image intact; {where}"))
    if running is None:
        out.append(Evidence("running release", Mark.UNKNOWN, "no slot is committed"))
    return out


_REFUSED = re.compile(r"slot [ab] refused: |unlock refused: ")
_VERIFY_WORDS = (
    "signature",
    "signed",
    "hash",
    "truncated",
    "another board",
    "rollback",
    "damaged",
    "not an mpseal",
    "magic",
    "manifest",
)
_REVERTED = re.compile(r"trial of slot [ab] reverted: (.*)")
_HISTORY = re.compile(r"(booting|staged|committed|falling back|service unlock) ")


def _log_evidence(lines: list[str], source: str) -> list[Evidence]:
    out = []
    for raw in lines:
        line = raw.split(" ", 1)[1] if source == "guard log" and " " in raw else raw
        if _REFUSED.search(line):
            out.append(Evidence(source, Mark.ATTEMPT, line))
            continue
        m = _REVERTED.search(line)
        if m and any(w in m.group(1) for w in _VERIFY_WORDS):
            out.append(Evidence(source, Mark.ATTEMPT, line))
        elif m or _HISTORY.match(line) or "locked idle" in line:
            out.append(Evidence(source, Mark.INFO, line))
    return out
