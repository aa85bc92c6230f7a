"""An ordered hardening plan for one product: what the use case keeps, then the steps.

A plan has three phases, in this order, and never reorders within them:

    runtime   the lockdown profile the boot guard applies (dev / field / sealed)
    firmware  a custom MicroPython build: frozen guard, build options, test on a unit
    hardware  eFuses / OTP / option bytes, in the order the chip vendor requires;
              irreversible steps are marked, and the step that closes the last
              programming channel comes after every other step that touches the chip

Every step names the levers (``levers.py``) it applies, the tier it stops and how
to verify it took effect. ``check_order`` proves the order constraints; a plan that
breaks one is a bug in mpseal and is never returned.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType
from typing import Any

from mpseal.errors import ConfigError
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.model import ESP, Interface, Kind, Tier

KEEP_CHOICES: Mapping[str, str] = MappingProxyType(
    {
        "ota": "app (and firmware) updates over the network",
        "uart-logs": "log output on a UART (the REPL stays detached from it)",
        "usb-serial": "a USB serial port for the app's own protocol (not the REPL)",
        "repl-service": "a service REPL, opened only with a signed unlock token",
        "sd-data": "an SD card for data at /sd (never code, never on sys.path)",
        "webrepl": "WebREPL on a closed service network (discouraged)",
        "serial-flash": "reflashing over the ROM bootloader (ESP download mode, DFU, BOOTSEL)",
        "debug-port": "the JTAG/SWD debug port (leaves T3 open)",
    }
)


class Phase(StrEnum):
    RUNTIME = "runtime"
    FIRMWARE = "firmware"
    DESIGN = "design"
    HARDWARE = "hardware"


PHASE_ORDER = (Phase.RUNTIME, Phase.FIRMWARE, Phase.DESIGN, Phase.HARDWARE)


@dataclass(frozen=True)
class Step:
    id: str
    phase: Phase
    title: str
    detail: str = ""
    commands: tuple[str, ...] = ()
    irreversible: bool = False
    stops: Tier | None = None
    verify: str = ""
    levers: tuple[str, ...] = ()  # lever ids this step applies
    after: tuple[str, ...] = ()  # steps that must come earlier when both are in the plan
    touches_chip: bool = False  # talks to the chip through a programming channel
    closes_access: bool = False  # after it, that channel is gone for good

    def to_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "phase": self.phase.value,
            "title": self.title,
            "detail": self.detail,
            "commands": list(self.commands),
            "irreversible": self.irreversible,
            "stops": self.stops.value if self.stops else None,
            "verify": self.verify,
            "levers": list(self.levers),
            "after": list(self.after),
        }


@dataclass(frozen=True)
class OpenInterface:
    interface: Interface
    why: str


@dataclass(frozen=True)
class Plan:
    board: str
    keep: tuple[str, ...]
    profile: str
    steps: tuple[Step, ...]
    left_open: tuple[OpenInterface, ...]

    def step(self, step_id: str) -> Step:
        for s in self.steps:
            if s.id == step_id:
                return s
        raise KeyError(step_id)

    def step_ids(self) -> list[str]:
        return [s.id for s in self.steps]

    def to_dict(self) -> dict[str, Any]:
        return {
            "board": self.board,
            "keep": list(self.keep),
            "profile": self.profile,
            "steps": [s.to_dict() for s in self.steps],
            "left_open": [
                {
                    "interface": o.interface.id,
                    "title": o.interface.title,
                    "tier": o.interface.tier.value,
                    "why": o.why,
                }
                for o in self.left_open
            ],
        }


def parse_keep(values: Iterable[str]) -> tuple[str, ...]:
    """``--keep ota,uart-logs --keep sd-data`` -> sorted unique names; refuses unknown ones."""
    names: set[str] = set()
    for value in values:
        for raw in value.split(","):
            name = raw.strip()
            if not name:
                continue
            if name not in KEEP_CHOICES:
                raise ConfigError(
                    f"unknown --keep name {name!r}; choose from: {', '.join(KEEP_CHOICES)}"
                )
            names.add(name)
    return tuple(sorted(names))


def choose_profile(keep: Iterable[str]) -> str:
    """sealed unless a kept use needs a REPL-capable stream attached (then field)."""
    return "field" if {"usb-serial", "webrepl"} & set(keep) else "sealed"


# --------------------------------------------------------------------------- runtime phase


def _runtime_steps(board: str, keep: tuple[str, ...], profile: str) -> list[Step]:
    settings = [
        lv for lv in itf.runtime_settings(profile) if lv.applies_to(board) and lv.wanted(keep)
    ]
    steps = [
        Step(
            "profile",
            Phase.RUNTIME,
            f"Lockdown profile '{profile}' (applied by the boot guard)",
            detail=(
                f'Set [lockdown] profile = "{profile}" in mpseal.toml; the guard applies it at '
                "every boot:\n" + "\n".join(f"- {lv.action}" for lv in settings)
            ),
            stops=Tier.T0,
            verify=" ".join(lv.check.how for lv in settings),
            levers=tuple(lv.id for lv in settings),
        )
    ]
    for lv in itf.levers_for(board, kind=Kind.RUNTIME):
        if lv.only_with and lv.wanted(keep):
            steps.append(
                Step(
                    f"keep-{lv.only_with}",
                    Phase.RUNTIME,
                    f"Keep {lv.only_with}: {KEEP_CHOICES[lv.only_with]}",
                    detail=lv.action + (f" {lv.caveat}" if lv.caveat else ""),
                    stops=lv.stops,
                    verify=lv.check.how,
                    levers=(lv.id,),
                )
            )
    if "ota" in keep:
        steps.append(
            Step(
                "keep-ota",
                Phase.RUNTIME,
                f"Keep ota: {KEEP_CHOICES['ota']}",
                detail=_OTA_NOTES.get(board, _OTA_NOTES["*"]),
                stops=Tier.T1,
                verify="A tampered or older update is refused and logged by the guard.",
                levers=("rt-guard-verifies",),
            )
        )
    return steps


_OTA_NOTES = {
    "*": "The guard stages, verifies and trial-boots signed app updates (A/B slots).",
    "esp32": "The guard stages, verifies and trial-boots signed app updates. A firmware "
    "update must be signed with the Secure Boot key (mpseal lockdown esp32-sign) "
    "and needs an OTA partition table.",
    "esp32s3": "As esp32: app updates via the guard; firmware updates signed with the Secure "
    "Boot key (mpseal lockdown esp32-sign), OTA partition table required.",
    "rp2350": "App updates via the guard; a firmware update must be sealed with "
    "`picotool seal --sign` and the boot key.",
    "stm32": "App updates via the guard. At RDP 2 a firmware update can only come from your "
    "own firmware (e.g. mboot), never from DFU or SWD.",
    "openmv": "App updates via the guard; at RDP 2 firmware updates only through OpenMV's "
    "own bootloader (not checked by mpseal).",
}


# --------------------------------------------------------------------------- firmware phase

_BUILD = {
    "esp32": ("esp32", "ESP32_GENERIC"),
    "esp32s3": ("esp32", "ESP32_GENERIC_S3"),
    "rp2": ("rp2", "RPI_PICO"),
    "rp2350": ("rp2", "RPI_PICO2"),
    "stm32": ("stm32", "PYBV11"),
}


def _firmware_steps(board: str, keep: tuple[str, ...], out: str) -> list[Step]:
    lever_ids = tuple(lv.id for lv in itf.firmware_levers(board, keep))
    files = "manifest.py, frozen/ (boot.py, main.py, the guard), mpconfigboard_mpseal.h"
    if board in ESP:
        files += ", sdkconfig.mpseal"
    steps = [
        Step(
            "fw-files",
            Phase.FIRMWARE,
            "Write the firmware build fragment",
            detail=f"Files: {files}. Each build option names the interface it closes.",
            commands=(
                f"mpseal lockdown plan --board {board}"
                + (f" --keep {','.join(keep)}" if keep else "")
                + f" --out {out}",
            ),
            stops=Tier.T0,
            levers=lever_ids,
            verify="The files exist; the header lists one #define per option.",
        )
    ]
    folder = out.rstrip("/") or "/"
    manifest = f"{folder}/manifest.py" if folder.startswith("/") else f"$PWD/{folder}/manifest.py"
    if board in _BUILD:
        port, generic = _BUILD[board]
        detail = (
            f"Copy ports/{port}/boards/{generic} to your own board folder, add "
            '#include "mpconfigboard_mpseal.h" at the END of its mpconfigboard.h'
        )
        if board in ESP:
            detail += (
                ", and list(APPEND SDKCONFIG_DEFAULTS ${MICROPY_BOARD_DIR}/sdkconfig.mpseal)"
                " to its mpconfigboard.cmake"
            )
        cmd = f"make -C micropython/ports/{port} BOARD_DIR=$BOARD_DIR FROZEN_MANIFEST={manifest}"
    else:  # openmv
        detail = (
            "OpenMV firmware is built from the openmv repository, not ports/stm32: add "
            "freeze('<lockdown>/frozen') to the board's frozen manifest and the options "
            "to its board configuration (not verified by mpseal)."
        )
        cmd = "make -C openmv TARGET=<your OpenMV board>"
    steps.append(
        Step(
            "fw-build",
            Phase.FIRMWARE,
            "Build the sealed firmware",
            detail=detail,
            commands=(cmd,),
            after=("fw-files",),
            stops=Tier.T0,
            verify="The build finishes; the frozen modules list shows main.py, "
            "boot.py and mpseal_guard.",
        )
    )
    checks = [lv.check.how for lv in itf.levers_for(board, kind=Kind.RUNTIME) if lv.wanted(keep)]
    checks += [lv.check.how for lv in itf.firmware_levers(board, keep)]
    steps.append(
        Step(
            "fw-test",
            Phase.FIRMWARE,
            "Flash a TEST unit and check every lever",
            detail="Before any irreversible step: flash the firmware and the signed app on a unit "
            "you can afford to lose, and run each check below.",
            after=("fw-build",),
            stops=Tier.T0,
            touches_chip=True,
            verify="\n".join(f"- {c}" for c in dict.fromkeys(checks)),
        )
    )
    return steps


def _design_steps(board: str, keep: tuple[str, ...]) -> list[Step]:
    levers = [lv for lv in itf.levers_for(board, kind=Kind.DESIGN) if lv.wanted(keep)]
    return [
        Step(
            lv.id,
            Phase.DESIGN,
            lv.action,
            detail=lv.caveat,
            stops=lv.stops,
            verify=lv.check.how,
            levers=(lv.id,),
        )
        for lv in levers
    ]


# --------------------------------------------------------------------------- the plan


def build_plan(board: str, keep: Iterable[str] = (), out: str = "lockdown/") -> Plan:
    """The plan; ``out`` is the folder the build fragment is written to (``--out``), which
    the plan's own commands name."""
    from mpseal.lockdown.hardware import hardware_steps

    itf.check_board(board)
    kept = parse_keep(keep)
    profile = choose_profile(kept)
    steps = _runtime_steps(board, kept, profile)
    if board != "unix":
        steps += _firmware_steps(board, kept, out)
        steps += _design_steps(board, kept)
        steps += hardware_steps(board, kept)
    problems = check_order(steps)
    if problems:  # a bug in mpseal's step tables, never the user's input
        raise RuntimeError("lockdown plan out of order: " + "; ".join(problems))
    return Plan(board, kept, profile, tuple(steps), _left_open(board, kept, steps))


