"""The interface model: consistent, honest about what cannot be closed, usable by the audit."""

from __future__ import annotations

import ast

import pytest

from mpseal.errors import ConfigError
from mpseal.formats.boards import BOARDS
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.model import Kind, Lever, ProbeKind, Reversible, Tier
from mpseal.lockdown.plan import KEEP_CHOICES


def test_ids_are_unique_and_boards_known() -> None:
    ids = [i.id for i in itf.INTERFACES]
    assert len(ids) == len(set(ids))
    seen: dict[str, Lever] = {}
    for i in itf.INTERFACES:
        assert i.boards <= set(BOARDS), i.id
        assert set(i.board_notes) <= i.boards, i.id
        assert i.kept_by <= set(KEEP_CHOICES), i.id
        for lv in i.levers:
            assert lv.boards <= set(BOARDS), lv.id
            assert seen.setdefault(lv.id, lv) is lv, f"two levers named {lv.id}"
            assert lv.dropped_by <= set(KEEP_CHOICES) and (lv.only_with in (None, *KEEP_CHOICES))
            for opt in lv.options:
                assert opt.boards <= lv.boards, (lv.id, opt.name)


def test_every_port_has_the_interfaces_the_issue_names() -> None:
    wanted = {
        "repl-usb",
        "repl-uart",
        "raw-repl",
        "webrepl",
        "usb-msc",
        "safe-boot",
        "sd-boot",
        "memx",
        "compiler",
        "sys-path",
        "writable-boot",
        "ctrl-c",
        "rom-download",
        "jtag-swd",
        "stm32-dfu",
        "rp2-bootsel",
        "flash-readout",
    }
    assert wanted <= set(itf.INTERFACES_BY_ID)
    assert "rom-download" in {i.id for i in itf.interfaces_for("esp32s3")}
    assert "stm32-dfu" in {i.id for i in itf.interfaces_for("openmv")}
    assert "openmv-ide" in {i.id for i in itf.interfaces_for("openmv")}
    assert "rp2-bootsel" in {i.id for i in itf.interfaces_for("rp2350")}


def test_hardware_levers_are_the_only_ones_against_t3() -> None:
    for lv in itf.LEVERS.values():
        if lv.stops >= Tier.T3:  # StrEnum compares by text: "T3" > "T0"
            assert lv.kind in (Kind.HARDWARE, Kind.FIRMWARE), lv.id
        if lv.kind == Kind.RUNTIME:
            assert lv.stops in (Tier.T0, Tier.T1), lv.id
            assert lv.reversible == Reversible.YES


def test_every_irreversible_lever_is_hardware() -> None:
    irreversible = {lv.id for lv in itf.LEVERS.values() if lv.reversible == Reversible.NO}
    assert irreversible == {
        lv.id
        for lv in itf.LEVERS.values()
        if lv.kind == Kind.HARDWARE and lv.reversible == Reversible.NO
    }
    assert itf.LEVERS["hw-stm32-rdp1"].reversible == Reversible.ERASE
    assert itf.LEVERS["hw-stm32-rdp2"].reversible == Reversible.NO


@pytest.mark.parametrize(
    "board, holes",
    [
        ("rp2", {"jtag-swd", "rp2-bootsel", "flash-readout", "unsigned-firmware"}),
        ("rp2350", {"flash-readout"}),
        ("esp32", set()),
        ("esp32s3", set()),
        ("stm32", set()),
        ("unix", {"sim-host"}),
    ],
)
def test_open_on_says_plainly_what_a_chip_cannot_close(board: str, holes: set[str]) -> None:
    assert {i.id for i in itf.open_on(board)} == holes


def test_keeping_a_use_can_leave_an_interface_open() -> None:
    assert "jtag-swd" in {i.id for i in itf.open_on("stm32", ["debug-port"])}
    assert "rp2-bootsel" not in {i.id for i in itf.open_on("rp2350", ["serial-flash"])}  # SB
    assert "webrepl" in {i.id for i in itf.open_on("rp2", ["webrepl"])}


def test_runtime_profiles_lock_down_monotonically() -> None:
    dev = {lv.id for lv in itf.runtime_settings("dev")}
    field = {lv.id for lv in itf.runtime_settings("field")}
    sealed = {lv.id for lv in itf.runtime_settings("sealed")}
    assert dev <= field <= sealed
    assert dev == {"rt-guard-verifies"}
    assert {"rt-no-return", "rt-kbd-intr", "rt-sys-path"} <= field
    assert {"rt-dupterm", "rt-usb-builtin-none"} <= sealed - field
    with pytest.raises(ConfigError):
        itf.runtime_settings("open")


def test_build_options_follow_the_keep_choice() -> None:
    def names(board: str, keep: tuple[str, ...] = ()) -> set[str]:
        return {o.name for _, o in itf.build_options(board, keep)}

    assert "MICROPY_PY_MACHINE_MEMX" in names("stm32")
    assert "MICROPY_HW_HAS_SWITCH" in names("stm32")
    assert "MICROPY_HW_HAS_SWITCH" not in names("rp2")
    assert "MICROPY_HW_USB_CDC" in names("rp2")
    assert "MICROPY_HW_USB_CDC" not in names("rp2", ("usb-serial",))
    assert "MICROPY_ENABLE_COMPILER" not in names("stm32", ("repl-service",))
    assert not names("unix")
    # Options a port sets unconditionally are flagged, never silently emitted.
    compiler = [o for _, o in itf.build_options("esp32") if o.name == "MICROPY_ENABLE_COMPILER"]
    assert compiler and not compiler[0].overridable and "patch" in compiler[0].note


def test_probes_are_usable_by_the_audit() -> None:
    for lv in itf.LEVERS.values():
        probe = lv.check.probe
        assert lv.check.how, lv.id
        if probe is None:
            continue
        assert probe.code and probe.closed_when, lv.id
        if probe.kind == ProbeKind.DEVICE:
            ast.parse(probe.code, mode="eval")  # one expression, sent through repr() later


@pytest.mark.parametrize(
    "password, ok",
    [
        ("Xk7q2Lm9Z", True),
        ("Xk7q2Lm9", False),  # 8 characters
        ("Xk7q2Lm9Za", False),  # 10: WebREPL refuses it
        ("aaaaaaaaa", False),
        ("admin1234", False),
        ("Xk7q2Lm9!", False),
    ],
)
def test_webrepl_password_strength(password: str, ok: bool) -> None:
    assert (itf.webrepl_password_problems(password) == []) is ok
