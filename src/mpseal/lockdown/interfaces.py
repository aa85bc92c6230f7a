"""Every interface of a MicroPython product that can have a hole, per board, and how to close it.

One data model, read by three consumers: ``mpseal lockdown plan`` (which levers a
product applies), the generated per-port pages in ``docs/lockdown/`` and the
live-device audit (which runs each lever's :class:`Probe`). Nothing here talks to
a device or prints; it is data plus small queries.

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

from mpseal.errors import ConfigError
from mpseal.formats.boards import BOARDS


class Tier(StrEnum):
    T0 = "T0"
    T1 = "T1"
    T2 = "T2"
    T3 = "T3"
    T4 = "T4"


TIER_ATTACKER: Mapping[Tier, str] = MappingProxyType({
    Tier.T0: "curious owner: USB drive, REPL, SD card in a PC",
    Tier.T1: "the network: MITM, malicious mirror, replayed updates",
    Tier.T2: "a stolen online server key",
    Tier.T3: "physical access with tools (esptool read-flash, SWD, DFU, BOOTSEL)",
    Tier.T4: "a lab (glitching, decapping): out of scope",
})


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


@dataclass(frozen=True)
class BuildOption:
    """One line of a firmware build: a C macro in mpconfigboard.h or an ESP-IDF sdkconfig line."""

    name: str
    value: str
    boards: frozenset[str]
    file: str = "mpconfigboard.h"  # or "sdkconfig"
    overridable: bool = True  # False: the port sets it unconditionally; needs a port patch
    note: str = ""
    only_with: str | None = None  # only when this use is kept
    dropped_by: frozenset[str] = frozenset()  # left out when one of these uses is kept

    def wanted(self, keep: Iterable[str]) -> bool:
        kept = set(keep)
        if self.only_with is not None and self.only_with not in kept:
            return False
        return not (self.dropped_by & kept)


@dataclass(frozen=True)
class Lever:
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

    def wanted(self, keep: Iterable[str]) -> bool:
        kept = set(keep)
        if self.only_with is not None and self.only_with not in kept:
            return False
        return not (self.dropped_by & kept)


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


# --------------------------------------------------------------------------- boards

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


def _dev(code: str, closed: str) -> Probe:
    return Probe(ProbeKind.DEVICE, code, closed)


def _host(code: str, closed: str) -> Probe:
    return Probe(ProbeKind.HOST, code, closed)


# --------------------------------------------------------------------------- audit probes
# What `mpseal audit` runs on a live device. SERIAL probes are its first contact with the
# line (device/console.py: Enter, Ctrl-C, Ctrl-B, Ctrl-A, each with a deadline); DEVICE
# probes run in the raw REPL, one small exec each (a micro:bit has about 8 KB of heap);
# `helper` probes call a function of runtime/mpseal_audit.py, sent to the device first.

_SERIAL = ProbeKind.SERIAL
AP_PROMPT = Probe(
    _SERIAL, "listen; send b'\\r', then b'\\x03\\x03' (Ctrl-C), then b'\\x02' (Ctrl-B); "
    "wait for b'>>> '",
    "no b'>>> ' within a few seconds: expected after lockdown (field/sealed profile)",
    open_if=("prompt", "interrupted", "raw"), closed_if=("none",))
AP_RAW_REPL = Probe(
    _SERIAL, "at the prompt send b'\\x01' (Ctrl-A)",
    "no b'raw REPL; CTRL-B to exit' (or no prompt to send it at)",
    open_if=("banner",), closed_if=("no banner", "none"))
AP_CTRL_C = Probe(
    _SERIAL, "while a program runs (no prompt on Enter) send b'\\x03\\x03'",
    "no b'>>> ' after Ctrl-C (unknown when nothing was running to interrupt)",
    open_if=("interrupted",), closed_if=("none",))
AP_APP_EXIT = Probe(
    _SERIAL, "listen; send b'\\r' (and Ctrl-C, Ctrl-B)",
    "no b'>>> ': the line never ends up at the REPL",
    open_if=("prompt", "interrupted", "raw"), closed_if=("none",))
AP_SYS_PATH = Probe(
    ProbeKind.DEVICE, "'' in __import__('sys').path",
    "False (a firmware without sys.path, like the micro:bit's 1.9, imports from its "
    "filesystem: open)",
    open_if=("True", "raises AttributeError"), closed_if=("False",))
AP_MEM32 = Probe(
    ProbeKind.DEVICE, "hasattr(__import__('machine'), 'mem32')", "False",
    open_if=("True",), closed_if=("False", "raises ImportError"))
AP_UCTYPES = Probe(
    ProbeKind.DEVICE, "hasattr(__import__('uctypes'), 'bytearray_at')",
    "False or raises ImportError", open_if=("True",), closed_if=("False", "raises ImportError"))
AP_COMPILER = Probe(
    ProbeKind.DEVICE, "eval('6 * 7')",
    "raises NameError (built without the compiler: then the raw REPL does not answer either)",
    open_if=("42",), closed_if=("raises NameError",))
AP_WRITABLE = Probe(
    ProbeKind.DEVICE, "mpa_writable()",
    "'read-only': no file can be created in the folder of boot.py/main.py (the probe writes "
    "and removes mpseal-audit.tmp there; it never opens boot.py or main.py)",
    open_if=("'writable'",), closed_if=("'read-only'",), helper="mpa_writable")
AP_WEBREPL = Probe(
    ProbeKind.DEVICE, "hasattr(__import__('webrepl_cfg'), 'PASS')",
    "raises ImportError (no webrepl_cfg.py: WebREPL not configured)",
    open_if=("True",), closed_if=("False", "raises ImportError"))
AP_WEBREPL_PASS = Probe(
    ProbeKind.DEVICE, "__import__('webrepl_cfg').PASS", "passes webrepl_password_problems()",
    secret=True)
AP_USB_MODE = Probe(
    ProbeKind.DEVICE, "__import__('pyb').usb_mode()", "None or 'VCP'",
    open_if=("'VCP+MSC'", "'MSC'", "'VCP+MSC+HID'", "'MSC+HID'"),
    closed_if=("None", "'VCP'", "'VCP+HID'"))
AP_SWITCH = Probe(
    ProbeKind.DEVICE, "hasattr(__import__('pyb'), 'Switch')", "False",
    open_if=("True",), closed_if=("False",))
AP_SD = Probe(
    ProbeKind.DEVICE, "mpa_sd()",
    "'data' (mounted, not on sys.path, not the current folder); 'none' (no card now) says "
    "nothing",
    open_if=("'on-path'",), closed_if=("'data'",), helper="mpa_sd")
AP_FLASH_API = Probe(
    ProbeKind.DEVICE, "mpa_flash_api()", "[] (no flash read API in this firmware)",
    closed_if=("[]",), otherwise=Seen.OPEN, helper="mpa_flash_api")

# --------------------------------------------------------------------------- runtime levers

RT_NO_RETURN = Lever(
    "rt-no-return", Kind.RUNTIME,
    "The guard runs the app and never returns: an exit or a crash is logged and the board "
    "resets (machine.reset()), so the REPL prompt that follows main.py never appears.",
    ALL, Tier.T0, Reversible.YES,
    Check("Make the app raise: the board must reset instead of printing '>>>'.",
          Probe(ProbeKind.SERIAL, "wait for the app to end; send b'\\r'", "no b'>>> ' within 5 s")),
    profiles=LOCKED,
)
RT_KBD_INTR = Lever(
    "rt-kbd-intr", Kind.RUNTIME,
    "micropython.kbd_intr(-1) as the first statement of main.py: Ctrl-C becomes an ordinary "
    "byte and no longer raises KeyboardInterrupt in the app.",
    ALL, Tier.T0, Reversible.YES,
    Check("Send Ctrl-C (0x03) while the app runs: no 'KeyboardInterrupt' traceback.",
          Probe(ProbeKind.SERIAL, "send b'\\x03' twice", "no b'KeyboardInterrupt' within 2 s")),
    profiles=LOCKED,
    caveat="MicroPython re-enables Ctrl-C at the start of every script it runs (boot.py, "
           "main.py), so a Ctrl-C that lands before this line still interrupts.",
)
RT_SYS_PATH = Lever(
    "rt-sys-path", Kind.RUNTIME,
    "Remove '' and '.' from sys.path and put the verified /rom before any writable folder.",
    ALL, Tier.T0, Reversible.YES,
    Check("'' is not in sys.path.", AP_SYS_PATH),
    profiles=LOCKED,
)
RT_DUPTERM = Lever(
    "rt-dupterm", Kind.RUNTIME,
    "Detach every dupterm stream from the REPL: os.dupterm(None, i) for each slot "
    "(stm32: slot 1 is USB_VCP(0); WebREPL and UARTs attached by boot code live there too).",
    HW, Tier.T0, Reversible.YES,
    Check("os.dupterm(None, i) returned None for every slot (nothing was attached).",
          # Detaching is the only way to look; the probe puts back what it found.
          _dev("(lambda o: (lambda prev: ([o.dupterm(p, i) for i, p in enumerate(prev)], "
               "prev)[1])([o.dupterm(None, i) for i in range(2)]))(__import__('os'))",
               "[None, None]")),
    profiles=SEALED,
    caveat="Streams built into the port's C code (the esp32 UART0 REPL, TinyUSB CDC on rp2 "
           "and esp32s3) are not dupterm slots and stay attached.",
)
RT_USB_BUILTIN_NONE = Lever(
    "rt-usb-builtin-none", Kind.RUNTIME,
    "machine.USBDevice(): active(False); builtin_driver = BUILTIN_NONE; active(True): the "
    "built-in USB CDC (and MSC where compiled in) disappears from the bus.",
    ESP32S3 | RP, Tier.T0, Reversible.YES,
    Check("The host no longer sees a CDC-ACM interface from the board.",
          _host("lsusb -v -d {vid}:{pid}", "no 'CDC ACM' / 'Mass Storage' interface")),
    profiles=SEALED, dropped_by=frozenset({"usb-serial"}),
    caveat="esp32s3 only when the firmware uses TinyUSB (MICROPY_HW_USB_CDC); a build on the "
           "USB Serial/JTAG peripheral has no runtime switch.",
)
RT_STM32_USB = Lever(
    "rt-stm32-usb", Kind.RUNTIME,
    "stm32: pyb.usb_mode(None) from boot.py switches USB off; pyb.usb_mode('VCP') keeps the "
    "serial port but drops the USB drive; os.dupterm(None, 1) detaches USB_VCP(0) from the "
    "REPL so the app can use pyb.USB_VCP() as a plain data port.",
    STM, Tier.T0, Reversible.YES,
    Check("pyb.usb_mode() returns None (or 'VCP' when usb-serial is kept).",
          AP_USB_MODE),
    profiles=SEALED,
    caveat="pyb.usb_mode() only takes effect from boot.py, before USB starts.",
)
RT_STM32_REPL_UART = Lever(
    "rt-stm32-repl-uart", Kind.RUNTIME,
    "stm32: pyb.repl_uart(None) detaches the board's UART REPL (MICROPY_HW_UART_REPL); "
    "a soft reset attaches it again, so the guard does this at every boot.",
    STM, Tier.T0, Reversible.YES,
    Check("pyb.repl_uart() returns None.", _dev("__import__('pyb').repl_uart()", "None")),
    profiles=LOCKED,
)
RT_UART_LOGS = Lever(
    "rt-uart-logs", Kind.RUNTIME,
    "Logs go out on a UART that the REPL never reads: the app writes through machine.UART "
    "(TX only), or print() goes to a write-only stream on os.dupterm whose read returns "
    "nothing. UART output stays on; UART input reaches no prompt.",
    HW, Tier.T0, Reversible.YES,
    Check("Log lines appear on the UART; typing on it produces no '>>>' and no echo.",
          Probe(ProbeKind.SERIAL, "send b'\\r\\x03\\x01' on the log UART",
                "no b'>>>' and no b'raw REPL'")),
    only_with="uart-logs",
)
RT_SD_DATA = Lever(
    "rt-sd-data", Kind.RUNTIME,
    "The guard mounts the SD card at /sd after the app is verified, as data only: /sd is "
    "never on sys.path and nothing on it is executed.",
    HW, Tier.T0, Reversible.YES,
    Check("'/sd' and '/sd/lib' are not in sys.path.",
          _dev("[p for p in __import__('sys').path if p.startswith('/sd')]", "[]")),
    only_with="sd-data",
)
RT_SKIPSD = Lever(
    "rt-skipsd", Kind.RUNTIME,
    "stm32: a file named SKIPSD in /flash stops the firmware from mounting the SD card at "
    "boot (checked in ports/stm32/main.c before the SD card is mounted).",
    STM32, Tier.T0, Reversible.YES,
    Check("/flash/SKIPSD exists.", _dev("'SKIPSD' in __import__('os').listdir('/flash')", "True")),
    profiles=LOCKED,
    caveat="A file on a writable filesystem: anyone who reaches the REPL once can delete it; "
           "the firmware option below is the real fix.",
)
RT_NO_WEBREPL = Lever(
    "rt-no-webrepl", Kind.RUNTIME,
    "Nothing starts WebREPL: the guard never calls webrepl.start(), and a frozen boot.py "
    "shadows a /boot.py that webrepl_setup would have written.",
    ESP | RP | STM32, Tier.T1, Reversible.YES,
    Check("Nothing listens on TCP port 8266.", _host("nc -z -w 2 {host} 8266", "exit status != 0")),
    profiles=LOCKED, dropped_by=frozenset({"webrepl"}),
)
RT_WEBREPL_PASSWORD = Lever(
    "rt-webrepl-password", Kind.RUNTIME,
    "If WebREPL must stay: a password of the full 9 characters drawn at random from "
    "A-Z a-z 0-9 (about 53 bits), different on every device, on a network only service "
    "staff can join. mpseal checks it with webrepl_password_problems().",
    ESP | RP | STM32, Tier.T0, Reversible.YES,
    Check("webrepl_password_problems(<password>) is empty.",
          AP_WEBREPL_PASS),
    only_with="webrepl",
    caveat="The password still crosses the network in clear text (ws://, no TLS).",
)
RT_GUARD_VERIFIES = Lever(
    "rt-guard-verifies", Kind.RUNTIME,
    "The guard runs only an app whose signature and image hash it has verified (ROMFS "
    "artifact from `mpseal build`); a copied-in main.py or module is never imported.",
    ALL, Tier.T1, Reversible.YES,
    Check("A tampered artifact in the slot is refused and logged ('image hash does not match').",
          _dev("open('/mpseal/log.txt').read()[-200:]", "contains 'refused' after tampering")),
    profiles=frozenset(PROFILES),
)

# --------------------------------------------------------------------------- firmware levers

FW_FROZEN_BOOT = Lever(
    "fw-frozen-boot", Kind.FIRMWARE,
    "Freeze boot.py, main.py and the guard into the firmware (manifest.py). Since MicroPython "
    "1.18 a frozen boot.py/main.py runs instead of the file of that name on the filesystem, "
    "even when the current directory is /sd.",
    HW, Tier.T0, Reversible.REFLASH,
    Check("Writing a /main.py that prints a marker changes nothing at the next boot.",
          _dev("'mpseal_guard' in __import__('sys').modules",
               "True (and __file__ starts with '.frozen')")),
)
FW_COMPILER_OFF = Lever(
    "fw-compiler-off", Kind.FIRMWARE,
    "Build without the compiler (MICROPY_ENABLE_COMPILER 0): no exec/eval/compile, no .py "
    "file runs, the REPL cannot compile anything; frozen code and .mpy files still run.",
    HW, Tier.T0, Reversible.REFLASH,
    Check("The raw REPL no longer answers (there is nothing to compile with).",
          Probe(ProbeKind.SERIAL, "send b'\\r\\x01'", "no b'raw REPL; CTRL-B to exit'")),
    options=(
        BuildOption("MICROPY_ENABLE_COMPILER", "(0)", STM),
        BuildOption("MICROPY_ENABLE_COMPILER", "(0)", ESP | RP, overridable=False,
             note="ports/esp32 and ports/rp2 main.c call pyexec_raw_repl() and "
                  "pyexec_friendly_repl() unconditionally, and those are only built with the "
                  "compiler: the build needs a small main.c patch (not verified by mpseal)"),
    ),
    dropped_by=frozenset({"repl-service"}),
    caveat="Not tested by mpseal on real boards; build and test on a unit first.",
)
FW_MEMX_OFF = Lever(
    "fw-memx-off", Kind.FIRMWARE,
    "Build without machine.mem8/16/32 (MICROPY_PY_MACHINE_MEMX 0) and without uctypes "
    "(MICROPY_PY_UCTYPES 0: uctypes.bytearray_at reads any address too).",
    HW, Tier.T0, Reversible.REFLASH,
    Check("machine has no mem32.", AP_MEM32),
    options=(
        BuildOption("MICROPY_PY_MACHINE_MEMX", "(0)", HW),
        BuildOption("MICROPY_PY_UCTYPES", "(0)", HW,
                    note="remove this line if the app needs uctypes"),
    ),
)
FW_UART_REPL_OFF = Lever(
    "fw-uart-repl-off", Kind.FIRMWARE,
    "Build without a UART REPL.",
    HW, Tier.T0, Reversible.REFLASH,
    Check("Typing on the UART at reset and after the app started gives no prompt.",
          Probe(ProbeKind.SERIAL, "send b'\\r\\x03\\x03' on the UART", "no b'>>>'")),
    options=(
        BuildOption("MICROPY_HW_ENABLE_UART_REPL", "(0)", ESP | RP,
             note="esp32 without native USB then has no REPL stream at all; "
                  "print() output goes nowhere unless the app routes it"),
        BuildOption("MICROPY_HW_UART_REPL", "", STM,
                    note="#undef only: the board header defines it"),
    ),
    dropped_by=frozenset({"repl-service"}),
)
FW_USB_CDC_OFF = Lever(
    "fw-usb-cdc-off", Kind.FIRMWARE,
    "Build without the USB serial REPL.",
    ESP32S3 | RP | STM, Tier.T0, Reversible.REFLASH,
    Check("No CDC-ACM interface on the host.",
          _host("lsusb -v -d {vid}:{pid}", "no 'CDC ACM' interface")),
    options=(
        BuildOption("MICROPY_HW_USB_CDC", "(0)", ESP32S3 | RP),
        BuildOption("MICROPY_HW_ESP_USB_SERIAL_JTAG", "(0)", ESP32S3,
             note="otherwise the esp32s3 build falls back to the USB Serial/JTAG REPL"),
        BuildOption("MICROPY_HW_ENABLE_USB", "(0)", STM,
                    note="removes USB entirely (pyb.usb_mode too)"),
    ),
    dropped_by=frozenset({"usb-serial", "repl-service"}),
)
FW_USB_MSC_OFF = Lever(
    "fw-usb-msc-off", Kind.FIRMWARE,
    "Build without the USB drive (MICROPY_HW_USB_MSC 0).",
    RP | STM, Tier.T0, Reversible.REFLASH,
    Check("No Mass Storage interface on the host.",
          _host("lsusb -v -d {vid}:{pid}", "no 'Mass Storage' interface")),
    options=(BuildOption("MICROPY_HW_USB_MSC", "(0)", RP | STM),),
)
FW_SWITCH_OFF = Lever(
    "fw-switch-off", Kind.FIRMWARE,
    "Build without the boot-mode switch (MICROPY_HW_HAS_SWITCH 0): holding USR at reset no "
    "longer selects safe mode or a filesystem reset (pyb.Switch disappears too).",
    STM32, Tier.T0, Reversible.REFLASH,
    Check("pyb has no Switch.", AP_SWITCH),
    options=(BuildOption("MICROPY_HW_HAS_SWITCH", "(0)", STM32),),
)
FW_SD_MOUNT_OFF = Lever(
    "fw-sd-mount-off", Kind.FIRMWARE,
    "Build without mounting the SD card at boot (MICROPY_HW_SDCARD_MOUNT_AT_BOOT 0): the SD "
    "card never becomes the current directory and its boot.py/main.py never run.",
    STM32, Tier.T0, Reversible.REFLASH,
    Check("With an SD card holding a main.py that prints a marker, the marker never appears.",
          Probe(ProbeKind.MANUAL, "insert an SD card with a marker main.py and reset",
                "no marker on the console")),
    options=(BuildOption("MICROPY_HW_SDCARD_MOUNT_AT_BOOT", "(0)", STM32),),
)
FW_SDCARD_OFF = Lever(
    "fw-sdcard-off", Kind.FIRMWARE,
    "Build without the SD card driver (MICROPY_HW_ENABLE_SDCARD 0).",
    ESP | STM32, Tier.T0, Reversible.REFLASH,
    Check("machine has no SDCard.", _dev("hasattr(__import__('machine'), 'SDCard')", "False")),
    options=(BuildOption("MICROPY_HW_ENABLE_SDCARD", "(0)", ESP | STM32),),
    dropped_by=frozenset({"sd-data"}),
)
FW_WEBREPL_OFF = Lever(
    "fw-webrepl-off", Kind.FIRMWARE,
    "Build without WebREPL (MICROPY_PY_WEBREPL 0).",
    ESP | RP | STM32, Tier.T1, Reversible.REFLASH,
    Check("import _webrepl fails.", _dev("__import__('_webrepl')", "raises ImportError")),
    options=(
        BuildOption("MICROPY_PY_WEBREPL", "(0)", RP),
        BuildOption("MICROPY_PY_WEBREPL", "(0)", ESP | STM32, overridable=False,
             note="mpconfigport.h sets it unconditionally on esp32 and stm32: needs a port "
                  "patch; without it WebREPL stays inert unless code calls webrepl.start()"),
    ),
    dropped_by=frozenset({"webrepl"}),
)
FW_ESP_SECURE = Lever(
    "fw-esp-secure", Kind.FIRMWARE,
    "Build the ESP-IDF bootloader and app for Secure Boot v2 and flash encryption in release "
    "mode (sdkconfig.mpseal): without it the second-stage bootloader does not verify the app.",
    ESP, Tier.T3, Reversible.REFLASH,
    Check("The bootloader log shows secure boot and flash encryption checks at boot.",
          Probe(ProbeKind.MANUAL, "read the boot log on UART0",
                "'secure boot' verification lines")),
    options=(
        BuildOption("CONFIG_SECURE_BOOT", "y", ESP, file="sdkconfig"),
        BuildOption("CONFIG_SECURE_BOOT_V2_ENABLED", "y", ESP, file="sdkconfig"),
        BuildOption("CONFIG_SECURE_BOOT_BUILD_SIGNED_BINARIES", "n", ESP, file="sdkconfig",
             note="images are signed afterwards with `mpseal lockdown esp32-sign`"),
        BuildOption("CONFIG_SECURE_FLASH_ENC_ENABLED", "y", ESP, file="sdkconfig"),
        BuildOption("CONFIG_SECURE_FLASH_ENCRYPTION_MODE_RELEASE", "y", ESP, file="sdkconfig"),
        BuildOption("CONFIG_ESP32_REV_MIN_3", "y", ESP32, file="sdkconfig",
             note="Secure Boot v2 on the ESP32 needs chip revision v3.0 or later"),
        BuildOption("CONFIG_SECURE_DISABLE_ROM_DL_MODE", "y", ESP32, file="sdkconfig",
                    dropped_by=frozenset({"serial-flash"})),
        BuildOption("CONFIG_SECURE_INSECURE_ALLOW_DL_MODE", "y", ESP32, file="sdkconfig",
                    only_with="serial-flash"),
        BuildOption("CONFIG_SECURE_ENABLE_SECURE_ROM_DL_MODE", "y", ESP32S3, file="sdkconfig"),
        BuildOption("CONFIG_SECURE_BOOT_INSECURE", "y", ESP, file="sdkconfig",
                    only_with="debug-port", note="needed for the next line"),
        BuildOption("CONFIG_SECURE_BOOT_ALLOW_JTAG", "y", ESP, file="sdkconfig",
                    only_with="debug-port",
                    note="otherwise the secure bootloader may burn the JTAG-disable eFuse "
                         "itself on first boot (not verified on a unit)"),
    ),
    caveat="The bigger secure bootloader may no longer fit below the partition table at "
           "0x8000: then move CONFIG_PARTITION_TABLE_OFFSET and adapt the board's partitions "
           "CSV (ESP-IDF: 'Secure Boot bootloader size'). Mark the vfs and romfs partitions "
           "'encrypted' in that CSV, or flash encryption leaves them in clear text.",
)

# --------------------------------------------------------------------------- hardware levers

HW_ESP_FE = Lever(
    "hw-esp-fe", Kind.HARDWARE,
    "ESP flash encryption in release mode: key burned into a read-protected eFuse block, "
    "encryption counter burned to its last value, ROM download mode barred from the "
    "encryption hardware. The bootloader, partition table, app partitions and every "
    "partition marked 'encrypted' read back as ciphertext.",
    ESP, Tier.T3, Reversible.NO,
    Check("espefuse summary: FLASH_CRYPT_CNT = 127 (esp32) or SPI_BOOT_CRYPT_CNT = 7 "
          "(esp32s3); a raw read of the app partition is not the plain image.",
          _host("espefuse --port {port} summary",
                "FLASH_CRYPT_CNT = 127 | SPI_BOOT_CRYPT_CNT = 7")),
    caveat="Partitions not marked 'encrypted' (MicroPython's vfs filesystem, nvs with Wi-Fi "
           "credentials, romfs) stay readable unless the partition table says otherwise.",
)
HW_ESP_SB = Lever(
    "hw-esp-sb", Kind.HARDWARE,
    "ESP Secure Boot v2: the SHA-256 digest of the signing public key is burned into eFuse; "
    "the ROM checks the bootloader and the bootloader checks the app against it on every "
    "boot. A firmware not signed with your key does not run.",
    ESP, Tier.T3, Reversible.NO,
    Check("espefuse summary: ABS_DONE_1 = True (esp32) or SECURE_BOOT_EN = True (esp32s3); "
          "an unsigned app on a test unit does not boot.",
          _host("espefuse --port {port} summary", "ABS_DONE_1 = True | SECURE_BOOT_EN = True")),
    caveat="ESP32 (v3.0+) holds one key and cannot revoke it; the ESP32-S3 holds up to three "
           "and can revoke each. Losing the key ends firmware updates; leaking it ends "
           "secure boot.",
)
HW_ESP_JTAG_OFF = Lever(
    "hw-esp-jtag-off", Kind.HARDWARE,
    "Burn the JTAG-disable eFuses: JTAG_DISABLE (esp32); DIS_PAD_JTAG and DIS_USB_JTAG "
    "(esp32s3).",
    ESP, Tier.T3, Reversible.NO,
    Check("espefuse summary shows them set; a JTAG adapter finds no TAP.",
          _host("espefuse --port {port} summary", "JTAG_DISABLE = True | DIS_PAD_JTAG = True")),
    dropped_by=frozenset({"debug-port"}),
)
HW_ESP_DL_OFF = Lever(
    "hw-esp-dl-off", Kind.HARDWARE,
    "Close the ROM download mode: UART_DOWNLOAD_DIS (esp32, v3.0+) or DIS_DOWNLOAD_MODE "
    "(esp32s3). After this espefuse and esptool can no longer talk to the chip.",
    ESP, Tier.T3, Reversible.NO,
    Check("esptool chip-id no longer connects.",
          _host("esptool --port {port} chip-id", "fails to connect")),
    dropped_by=frozenset({"serial-flash"}),
)
HW_ESP_DL_SECURE = Lever(
    "hw-esp-dl-secure", Kind.HARDWARE,
    "esp32s3: ENABLE_SECURITY_DOWNLOAD (secure download mode): esptool can still write the "
    "flash (signed, encrypted images), but not read it or run code in RAM.",
    ESP32S3, Tier.T3, Reversible.NO,
    Check("esptool read-flash is refused ('Secure Download Mode').",
          _host("esptool --port {port} --no-stub read-flash 0 4096 /dev/null", "refused")),
    only_with="serial-flash",
)
HW_STM32_RDP1 = Lever(
    "hw-stm32-rdp1", Kind.HARDWARE,
    "STM32 read-out protection level 1 (option byte RDP = 0xBB): a debugger, the ROM "
    "bootloader (DFU/USART) and boot from RAM can no longer read or write the flash. Going "
    "back to level 0 mass-erases the flash (firmware, filesystem and secrets).",
    STM, Tier.T3, Reversible.ERASE,
    Check("STM32_Programmer_CLI -ob displ shows RDP = 0xBB; dfu-util -U fails.",
          _host("STM32_Programmer_CLI -c port=SWD -ob displ", "RDP : 0xBB")),
    caveat="Level 1 has published bypasses on some STM32 families (e.g. F0/F1); a debugger "
           "may still reach RAM and peripherals.",
)
HW_STM32_RDP2 = Lever(
    "hw-stm32-rdp2", Kind.HARDWARE,
    "STM32 read-out protection level 2 (option byte RDP = 0xCC): debug (SWD/JTAG) is off "
    "for good, the system bootloader and boot from RAM are disabled, option bytes can no "
    "longer change. Only your own firmware can update itself afterwards.",
    STM, Tier.T3, Reversible.NO,
    Check("A debugger can no longer connect at all.",
          _host("STM32_Programmer_CLI -c port=SWD", "connection fails")),
    dropped_by=frozenset({"debug-port", "serial-flash"}),
)
HW_RP2350_SB = Lever(
    "hw-rp2350-sb", Kind.HARDWARE,
    "RP2350 secure boot: the SHA-256 of your secp256k1 boot key in OTP (BOOTKEY0, "
    "BOOT_FLAGS1.KEY_VALID) and CRIT1.SECURE_BOOT_ENABLE: the boot ROM runs only images "
    "sealed with `picotool seal --sign`. Unused key slots are marked invalid.",
    RP2350, Tier.T3, Reversible.NO,
    Check("picotool otp get OTP_DATA_CRIT1 shows SECURE_BOOT_ENABLE = 1; an unsigned UF2 "
          "does not boot.",
          _host("picotool otp get OTP_DATA_CRIT1", "SECURE_BOOT_ENABLE = 1")),
    caveat="Secure boot checks what runs; it does not encrypt the flash.",
)
HW_RP2350_DEBUG_OFF = Lever(
    "hw-rp2350-debug-off", Kind.HARDWARE,
    "RP2350: OTP CRIT1.DEBUG_DISABLE: the SWD debug port is off for good.",
    RP2350, Tier.T3, Reversible.NO,
    Check("picotool otp get OTP_DATA_CRIT1 shows DEBUG_DISABLE = 1; SWD finds no target.",
          _host("picotool otp get OTP_DATA_CRIT1", "DEBUG_DISABLE = 1")),
    dropped_by=frozenset({"debug-port"}),
)
HW_RP2350_BOOTSEL_OFF = Lever(
    "hw-rp2350-bootsel-off", Kind.HARDWARE,
    "RP2350: OTP BOOT_FLAGS0 DISABLE_BOOTSEL_USB_PICOBOOT_IFC, DISABLE_BOOTSEL_USB_MSD_IFC "
    "and DISABLE_BOOTSEL_UART_BOOT: the USB boot ROM (UF2 drive, picotool) is gone.",
    RP2350, Tier.T3, Reversible.NO,
    Check("Holding BOOTSEL at reset shows no RP2350 drive and picotool finds no device.",
          _host("picotool info", "no accessible RP-series devices")),
    dropped_by=frozenset({"serial-flash"}),
)

# --------------------------------------------------------------------------- design levers

DS_NO_HEADER = Lever(
    "ds-no-header", Kind.DESIGN,
    "No UART/SWD/JTAG header or labelled pads on production boards; test points only under "
    "the enclosure; boot-mode pins (GPIO0, BOOT0, BOOTSEL/QSPI_SS) not reachable from outside.",
    HW, Tier.T0, Reversible.YES,
    Check("Inspect a production unit: no connector reaches these signals.",
          Probe(ProbeKind.MANUAL, "inspect the enclosure and the board", "no reachable pads")),
    caveat="Raises the effort for a curious owner; someone with a soldering iron (T3) gets in.",
)
DS_NO_BUTTON = Lever(
    "ds-no-button", Kind.DESIGN,
    "No user-reachable boot or USR button on production units.",
    HW, Tier.T0, Reversible.YES,
    Check("Inspect a production unit.", Probe(ProbeKind.MANUAL, "inspect", "no boot button")),
)

# --------------------------------------------------------------------------- interfaces

_CODE_EXEC_LEVERS = (RT_NO_RETURN, RT_KBD_INTR, FW_FROZEN_BOOT, FW_COMPILER_OFF)

INTERFACES: tuple[Interface, ...] = (
    Interface(
        "repl-usb", "REPL over USB serial (CDC)",
        ESP32S3 | RP | STM, Tier.T0,
        "A Python prompt on the USB port: read, change or delete every file, call any "
        "function (flash reads included), stop the app.",
        (RT_NO_RETURN, RT_KBD_INTR, RT_USB_BUILTIN_NONE, RT_STM32_USB, RT_DUPTERM,
         FW_USB_CDC_OFF, FW_COMPILER_OFF),
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
        "repl-uart", "REPL over UART",
        ALL, Tier.T0,
        "A Python prompt on a UART header (or the USB-UART bridge of a dev board): the same "
        "full control as the USB REPL.",
        (RT_NO_RETURN, RT_KBD_INTR, RT_STM32_REPL_UART, RT_DUPTERM, RT_UART_LOGS,
         FW_UART_REPL_OFF, FW_COMPILER_OFF, DS_NO_HEADER),
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
        "raw-repl", "Raw REPL and raw-paste mode (what mpremote, Thonny and rshell use)",
        ALL, Tier.T0,
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
        "ctrl-c", "Ctrl-C (KeyboardInterrupt) on a REPL stream",
        ALL, Tier.T0,
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
        "app-exit", "The REPL after main.py returns or raises",
        ALL, Tier.T0,
        "Whenever main.py returns or raises, MicroPython starts the REPL on every stream.",
        (RT_NO_RETURN, FW_COMPILER_OFF),
        "None once the guard never returns; a crash in the guard itself (a bug) ends in a "
        "reset, not the prompt.",
        audit=(AP_APP_EXIT,),
    ),
    Interface(
        "webrepl", "WebREPL (REPL and file transfer over the network)",
        ESP | RP | STM32, Tier.T1,
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
        "usb-msc", "USB mass storage (the filesystem as a USB drive)",
        RP | STM, Tier.T0,
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
        "safe-boot", "Safe-boot / boot-mode switch (MICROPY_HW_HAS_SWITCH)",
        STM32, Tier.T0,
        "Holding USR at reset selects safe mode (boot.py and main.py skipped: straight to the "
        "REPL) or a filesystem reset (the flash is reformatted: the app is gone).",
        (FW_SWITCH_OFF, DS_NO_BUTTON),
        "None once the switch is compiled out.",
        unsure="OpenMV firmware: not checked whether it has a boot-mode switch.",
        audit=(AP_SWITCH,),
    ),
    Interface(
        "sd-boot", "SD card auto-mount and main.py on the SD card",
        STM, Tier.T0,
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
        "sys-path", "'' first on sys.path (a file shadows frozen and /rom modules)",
        ALL, Tier.T0,
        "sys.path starts with '' (the current directory): a .py or .mpy file of the same name "
        "dropped onto the filesystem wins over the frozen module or the verified /rom one.",
        (RT_SYS_PATH, FW_FROZEN_BOOT, FW_COMPILER_OFF),
        "A writable folder left on sys.path (/lib) can still shadow later entries; the guard "
        "puts /rom first.",
        audit=(AP_SYS_PATH,),
    ),
    Interface(
        "writable-boot", "Writable boot.py / main.py (and the guard's own files)",
        HW, Tier.T0,
        "boot.py, main.py and an unfrozen guard are ordinary files: anyone who reaches the "
        "REPL, mpremote or the USB drive once replaces them, and the change survives resets.",
        (FW_FROZEN_BOOT, RT_GUARD_VERIFIES),
        "Without a custom firmware the guard is just a file; T3 (reflashing) replaces even a "
        "frozen guard unless secure boot is on.",
        audit=(AP_WRITABLE,),
    ),
    Interface(
        "memx", "machine.mem8/16/32 and uctypes (raw memory access)",
        HW, Tier.T0,
        "Read and write any address: RAM (keys in the heap), peripheral registers, "
        "memory-mapped flash (the ESP32 cache decrypts encrypted flash on the fly).",
        (FW_MEMX_OFF, *_CODE_EXEC_LEVERS),
        "Any code that runs reaches memory anyway (native/viper code in an .mpy); removing "
        "memX and uctypes removes the easiest way, not every way.",
        audit=(AP_MEM32, AP_UCTYPES),
    ),
    Interface(
        "compiler", "The compiler: exec, eval, compile and .py files",
        ALL, Tier.T0,
        "Any text becomes code: the REPL, exec()/eval() in the app, a .py file on the "
        "filesystem or the SD card.",
        (FW_COMPILER_OFF, RT_SYS_PATH, RT_GUARD_VERIFIES),
        ".mpy bytecode still loads without the compiler: keep sys.path free of writable "
        "folders (the guard verifies what it mounts at /rom).",
        audit=(AP_COMPILER,),
    ),
    Interface(
        "flash-api", "Flash read APIs (esp.flash_read, esp32.Partition, rp2.Flash, pyb.Flash)",
        HW, Tier.T0,
        "Whoever runs Python code reads the raw flash: every file, the guard's state and any "
        "key stored there (esp32.Partition decrypts partitions marked encrypted).",
        _CODE_EXEC_LEVERS,
        "Stock firmware cannot hide the flash from its own Python code: secrets on the device "
        "are only as safe as the closing of every way to run code.",
        audit=(AP_FLASH_API,),
    ),
    Interface(
        "rom-download", "ESP ROM serial download mode (esptool)",
        ESP, Tier.T3,
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
        "jtag-swd", "JTAG / SWD debug port",
        HW, Tier.T3,
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
        "stm32-dfu", "STM32 system bootloader (USB DFU, USART) and OpenMV's bootloader",
        STM, Tier.T3,
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
        "rp2-bootsel", "RP2040/RP2350 USB boot ROM (BOOTSEL, picotool)",
        RP, Tier.T3,
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
        "flash-readout", "Flash read directly (clip, programmer, or through the chip)",
        HW, Tier.T3,
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
        "unsigned-firmware", "A modified firmware flashed in place of yours",
        HW, Tier.T3,
        "A firmware that skips the guard, dumps the secrets or fakes the warranty state "
        "runs like yours.",
        (HW_ESP_SB, FW_ESP_SECURE, HW_RP2350_SB, HW_STM32_RDP1, HW_STM32_RDP2),
        "STM32 (F4/F7/H7) has no secure boot in this plan: RDP 1 makes a reflash erase "
        "everything first, it does not stop the new firmware from running; RDP 2 leaves only "
        "your own firmware's updater. RP2040 runs anything.",
        partial=frozenset({"hw-stm32-rdp1", "fw-esp-secure"}),
    ),
    Interface(
        "openmv-ide", "OpenMV IDE USB debug protocol",
        OPENMV, Tier.T0,
        "On the USB serial port OpenMV IDE's protocol stops the running script, uploads and "
        "runs any script, grabs camera frames and resets into the bootloader.",
        (FW_COMPILER_OFF, FW_USB_CDC_OFF),
        "Closing USB closes it; the compiler option stops script upload (the protocol "
        "compiles source on the camera) but not frame grabs.",
        unsure="A build option that removes OpenMV's debug protocol alone was not found.",
    ),
    Interface(
        "sim-host", "The virtual board's flash is a file on the host",
        UNIX, Tier.T0,
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
    return tuple(lv for lv in LEVERS.values()
                 if lv.applies_to(board) and (kind is None or lv.kind == kind))


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