def _left_open(board: str, keep: tuple[str, ...], steps: list[Step]) -> tuple[OpenInterface, ...]:
    applied = {lid for s in steps for lid in s.levers}
    out = []
    for i in itf.interfaces_for(board):
        strong = [
            lv
            for lv in i.levers_for(board)
            if lv.id in applied and i.closes(lv) and lv.wanted(keep)
        ]
        if strong:
            continue
        kept_by = sorted(i.kept_by & set(keep))
        if kept_by:
            why = f"kept open on purpose (--keep {','.join(kept_by)})"
        elif not i.closable_on(board):
            why = f"this board has no way to close it against {i.tier.value}: {i.residual}"
        else:
            why = f"closing it needs a lever your --keep choice leaves out: {i.residual}"
        out.append(OpenInterface(i, why))
    return tuple(out)


def check_order(steps: Iterable[Step]) -> list[str]:
    """Every violated order constraint, as text (empty: the order is right)."""
    steps = list(steps)
    pos = {s.id: n for n, s in enumerate(steps)}
    problems = []
    if len(pos) != len(steps):
        problems.append("duplicate step ids")
    phases = [PHASE_ORDER.index(s.phase) for s in steps]
    if phases != sorted(phases):
        problems.append("phases out of order")
    for s in steps:
        for before in s.after:
            if before in pos and pos[before] > pos[s.id]:
                problems.append(f"{before} must come before {s.id}")
    closed_at = [n for n, s in enumerate(steps) if s.closes_access]
    if closed_at:
        for s in steps[closed_at[0] + 1 :]:
            if s.touches_chip:
                problems.append(f"{s.id} touches the chip after its access was closed")
    if "fw-test" in pos:
        for s in steps:
            if s.irreversible and pos[s.id] < pos["fw-test"]:
                problems.append(f"irreversible {s.id} before the test unit was checked")
    return problems
