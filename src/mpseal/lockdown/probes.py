"""The audit probes: what ``mpseal audit`` runs on a live device (catalog of the lockdown model).

What `mpseal audit` runs on a live device. SERIAL probes are its first contact with the
line (device/console.py: Enter, Ctrl-C, Ctrl-B, Ctrl-A, each with a deadline); DEVICE
probes run in the raw REPL, one small exec each (a micro:bit has about 8 KB of heap);
`helper` probes call a function of runtime/mpseal_audit.py, sent to the device first.
"""

from __future__ import annotations

from mpseal.lockdown.model import (
    Probe,
    ProbeKind,
    Seen,
)

_SERIAL = ProbeKind.SERIAL
AP_PROMPT = Probe(
    _SERIAL,
    "listen; send b'\\r', then b'\\x03\\x03' (Ctrl-C), then b'\\x02' (Ctrl-B); wait for b'>>> '",
    "no b'>>> ' within a few seconds: expected after lockdown (field/sealed profile)",
    open_if=("prompt", "interrupted", "raw"),
    closed_if=("none",),
)
AP_RAW_REPL = Probe(
    _SERIAL,
    "at the prompt send b'\\x01' (Ctrl-A)",
    "no b'raw REPL; CTRL-B to exit' (or no prompt to send it at)",
    open_if=("banner",),
    closed_if=("no banner", "none"),
)
AP_CTRL_C = Probe(
    _SERIAL,
    "while a program runs (no prompt on Enter) send b'\\x03\\x03'",
    "no b'>>> ' after Ctrl-C (unknown when nothing was running to interrupt)",
    open_if=("interrupted",),
    closed_if=("none",),
)
AP_APP_EXIT = Probe(
    _SERIAL,
    "listen; send b'\\r' (and Ctrl-C, Ctrl-B)",
    "no b'>>> ': the line never ends up at the REPL",
    open_if=("prompt", "interrupted", "raw"),
    closed_if=("none",),
)
AP_SYS_PATH = Probe(
    ProbeKind.DEVICE,
    "'' in __import__('sys').path",
    "False (a firmware without sys.path, like the micro:bit's 1.9, imports from its "
    "filesystem: open)",
    open_if=("True", "raises AttributeError"),
    closed_if=("False",),
)
AP_MEM32 = Probe(
    ProbeKind.DEVICE,
    "hasattr(__import__('machine'), 'mem32')",
    "False",
    open_if=("True",),
    closed_if=("False", "raises ImportError"),
)
AP_UCTYPES = Probe(
    ProbeKind.DEVICE,
    "hasattr(__import__('uctypes'), 'bytearray_at')",
    "False or raises ImportError",
    open_if=("True",),
    closed_if=("False", "raises ImportError"),
)
AP_COMPILER = Probe(
    ProbeKind.DEVICE,
    "eval('6 * 7')",
    "raises NameError (built without the compiler: then the raw REPL does not answer either)",
    open_if=("42",),
    closed_if=("raises NameError",),
)
AP_WRITABLE = Probe(
    ProbeKind.DEVICE,
    "mpa_writable()",
    "'read-only': no file can be created in the folder of boot.py/main.py (the probe writes "
    "and removes mpseal-audit.tmp there; it never opens boot.py or main.py)",
    open_if=("'writable'",),
    closed_if=("'read-only'",),
    helper="mpa_writable",
)
AP_WEBREPL = Probe(
    ProbeKind.DEVICE,
    "hasattr(__import__('webrepl_cfg'), 'PASS')",
    "raises ImportError (no webrepl_cfg.py: WebREPL not configured)",
    open_if=("True",),
    closed_if=("False", "raises ImportError"),
)
AP_WEBREPL_PASS = Probe(
    ProbeKind.DEVICE,
    "__import__('webrepl_cfg').PASS",
    "passes webrepl_password_problems()",
    secret=True,
)
AP_USB_MODE = Probe(
    ProbeKind.DEVICE,
    "__import__('pyb').usb_mode()",
    "None or 'VCP'",
    open_if=("'VCP+MSC'", "'MSC'", "'VCP+MSC+HID'", "'MSC+HID'"),
    closed_if=("None", "'VCP'", "'VCP+HID'"),
)
AP_SWITCH = Probe(
    ProbeKind.DEVICE,
    "hasattr(__import__('pyb'), 'Switch')",
    "False",
    open_if=("True",),
    closed_if=("False",),
)
AP_SD = Probe(
    ProbeKind.DEVICE,
    "mpa_sd()",
    "'data' (mounted, not on sys.path, not the current folder); 'none' (no card now) says nothing",
    open_if=("'on-path'",),
    closed_if=("'data'",),
    helper="mpa_sd",
)
AP_FLASH_API = Probe(
    ProbeKind.DEVICE,
    "mpa_flash_api()",
    "[] (no flash read API in this firmware)",
    closed_if=("[]",),
    otherwise=Seen.OPEN,
    helper="mpa_flash_api",
)
