"""The interfaces: every way into a MicroPython product that can have a hole, per board.

The catalog the lockdown model (``model.py``) is about, with the small queries
``mpseal lockdown plan``, the docs and the audit ask of it. Levers are in
``levers.py``, audit probes in ``probes.py``. Nothing here talks to a device or prints.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType

from mpseal.errors import ConfigError
from mpseal.formats.boards import BOARDS
from mpseal.lockdown.levers import (
    DS_NO_BUTTON,
    DS_NO_HEADER,
    FW_COMPILER_OFF,
    FW_ESP_SECURE,
    FW_FROZEN_BOOT,
    FW_MEMX_OFF,
    FW_SD_MOUNT_OFF,
    FW_SDCARD_OFF,
    FW_SWITCH_OFF,
    FW_UART_REPL_OFF,
    FW_USB_CDC_OFF,
    FW_USB_MSC_OFF,
    FW_WEBREPL_OFF,
    HW_ESP_DL_OFF,
    HW_ESP_DL_SECURE,
    HW_ESP_FE,
    HW_ESP_JTAG_OFF,
    HW_ESP_SB,
    HW_RP2350_BOOTSEL_OFF,
    HW_RP2350_DEBUG_OFF,
    HW_RP2350_SB,
    HW_STM32_RDP1,
    HW_STM32_RDP2,
    RT_DUPTERM,
    RT_GUARD_VERIFIES,
    RT_KBD_INTR,
    RT_NO_RETURN,
    RT_NO_WEBREPL,
    RT_SD_DATA,
    RT_SKIPSD,
    RT_STM32_REPL_UART,
    RT_STM32_USB,
    RT_SYS_PATH,
    RT_UART_LOGS,
    RT_USB_BUILTIN_NONE,
    RT_WEBREPL_PASSWORD,
)
from mpseal.lockdown.model import (
    ALL,
    ESP,
    ESP32S3,
    HW,
    OPENMV,
    PROFILES,
    RP,
    STM,
    STM32,
    UNIX,
    BuildOption,
    Interface,
    Kind,
    Lever,
    Tier,
)
from mpseal.lockdown.probes import (
    AP_APP_EXIT,
    AP_COMPILER,
    AP_CTRL_C,
    AP_FLASH_API,
    AP_MEM32,
    AP_PROMPT,
    AP_RAW_REPL,
    AP_SD,
    AP_SWITCH,
    AP_SYS_PATH,
    AP_UCTYPES,
    AP_USB_MODE,
    AP_WEBREPL,
    AP_WEBREPL_PASS,
    AP_WRITABLE,
)

# --------------------------------------------------------------------------- interfaces

_CODE_EXEC_LEVERS = (RT_NO_RETURN, RT_KBD_INTR, FW_FROZEN_BOOT, FW_COMPILER_OFF)

INTERFACES: tuple[Interface, ...] = (
    Interface(
        "repl-usb",
        "REPL over USB serial (CDC)",
        ESP32S3 | RP | STM,
        Tier.T0,
        "A Python prompt on the USB port: read, change or delete every file, call any "
        "function (flash reads included), stop the app.",
        (
            RT_NO_RETURN,
            RT_KBD_INTR,
            RT_USB_BUILTIN_NONE,
            RT_STM32_USB,
            RT_DUPTERM,
            FW_USB_CDC_OFF,
            FW_COMPILER_OFF,
        ),
        "Stock firmware has no authenticated REPL: whoever reaches the prompt owns the "
        "device. The run-time levers leave a short window at reset, before the first line "
        "of main.py runs.",
        kept_by=frozenset({"repl-service"}),
        board_notes={
            "esp32s3": "ESP32_GENERIC_S3 uses TinyUSB CDC on the USB-OTG pins "
            "(MICROPY_HW_USB_CDC); other boards use the USB Serial/JTAG peripheral.",
            "openmv": "OpenMV IDE talks to the camera over this same USB serial port "
            "(see openmv-ide).",
        },
        audit=(AP_PROMPT,),
    ),
    Interface(
        "repl-uart",
        "REPL over UART",
        ALL,
        Tier.T0,
        "A Python prompt on a UART header (or the USB-UART bridge of a dev board): the same "
        "full control as the USB REPL.",
        (
            RT_NO_RETURN,
            RT_KBD_INTR,
            RT_STM32_REPL_UART,
            RT_DUPTERM,
            RT_UART_LOGS,
            FW_UART_REPL_OFF,
            FW_COMPILER_OFF,
            DS_NO_HEADER,
        ),
        "The ESP32's UART0 REPL is compiled into the port (not a dupterm stream): no "
        "run-time switch detaches it, only the firmware option does. The ROM and the ESP-IDF "
        "bootloader print boot messages on UART0 whatever MicroPython does.",
        kept_by=frozenset({"repl-service"}),
        board_notes={
            "esp32": "The USB port of most ESP32 dev boards is a USB-UART bridge to UART0: "
            "this is the ESP32's only REPL.",
            "esp32s3": "ESP32_GENERIC_S3 enables the UART0 REPL (MICROPY_HW_ENABLE_UART_REPL 1) "
            "besides USB.",
            "rp2": "Off by default (MICROPY_HW_ENABLE_UART_REPL 0); boot code can attach a "
            "UART with os.dupterm.",
            "rp2350": "As rp2.",
            "stm32": "Board-dependent: MICROPY_HW_UART_REPL in mpconfigboard.h.",
            "unix": "The console (stdin) is the REPL; the virtual board's pty plays the UART.",
        },
        audit=(AP_PROMPT,),
    ),
    Interface(
        "raw-repl",
        "Raw REPL and raw-paste mode (what mpremote, Thonny and rshell use)",
        ALL,
        Tier.T0,
        "Ctrl-A at the prompt (Ctrl-A Ctrl-E for raw-paste) runs any code sent to it: "
        "`mpremote cp`, `fs`, `mount` and `run` copy files in and out and execute scripts. "
        "A soft reset in raw mode also skips main.py.",
        (RT_NO_RETURN, RT_KBD_INTR, FW_UART_REPL_OFF, FW_USB_CDC_OFF, FW_COMPILER_OFF),
        "No option disables the raw REPL alone: it is part of the REPL and reachable wherever "
        "a prompt is. Without the compiler it is not built at all.",
        kept_by=frozenset({"repl-service"}),
        audit=(AP_RAW_REPL,),
    ),
    Interface(
        "ctrl-c",
        "Ctrl-C (KeyboardInterrupt) on a REPL stream",
        ALL,
        Tier.T0,
        "0x03 on any REPL stream raises KeyboardInterrupt inside the running app; if nothing "
        "catches it, main.py ends and the prompt appears.",
        (RT_KBD_INTR, RT_NO_RETURN, FW_FROZEN_BOOT),
        "MicroPython turns Ctrl-C back on at the start of every script (boot.py, main.py), so "
        "a stream of Ctrl-C at reset can land before kbd_intr(-1) runs; on esp32 and rp2 a "
        "KeyboardInterrupt in boot.py even skips main.py. Only a firmware that detaches the "
        "REPL streams closes that window.",
        board_notes={
            "stm32": "MICROPY_BOARD_FROZEN_BOOT_FILE runs a frozen file before boot.py with "
            "Ctrl-C off (not used by this plan: USB is not up yet at that point).",
        },
        audit=(AP_CTRL_C,),
    ),
    Interface(
        "app-exit",
        "The REPL after main.py returns or raises",
        ALL,
        Tier.T0,
        "Whenever main.py returns or raises, MicroPython starts the REPL on every stream.",
        (RT_NO_RETURN, FW_COMPILER_OFF),
        "None once the guard never returns; a crash in the guard itself (a bug) ends in a "
        "reset, not the prompt.",
        audit=(AP_APP_EXIT,),
    ),
    Interface(
        "webrepl",
        "WebREPL (REPL and file transfer over the network)",
        ESP | RP | STM32,
        Tier.T1,
        "REPL and file get/put over Wi-Fi or Ethernet (TCP 8266, WebSocket without TLS): the "
        "password crosses the network in clear, is at most 9 characters, and is stored in "
        "clear in webrepl_cfg.py; there is no lockout after wrong guesses.",
        (RT_NO_WEBREPL, RT_WEBREPL_PASSWORD, FW_WEBREPL_OFF, FW_FROZEN_BOOT),
        "Keeping WebREPL keeps a password-only REPL on the network: anyone who can sniff or "
        "guess 9 characters owns the device. Only on an isolated service network.",
        kept_by=frozenset({"webrepl"}),
        board_notes={
            "rp2": "Only on boards with networking (Pico W).",
            "rp2350": "Only on boards with networking (Pico 2 W).",
            "stm32": "Only on boards with networking (e.g. PYBD).",
        },
        audit=(AP_WEBREPL, AP_WEBREPL_PASS),
    ),
    Interface(
        "usb-msc",
        "USB mass storage (the filesystem as a USB drive)",
        RP | STM,
        Tier.T0,
        "The internal filesystem (or the SD card) appears as a drive on a PC: copy every file "
        "off, drop a new main.py on it.",
        (RT_USB_BUILTIN_NONE, RT_STM32_USB, FW_USB_MSC_OFF),
        "While the drive is mounted on a PC, the PC sees every file; a PC and MicroPython "
        "writing at the same time corrupt the filesystem.",
        board_notes={
            "rp2": "Only boards built with MICROPY_HW_USB_MSC (e.g. ARDUINO_NANO_RP2040_CONNECT).",
            "rp2350": "As rp2.",
            "stm32": "On by default wherever USB is (MICROPY_HW_USB_MSC follows "
            "MICROPY_HW_ENABLE_USB).",
            "openmv": "OpenMV cams show their flash (or SD card) as a drive; the IDE saves "
            "main.py there.",
        },
        audit=(AP_USB_MODE,),
    ),
    Interface(
        "safe-boot",
        "Safe-boot / boot-mode switch (MICROPY_HW_HAS_SWITCH)",
        STM32,
        Tier.T0,
        "Holding USR at reset selects safe mode (boot.py and main.py skipped: straight to the "
        "REPL) or a filesystem reset (the flash is reformatted: the app is gone).",
        (FW_SWITCH_OFF, DS_NO_BUTTON),
        "None once the switch is compiled out.",
        unsure="OpenMV firmware: not checked whether it has a boot-mode switch.",
        audit=(AP_SWITCH,),
    ),
    Interface(
        "sd-boot",
        "SD card auto-mount and main.py on the SD card",
        STM,
        Tier.T0,
        "At boot an inserted SD card is mounted at /sd, becomes the current directory and "
        "comes first on sys.path: its boot.py and main.py run instead of the ones in flash "
        "(MICROPY_HW_SDCARD_MOUNT_AT_BOOT).",
        (FW_FROZEN_BOOT, FW_SD_MOUNT_OFF, FW_SDCARD_OFF, RT_SKIPSD, RT_SD_DATA, RT_SYS_PATH),
        "An SD card is removable: anything the app writes there is readable on a PC (T0). "
        "Keep only data there, and encrypt what matters.",
        board_notes={
            "openmv": "OpenMV firmware also runs main.py from an inserted SD card.",
        },
        unsure="OpenMV: which build option controls booting from the SD card was not checked.",
        audit=(AP_SD,),
    ),
    Interface(
        "sys-path",
        "'' first on sys.path (a file shadows frozen and /rom modules)",
        ALL,
        Tier.T0,
        "sys.path starts with '' (the current directory): a .py or .mpy file of the same name "
        "dropped onto the filesystem wins over the frozen module or the verified /rom one.",
        (RT_SYS_PATH, FW_FROZEN_BOOT, FW_COMPILER_OFF),
        "A writable folder left on sys.path (/lib) can still shadow later entries; the guard "
        "puts /rom first.",
        audit=(AP_SYS_PATH,),
    ),
    Interface(
        "writable-boot",
        "Writable boot.py / main.py (and the guard's own files)",
        HW,
        Tier.T0,
        "boot.py, main.py and an unfrozen guard are ordinary files: anyone who reaches the "
        "REPL, mpremote or the USB drive once replaces them, and the change survives resets.",
        (FW_FROZEN_BOOT, RT_GUARD_VERIFIES),
        "Without a custom firmware the guard is just a file; T3 (reflashing) replaces even a "
        "frozen guard unless secure boot is on.",
        audit=(AP_WRITABLE,),
    ),
    Interface(
        "memx",
        "machine.mem8/16/32 and uctypes (raw memory access)",
        HW,
        Tier.T0,
        "Read and write any address: RAM (keys in the heap), peripheral registers, "
        "memory-mapped flash (the ESP32 cache decrypts encrypted flash on the fly).",
        (FW_MEMX_OFF, *_CODE_EXEC_LEVERS),
        "Any code that runs reaches memory anyway (native/viper code in an .mpy); removing "
        "memX and uctypes removes the easiest way, not every way.",
        audit=(AP_MEM32, AP_UCTYPES),
    ),
    Interface(
        "compiler",
        "The compiler: exec, eval, compile and .py files",
        ALL,
        Tier.T0,
        "Any text becomes code: the REPL, exec()/eval() in the app, a .py file on the "
        "filesystem or the SD card.",
        (FW_COMPILER_OFF, RT_SYS_PATH, RT_GUARD_VERIFIES),
        ".mpy bytecode still loads without the compiler: keep sys.path free of writable "
        "folders (the guard verifies what it mounts at /rom).",
        audit=(AP_COMPILER,),
    ),
    Interface(
        "flash-api",
        "Flash read APIs (esp.flash_read, esp32.Partition, rp2.Flash, pyb.Flash)",
        HW,
        Tier.T0,
        "Whoever runs Python code reads the raw flash: every file, the guard's state and any "
        "key stored there (esp32.Partition decrypts partitions marked encrypted).",
        _CODE_EXEC_LEVERS,
        "Stock firmware cannot hide the flash from its own Python code: secrets on the device "
        "are only as safe as the closing of every way to run code.",
        audit=(AP_FLASH_API,),
    ),
    Interface(
        "rom-download",
        "ESP ROM serial download mode (esptool)",
        ESP,
        Tier.T3,
        "GPIO0 low at reset (or machine.bootloader() where the board supports it) starts the "
        "ROM bootloader: esptool read-flash copies the whole flash, write-flash replaces the "
        "firmware, the ROM loads code into RAM.",
        (HW_ESP_FE, HW_ESP_DL_OFF, HW_ESP_DL_SECURE, DS_NO_HEADER),
        "Without eFuses burned, anyone with the board reads and replaces everything.",
        kept_by=frozenset({"serial-flash"}),
        board_notes={
            "esp32": "Kept (serial-flash): release-mode flash encryption still bars the ROM "
            "from decrypting (DISABLE_DL_DECRYPT/ENCRYPT/CACHE): reads give ciphertext.",
            "esp32s3": "Kept (serial-flash): secure download mode allows writing signed, "
            "encrypted images but no reads.",
        },
    ),
    Interface(
        "jtag-swd",
        "JTAG / SWD debug port",
        HW,
        Tier.T3,
        "A debugger halts the CPU and reads or writes RAM, registers and flash (decrypted "
        "flash too, through the ESP32 cache).",
        (HW_ESP_JTAG_OFF, HW_STM32_RDP1, HW_STM32_RDP2, HW_RP2350_DEBUG_OFF, DS_NO_HEADER),
        "RP2040 cannot switch SWD off: anyone with the SWD pads reads and writes everything. "
        "At STM32 RDP 1 a debugger still reaches RAM (where keys live while in use).",
        kept_by=frozenset({"debug-port"}),
        partial=frozenset({"hw-stm32-rdp1"}),
        board_notes={
            "esp32s3": "Also reachable over USB (USB-JTAG) unless DIS_USB_JTAG is burned.",
            "stm32": "RDP 1 blocks flash access from the debugger; only RDP 2 turns debug off.",
        },
    ),
    Interface(
        "stm32-dfu",
        "STM32 system bootloader (USB DFU, USART) and OpenMV's bootloader",
        STM,
        Tier.T3,
        "BOOT0 high at reset (or machine.bootloader() from the REPL) starts the ROM "
        "bootloader: dfu-util -U reads the flash at RDP 0, -D writes any firmware.",
        (HW_STM32_RDP1, HW_STM32_RDP2, DS_NO_BUTTON),
        "At RDP 1 the ROM bootloader can still mass-erase the chip and load a new firmware "
        "(the secrets die with the erase). Only RDP 2 disables it.",
        kept_by=frozenset({"serial-flash"}),
        partial=frozenset({"hw-stm32-rdp1"}),
        board_notes={
            "openmv": "OpenMV cams also carry OpenMV's own bootloader in flash for IDE "
            "firmware updates; RDP does not restrict code running on the chip.",
        },
        unsure="OpenMV: what OpenMV's own bootloader allows besides writing a new firmware "
        "was not checked.",
    ),
    Interface(
        "rp2-bootsel",
        "RP2040/RP2350 USB boot ROM (BOOTSEL, picotool)",
        RP,
        Tier.T3,
        "BOOTSEL held (or QSPI_SS pulled low) at reset, or machine.bootloader(): a UF2 drive "
        "takes any firmware, `picotool save -a` copies the whole flash, `picotool load -x` "
        "runs anything.",
        (HW_RP2350_SB, HW_RP2350_BOOTSEL_OFF, DS_NO_BUTTON),
        "RP2040 cannot disable its boot ROM: anyone with the board copies the flash and runs "
        "their own firmware. On RP2350 with secure boot but BOOTSEL kept, the flash can still "
        "be read.",
        kept_by=frozenset({"serial-flash"}),
    ),
    Interface(
        "flash-readout",
        "Flash read directly (clip, programmer, or through the chip)",
        HW,
        Tier.T3,
        "ESP32 and RP2040/RP2350 keep firmware and filesystem in an external SPI flash chip "
        "that a clip reads in seconds; STM32 flash is internal and read through SWD or DFU.",
        (HW_ESP_FE, HW_STM32_RDP1, HW_STM32_RDP2),
        "RP2040 and RP2350 have no transparent flash encryption: the firmware, the filesystem "
        "and any key stored on it are readable by anyone who opens the case. On ESP32, "
        "partitions not marked 'encrypted' stay readable.",
        board_notes={
            "rp2350": "The RP2350's encrypted boot decrypts a signed image into SRAM; it is not "
            "a fit for MicroPython's firmware, which runs in place from flash.",
        },
        unsure="RP2350 encrypted boot for MicroPython: not evaluated by mpseal.",
    ),
    Interface(
        "unsigned-firmware",
        "A modified firmware flashed in place of yours",
        HW,
        Tier.T3,
        "A firmware that skips the guard, dumps the secrets or fakes the warranty state "
        "runs like yours.",
        (HW_ESP_SB, FW_ESP_SECURE, HW_RP2350_SB, HW_STM32_RDP1, HW_STM32_RDP2),
        "STM32 (F4/F7/H7) has no secure boot in this plan: RDP 1 makes a reflash erase "
        "everything first, it does not stop the new firmware from running; RDP 2 leaves only "
        "your own firmware's updater. RP2040 runs anything.",
        partial=frozenset({"hw-stm32-rdp1", "fw-esp-secure"}),
    ),
    Interface(
        "openmv-ide",
        "OpenMV IDE USB debug protocol",
        OPENMV,
        Tier.T0,
        "On the USB serial port OpenMV IDE's protocol stops the running script, uploads and "
        "runs any script, grabs camera frames and resets into the bootloader.",
        (FW_COMPILER_OFF, FW_USB_CDC_OFF),
        "Closing USB closes it; the compiler option stops script upload (the protocol "
        "compiles source on the camera) but not frame grabs.",
        unsure="A build option that removes OpenMV's debug protocol alone was not found.",
    ),
    Interface(
        "sim-host",
        "The virtual board's flash is a file on the host",
        UNIX,
        Tier.T0,
        "Whoever uses the host computer reads and changes the virtual flash image directly.",
        (),
        "The virtual board exercises the software locks (guard, profiles, signatures); it "
        "models no hardware protection at all.",
    ),
)

INTERFACES_BY_ID: Mapping[str, Interface] = MappingProxyType({i.id: i for i in INTERFACES})


def _all_levers() -> dict[str, Lever]:
    out: dict[str, Lever] = {}
    for itf in INTERFACES:
        for lv in itf.levers:
            out.setdefault(lv.id, lv)
    return out


LEVERS: Mapping[str, Lever] = MappingProxyType(_all_levers())


# --------------------------------------------------------------------------- queries


def check_board(board: str) -> str:
    if board not in BOARDS:
        raise ConfigError(f"unknown board {board!r}; choose one of: {', '.join(sorted(BOARDS))}")
    return board


def interfaces_for(board: str) -> tuple[Interface, ...]:
    check_board(board)
    return tuple(i for i in INTERFACES if board in i.boards)


def levers_for(board: str, *, kind: Kind | None = None) -> tuple[Lever, ...]:
    check_board(board)
    return tuple(
        lv for lv in LEVERS.values() if lv.applies_to(board) and (kind is None or lv.kind == kind)
    )


def open_on(board: str, keep: Iterable[str] = ()) -> tuple[Interface, ...]:
    """Interfaces no lever on this board closes against their own tier: say so plainly."""
    kept = tuple(keep)
    return tuple(i for i in interfaces_for(board) if not i.closable_on(board, kept))


def build_options(board: str, keep: Iterable[str] = ()) -> tuple[tuple[Lever, BuildOption], ...]:
    """Every firmware build line this board needs, for the uses kept."""
    kept = tuple(keep)
    out: list[tuple[Lever, BuildOption]] = []
    for lv in levers_for(board, kind=Kind.FIRMWARE):
        if not lv.wanted(kept):
            continue
        out.extend((lv, o) for o in lv.options if board in o.boards and o.wanted(kept))
    return tuple(out)


def firmware_levers(board: str, keep: Iterable[str] = ()) -> tuple[Lever, ...]:
    """Firmware levers a build for this board really applies: a wanted option that the board
    header can set (not one that needs a port patch), or the frozen boot files."""
    kept = tuple(keep)
    out = []
    for lv in levers_for(board, kind=Kind.FIRMWARE):
        if not lv.wanted(kept):
            continue
        opts = [o for o in lv.options if board in o.boards and o.wanted(kept)]
        if not lv.options or any(o.overridable for o in opts):
            out.append(lv)
    return tuple(out)


def runtime_settings(profile: str) -> tuple[Lever, ...]:
    """What a lockdown profile sets (the guard implements it)."""
    if profile not in PROFILES:
        raise ConfigError(f"unknown profile {profile!r}; choose one of: {', '.join(PROFILES)}")
    return tuple(lv for lv in LEVERS.values() if lv.kind == Kind.RUNTIME and profile in lv.profiles)


WEBREPL_PASSWORD_MAX = 9  # extmod/modwebrepl.c keeps 9 characters plus the NUL
_WEBREPL_ALPHABET = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789")


def webrepl_password_problems(password: str) -> list[str]:
    """What is wrong with a WebREPL password (empty list: as good as WebREPL allows)."""
    problems = []
    if len(password) > WEBREPL_PASSWORD_MAX:
        problems.append(f"longer than {WEBREPL_PASSWORD_MAX} characters: WebREPL refuses it")
        return problems
    if len(password) < WEBREPL_PASSWORD_MAX:
        problems.append(f"{len(password)} characters; use all {WEBREPL_PASSWORD_MAX}")
    if not set(password) <= _WEBREPL_ALPHABET:
        problems.append("use only A-Z a-z 0-9 (typed reliably on any keyboard)")
    if len(set(password)) < max(1, len(password) * 2 // 3):
        problems.append("too many repeated characters: draw it at random")
    lowered = password.lower()
    if any(w in lowered for w in ("pass", "admin", "micropy", "1234", "qwerty", "webrepl")):
        problems.append("contains a common word or sequence")
    return problems
