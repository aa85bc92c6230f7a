"""``mpseal install``: one release onto a board on a serial line, through its boot guard.

The development path (like ``mpremote cp``, but verified): in this order, and nothing
is written before step 3 has passed.

    verify   the artifact on the host against the project's trust root (signature, hash)
    probe    the board's firmware (device/probe.py): .mpy version and arch, hashlib,
             vfs, a writable filesystem, free heap and flash; refused with every missing
             thing named if it cannot run the release
    guard    the guard's modules (compiled for the release's board), main.py, the
             device config and the trust root: only the files that differ are written
             (each atomically: tmp, checked by size and hash, rename)
    stage    the artifact handed to the board's own guard, which verifies it again and
             puts it in the inactive slot on trial; it boots at the next reset
    reset    (optional) the board is reset through the guard's port layer

A board that already trusts another trust root is refused unless ``replace_root``:
an install must not silently re-key a board set up for another product.
Threat tier: the board's guard checks every release itself (T1); anyone with the
REPL open can do what this does (T0), which the lockdown profiles close.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from dataclasses import dataclass, field

from mpseal.device.guard_install import (
    TRUST_ROOT,
    guard_files,
    hardware_id,
    place_guard_rom,
    stage_artifact,
)
from mpseal.device.probe import (
    BoardFacts,
    Decision,
    Needs,
    decide,
    file_digests,
    needs_for,
    probe_board,
    refusal,
)
from mpseal.device.transport import LinkError, Progress, Transport
from mpseal.errors import PolicyError, UsageError
from mpseal.formats import artifact as artifact_mod
from mpseal.formats import encrypted
from mpseal.formats.trustroot import TrustRoot

SLOT_FILES = (
    "/mpseal/slot-a.mpseal",
    "/mpseal/slot-b.mpseal",
    "/mpseal/incoming.mpseal",
    "/mpseal/slot-a.mpseal.tmp",
    "/mpseal/slot-b.mpseal.tmp",
)
MAIN = "/main.py"
RESET = "import mpseal_port\nmpseal_port.reset()"
RESET_TIMEOUT = 3.0

StepHook = Callable[[str], None]


class RootMismatchError(PolicyError):
    """The board trusts another trust root than the project's."""


@dataclass
class InstallResult:
    app: str
    version: str
    counter: int
    slot: str
    facts: BoardFacts
    decision: Decision
    written: list[str] = field(default_factory=list)
    replaced: list[str] = field(default_factory=list)  # written over a different file
    unchanged: list[str] = field(default_factory=list)
    reset: bool = False
    guard_at: str = "lib"  # "romfs": the boot's modules also at the ROMFS partition's head

    def to_dict(self) -> dict[str, object]:
        return {
            "app": self.app,
            "version": self.version,
            "counter": self.counter,
            "slot": self.slot,
            "mount": self.decision.mount,
            "notes": list(self.decision.notes),
            "written": self.written,
            "replaced": self.replaced,
            "unchanged": self.unchanged,
            "reset": self.reset,
            "guard_at": self.guard_at,
            "board": self.facts.to_dict(),
        }


def check(
    transport: Transport, needs: Needs, paths: list[str], mount: str = "auto"
) -> tuple[BoardFacts, Decision]:
    """Probe the board and decide; raise :class:`UnfitBoardError` if it cannot run ``needs``."""
    facts = probe_board(transport)
    replaced = file_digests(transport, paths, digest=False) if facts.writable_fs else {}
    decision = decide(facts, needs, tuple(size for size, _ in replaced.values()), mount)
    if not decision.ok:
        raise refusal(facts, needs, decision)
    return facts, decision


def install(
    transport: Transport,
    data: bytes,
    root: TrustRoot,
    *,
    profile: str,
    mount: str = "auto",
    replace_root: bool = False,
    reset: bool = False,
    on_step: StepHook | None = None,
    progress: Progress | None = None,
    release_key: bytes | None = None,
) -> InstallResult:
    def step(name: str) -> None:
        if on_step:
            on_step(name)

    man = artifact_mod.verify(data, root).manifest
    if man.encrypted is not None:
        if release_key is None:
            raise UsageError(
                "this release is encrypted: install it with its key (dist/<app>-<version>.key)"
            )
        encrypted.decrypt(man, artifact_mod.decode(data).image, release_key)
    step("verify")
    files = guard_files(man.board, profile, root.raw, mount)
    needs = needs_for(man.board, data, files, release_key=release_key)
    facts, decision = check(transport, needs, [*files, *SLOT_FILES], mount)
    step("probe")

    have = file_digests(transport, list(files))
    old_root = have.get(TRUST_ROOT)
    if (
        old_root is not None
        and old_root[1] != hashlib.sha256(root.raw).digest()
        and not replace_root
    ):
        raise RootMismatchError(
            "the board trusts another trust root than this project's (set up for another "
            "product, or before a root rotation); pass --replace-root to replace it"
        )
    result = InstallResult(man.app, man.version, man.counter, "", facts, decision)
    # main.py last: until the guard's modules, config and trust root are all in place, a
    # reset runs whatever the board ran before (or the old guard), not a half-installed one
    for path, blob in sorted(files.items(), key=lambda item: item[0] == MAIN):
        if have.get(path) == (len(blob), hashlib.sha256(blob).digest()):
            result.unchanged.append(path)
        else:
            transport.write_file(path, blob, progress)
            result.written.append(path)
            if path in have:
                result.replaced.append(path)
    result.guard_at = place_guard_rom(transport, man.board, rom_partition(facts), man.image_size)
    step("guard")

    record = None
    if man.encrypted is not None and release_key is not None:  # wrapped for this board only
        record = encrypted.wrap(release_key, hardware_id(transport), man.image_sha256)
    result.slot = stage_artifact(transport, data, progress, record)
    step("stage")
    if reset:
        reset_board(transport)
        result.reset = True
        step("reset")
    return result


def rom_partition(facts: BoardFacts) -> tuple[int, bool] | None:
    """The probed ROMFS partition as place_guard_rom takes it: (size, takes block writes)."""
    rom = facts.rom
    return (rom.size, rom.block_device) if rom is not None and rom.count > 0 else None


def reset_board(transport: Transport) -> None:
    """Reset the board through the guard's port layer (machine.reset(); the VM: exit 17)."""
    try:
        transport.exec(RESET, timeout=RESET_TIMEOUT)
    except LinkError:
        pass  # the line goes down with the board: that is the reset
