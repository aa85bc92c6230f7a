"""The lockdown model: interfaces that can have a hole, the levers that close them, and probes.

The types only; the data lives in three catalogs read by ``mpseal lockdown plan``,
the generated pages in ``docs/lockdown/`` and the live-device audit:
``probes.py`` (what the audit runs), ``levers.py`` (ways to close a hole) and
``interfaces.py`` (the holes, per board, with the queries over them). Nothing here
talks to a device or prints.

The model::

    Interface  a way in (REPL over USB, ROM download mode, ...), on some boards,
      │        used by an attacker of one threat tier (T0..T4, docs/threats.md)
      ├── audit  the Probes `mpseal audit` runs to see whether it is open on a device
      └── Lever  one way to close it: runtime (the boot guard's profile),
            │    firmware (a build option), hardware (eFuse/OTP/option bytes),
            │    or design (the board and enclosure); each with its own strength,
            │    reversibility and boards
            ├── BuildOption  a C macro or sdkconfig line (firmware levers)
            └── Check        how to tell it took effect, with an optional Probe

Where the source of a statement was not checked by us, the text says so
(``unsure``) rather than guessing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from types import MappingProxyType


class Tier(StrEnum):
    T0 = "T0"
    T1 = "T1"
    T2 = "T2"
    T3 = "T3"
    T4 = "T4"


TIER_ATTACKER: Mapping[Tier, str] = MappingProxyType(
    {
        Tier.T0: "curious owner: USB drive, REPL, SD card in a PC",
        Tier.T1: "the network: MITM, malicious mirror, replayed updates",
        Tier.T2: "a stolen online server key",
        Tier.T3: "physical access with tools (esptool read-flash, SWD, DFU, BOOTSEL)",
        Tier.T4: "a lab (glitching, decapping): out of scope",
    }
)


class Kind(StrEnum):
    RUNTIME = "runtime"  # set by the boot guard at every boot (the lockdown profile)
    FIRMWARE = "firmware"  # a build option of a custom MicroPython firmware
    HARDWARE = "hardware"  # eFuse, OTP or option bytes: stored in the chip
    DESIGN = "design"  # the board, the enclosure, the production process


class Reversible(StrEnum):
    YES = "yes"
    REFLASH = "yes, by flashing another firmware"
    ERASE = "only by erasing the whole chip"
    NO = "NO (irreversible)"


class ProbeKind(StrEnum):
    DEVICE = "device"  # a MicroPython expression; compare repr() of its value
    HOST = "host"  # a host command ({port} is the serial port); compare its output
    SERIAL = "serial"  # bytes sent to a REPL stream; compare what comes back
    MANUAL = "manual"  # a person has to look


class Seen(StrEnum):
    """What the live audit found an interface to be."""

    OPEN = "open"
    CLOSED = "closed"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Probe:
    """A test the live-device audit can run: ``closed_when`` says what a closed hole looks like.

    For ``mpseal audit`` (lockdown/audit.py) a probe also says what its result means:
    the result is a *token*: ``repr()`` of a DEVICE probe's value or ``"raises <Name>"``
    when it raised on the device, or for a SERIAL probe what the line showed (see
    ``device/console.py``). ``open_if``/``closed_if`` list tokens; ``otherwise`` is the
    verdict for any other value that did not raise. Anything else says "unknown".
    """

    kind: ProbeKind
    code: str
    closed_when: str
    open_if: tuple[str, ...] = ()
    closed_if: tuple[str, ...] = ()
    otherwise: Seen = Seen.UNKNOWN
    helper: str = ""  # a function of runtime/mpseal_audit.py that ``code`` calls (sent first)
    secret: bool = False  # the value is a secret: the audit never shows or stores it

    def judge(self, token: str) -> Seen:
        if token in self.open_if:
            return Seen.OPEN
        if token in self.closed_if:
            return Seen.CLOSED
        if token.startswith("raises ") or token == "failed":
            return Seen.UNKNOWN
        return self.otherwise


@dataclass(frozen=True)
class Check:
    how: str
    probe: Probe | None = None


class KeptUses:
    """A rule tied to the uses a product keeps (``--keep``): ``only_with`` one use,
    left out when any of ``dropped_by`` is kept. Shared by BuildOption and Lever."""

    only_with: str | None
    dropped_by: frozenset[str]

    def wanted(self, keep: Iterable[str]) -> bool:
        kept = set(keep)
        if self.only_with is not None and self.only_with not in kept:
            return False
        return not (self.dropped_by & kept)


@dataclass(frozen=True)
class BuildOption(KeptUses):
    """One line of a firmware build: a C macro in mpconfigboard.h or an ESP-IDF sdkconfig line."""

    name: str
    value: str
    boards: frozenset[str]
    file: str = "mpconfigboard.h"  # or "sdkconfig"
    overridable: bool = True  # False: the port sets it unconditionally; needs a port patch
    note: str = ""
    only_with: str | None = None  # only when this use is kept
    dropped_by: frozenset[str] = frozenset()  # left out when one of these uses is kept


@dataclass(frozen=True)
class Lever(KeptUses):
    id: str
    kind: Kind
    action: str
    boards: frozenset[str]
    stops: Tier
    reversible: Reversible
    check: Check
    options: tuple[BuildOption, ...] = ()
    profiles: frozenset[str] = frozenset()  # runtime levers: the profiles that apply them
    only_with: str | None = None  # applies only when this use is kept (--keep)
    dropped_by: frozenset[str] = frozenset()  # not applied when one of these uses is kept
    caveat: str = ""

    def applies_to(self, board: str) -> bool:
        return board in self.boards


@dataclass(frozen=True)
class Interface:
    id: str
    title: str
    boards: frozenset[str]
    tier: Tier  # the attacker who uses this hole
    hole: str  # what it gives them
    levers: tuple[Lever, ...]
    residual: str  # what stock firmware (and these levers) cannot stop
    kept_by: frozenset[str] = frozenset()  # uses (--keep) that leave it reachable on purpose
    board_notes: Mapping[str, str] = field(default_factory=dict)
    unsure: str = ""
    partial: frozenset[str] = frozenset()  # levers that narrow this hole but do not close it
    audit: tuple[Probe, ...] = ()  # how `mpseal audit` tells on a live device if it is open

    def closes(self, lever: Lever) -> bool:
        """Whether ``lever`` alone holds against this interface's tier."""
        return lever.id not in self.partial and _tier_at_least(lever.stops, self.tier)

    def levers_for(self, board: str) -> tuple[Lever, ...]:
        return tuple(lv for lv in self.levers if lv.applies_to(board))

    def closable_on(self, board: str, keep: Iterable[str] = ()) -> bool:
        """Whether a lever on ``board`` (given the uses kept) holds against this tier."""
        kept = tuple(keep)
        return any(self.closes(lv) and lv.wanted(kept) for lv in self.levers_for(board))


def _tier_at_least(a: Tier, b: Tier) -> bool:
    return list(Tier).index(a) >= list(Tier).index(b)


# --------------------------------------------------------------------------- boards and profiles

ESP32 = frozenset({"esp32"})
ESP32S3 = frozenset({"esp32s3"})
ESP = ESP32 | ESP32S3
RP2040 = frozenset({"rp2"})
RP2350 = frozenset({"rp2350"})
RP = RP2040 | RP2350
STM32 = frozenset({"stm32"})
OPENMV = frozenset({"openmv"})
STM = STM32 | OPENMV
HW = ESP | RP | STM
UNIX = frozenset({"unix"})
ALL = HW | UNIX

PROFILES = ("dev", "field", "sealed")
LOCKED = frozenset({"field", "sealed"})
SEALED = frozenset({"sealed"})


def dev_probe(code: str, closed: str) -> Probe:
    """A DEVICE probe: a MicroPython expression whose value says ``closed``."""
    return Probe(ProbeKind.DEVICE, code, closed)


def host_probe(code: str, closed: str) -> Probe:
    """A HOST probe: a command on the host whose output says ``closed``."""
    return Probe(ProbeKind.HOST, code, closed)
