"""``mpseal audit`` on real MicroPython: the micro:bit firmware (1.9.2) in QEMU and the
virtual board before and after the ``sealed`` profile; exit codes and ``--json``."""

from __future__ import annotations

import json
import os
import time
import tty
from pathlib import Path

import pytest
from conftest import run_mpseal
from release_support import LOOPING_MAIN, board_running, release

from mpseal.device.console import ConsoleCheck
from mpseal.device.serialboard import SerialTransport
from mpseal.lockdown import audit, probes
from mpseal.lockdown import devicestate as ds
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.model import HW, Interface, ProbeKind, Seen, Tier
from mpseal.packaging.project import Project

MAIN_PY = b"# the product's main.py: the audit must never change it\nprint('app')\n"


def findings(doc: dict) -> dict[str, dict]:
    return {f["id"]: f for f in doc["findings"]}


def audit_json(*args: str | Path) -> tuple[int, dict]:
    res = run_mpseal("audit", *args, "--json")
    assert res.stdout.startswith("{"), res.stderr
    return res.returncode, json.loads(res.stdout)


# -- the micro:bit firmware in QEMU --------------------------------------------------


def start_program(pts: str) -> None:
    """Type a program that runs for ever at the micro:bit's prompt (an app at work)."""
    fd = os.open(pts, os.O_RDWR | os.O_NOCTTY)
    try:
        tty.setraw(fd)
        os.write(fd, b"\r\x02")  # the friendly REPL, whatever state the line was in
        time.sleep(0.3)
        os.write(fd, b"while True: pass\r")
        time.sleep(0.2)
        os.write(fd, b"\r")  # ends the compound statement: it runs
        time.sleep(0.5)
    finally:
        os.close(fd)


def test_microbit_open_repl_ctrl_c_mem32_and_writable_main_py(microbit_pty: str) -> None:
    t = SerialTransport(microbit_pty)
    t.write_file("main.py", MAIN_PY)
    t.close()
    start_program(microbit_pty)

    code, doc = audit_json("--port", microbit_pty)

    assert code == audit.EXIT_OPEN[Tier.T0] == 13, (doc["console"], doc["notes"])
    assert doc["reachable"] and doc["board"] is None  # not a board mpseal targets
    assert doc["device"]["platform"] == "microbit"
    assert doc["device"]["impl"][:2] == ["micropython", [1, 9, 2]]
    assert len(doc["device"]["id"]) == 16 and len(doc["device"]["fingerprint"]) == 64
    assert "microbit" in doc["modules"] and "machine" in doc["modules"]
    assert doc["guard"]["installed"] is False
    f = findings(doc)
    assert set(f) == {i.id for i in itf.INTERFACES if HW <= i.boards}
    # The open REPL, reached by Ctrl-C while a program ran; its raw mode too.
    assert f["repl-uart"]["status"] == "open"
    assert f["ctrl-c"]["status"] == "open" and doc["console"]["prompt"] == "interrupted"
    assert "Ctrl-C stopped the running program" in f["ctrl-c"]["reason"]
    assert f["raw-repl"]["status"] == "open"
    # machine.mem32, a writable main.py, the compiler, no sys.path (imports from the FS).
    assert f["memx"]["status"] == "open"
    assert {"kind": "device", "probe": probes.AP_MEM32.code, "result": "True"} in f["memx"][
        "evidence"
    ]
    assert f["writable-boot"]["status"] == "open"
    assert f["writable-boot"]["evidence"][0]["result"] == "'writable'"
    assert f["compiler"]["status"] == "open"
    assert f["sys-path"]["status"] == "open"
    assert f["sys-path"]["evidence"][0]["result"] == "raises AttributeError"
    assert f["flash-api"]["status"] == "closed"
    # Unknown where only the chip can tell (T3); each with a lever and its reversibility.
    assert f["jtag-swd"]["status"] == "unknown" and f["jtag-swd"]["tier"] == "T3"
    assert any(c["irreversible"] for c in f["jtag-swd"]["close"])
    assert any(
        c["kind"] == "firmware" and "MICROPY_PY_MACHINE_MEMX=(0)" in c["options"]
        for c in f["memx"]["close"]
    )
    # The audit wrote next to main.py and cleaned up; main.py itself is untouched.
    t = SerialTransport(microbit_pty)
    try:  # small evals: the heap of a micro:bit is fragmented by now
        assert t.eval("open('main.py').read()") == MAIN_PY.decode()
        assert "mpseal-audit.tmp" not in t.eval("__import__('os').listdir()")
    finally:
        t.close()


# -- the virtual board: dev, then sealed ------------------------------------------------


def test_virtual_board_before_and_after_the_sealed_profile(project: Path, tmp_path: Path) -> None:
    board = board_running(project, tmp_path / "board", profile="dev")

    code, before = audit_json("--sim", tmp_path / "board")
    f = findings(before)
    assert code == 13 and before["board"] == "unix" and before["reachable"]
    for open_ in ("repl-uart", "raw-repl", "app-exit", "sys-path", "compiler"):
        assert f[open_]["status"] == "open", (open_, f[open_])
    assert f["ctrl-c"]["status"] == "unknown"  # nothing was running: the app returned (dev)
    assert before["guard"]["installed"] and before["guard"]["profile"] == "dev"
    assert before["guard"]["state"]["committed"] == "a"
    assert any("booting hello 1.0.0" in ln for ln in before["guard"]["log"])
    assert before["device"]["id"] == board.hardware_id

    # Apply the sealed profile and ship an app whose main loop never returns.
    root = Project.load(project).trust_root()
    board.install_guard(root, "sealed")
    board.install(release(project, "1.1.0", 2, LOOPING_MAIN), root)

    started = time.monotonic()
    code, after = audit_json("--sim", tmp_path / "board")
    assert time.monotonic() - started < 30  # bounded: no hang on a board that never answers
    f = findings(after)
    assert code == audit.EXIT_UNREACHABLE == 1
    assert not after["reachable"] and after["console"]["prompt"] == "none"
    assert "REPL unreachable" in after["verdict"] and "expected after lockdown" in after["verdict"]
    assert after["announced_profile"] == "sealed"
    assert any(ln.startswith("lockdown sealed: kbd_intr off") for ln in after["power_on"])
    for closed in ("repl-uart", "raw-repl", "ctrl-c", "app-exit"):
        assert f[closed]["status"] == "closed", (closed, f[closed])
        assert "expected after lockdown" in f[closed]["reason"]
    for inside in ("sys-path", "compiler"):
        assert f[inside]["status"] == "unknown"
        assert f[inside]["evidence"][0]["result"] == audit.NO_REPL
    assert after["summary"]["open"] == 0


def test_table_on_a_tty_says_what_is_open_and_how_to_close_it(
    project: Path, tmp_path: Path
) -> None:
    board_running(project, tmp_path / "board", profile="dev")
    res = run_mpseal("audit", "--sim", tmp_path / "board")
    assert res.returncode == 13, res.stderr
    out = res.stdout
    assert "Audit of sim" in out and "board unix" in out
    assert "mpseal guard: profile dev" in out
    for text in (
        "repl-uart",
        "T0",
        "open",
        "runtime rt-no-return (field/sealed; reversible)",
        "eval('6 * 7')",
        "-> 42",
        "(exit 13)",
    ):
        assert text in out, text


def test_webrepl_password_is_judged_never_shown(project: Path, tmp_path: Path) -> None:
    board = board_running(project, tmp_path / "board", profile="dev")
    board.put(b"PASS = 'admin'\n", "/lib/webrepl_cfg.py")
    code, doc = audit_json("--sim", tmp_path / "board", "--board", "esp32", "--fail-on", "T0")
    web = findings(doc)["webrepl"]
    assert web["status"] == "open" and web["tier"] == "T1"
    shown = [e["result"] for e in web["evidence"]]
    assert any(r.startswith("5 characters (not shown)") and "common word" in r for r in shown)
    assert "admin" not in json.dumps(doc)
    assert code == 13  # T0 holes are open too


def test_keep_marks_a_hole_kept_not_failing(project: Path, tmp_path: Path) -> None:
    board_running(project, tmp_path / "board", profile="dev")
    _, doc = audit_json("--sim", tmp_path / "board", "--keep", "repl-service")
    f = findings(doc)
    assert f["repl-uart"]["kept"] and f["raw-repl"]["kept"] and not f["compiler"]["kept"]
    failing = {i for i, x in f.items() if x["status"] == "open" and not x["kept"]}
    assert doc["summary"]["failing"] == len(failing) and "repl-uart" not in failing


def test_unknown_keep_and_both_targets_are_usage_errors(tmp_path: Path) -> None:
    res = run_mpseal("audit", "--sim", tmp_path, "--keep", "everything")
    assert res.returncode == 2 and "unknown --keep name" in res.stderr
    res = run_mpseal("audit", "--sim", tmp_path, "--port", "/dev/null")
    assert res.returncode == 2 and "exactly one of" in res.stderr


def test_a_port_that_cannot_be_opened_is_a_transport_failure(tmp_path: Path) -> None:
    res = run_mpseal("audit", "--port", str(tmp_path / "no-such-tty"))
    assert res.returncode == 4 and "cannot open" in res.stderr


# -- exit codes by the worst finding ----------------------------------------------------


def report_with(
    open_tiers: list[Tier], reachable: bool = True, fail_on: Tier = Tier.T3
) -> audit.AuditReport:
    console = ConsoleCheck("prompt" if reachable else "none", "banner" if reachable else "none")
    base = itf.INTERFACES_BY_ID["compiler"]
    found = tuple(
        audit.Finding(Interface(f"x{n}", "x", base.boards, tier, "", (), ""), Seen.OPEN, "", (), ())
        for n, tier in enumerate(open_tiers)
    )
    return audit.AuditReport(
        "p",
        "unix",
        "test",
        "uart",
        console,
        {},
        (),
        ds.GuardInfo(False),
        found,
        audit.AuditOptions(fail_on=fail_on),
    )


@pytest.mark.parametrize(
    "tiers, reachable, fail_on, code",
    [
        ([], True, Tier.T3, 0),
        ([], False, Tier.T3, 1),
        ([Tier.T3], True, Tier.T3, 10),
        ([Tier.T3, Tier.T2], True, Tier.T3, 11),
        ([Tier.T3, Tier.T1], True, Tier.T3, 12),
        ([Tier.T1, Tier.T0, Tier.T3], True, Tier.T3, 13),
        ([Tier.T3, Tier.T1], True, Tier.T0, 0),  # only T0 holes fail
        ([Tier.T3, Tier.T1], True, Tier.T1, 12),
    ],
)
def test_exit_code_is_the_weakest_attacker_who_gets_in(tiers, reachable, fail_on, code) -> None:
    assert report_with(tiers, reachable, fail_on).exit_code == code


@pytest.mark.parametrize(
    "facts, board",
    [
        (
            {
                "platform": "esp32",
                "uname": ("esp32", "esp32", "1.24", "v1.24", "Generic ESP32S3 module with ESP32S3"),
            },
            "esp32s3",
        ),
        (
            {"platform": "esp32", "uname": ("esp32", "esp32", "1.24", "v1.24", "ESP32 module")},
            "esp32",
        ),
        (
            {
                "platform": "rp2",
                "impl": ("micropython", (1, 24, 0), "Raspberry Pi Pico 2 with RP2350", None, None),
            },
            "rp2350",
        ),
        ({"platform": "rp2", "uname": ("rp2", "rp2", "1.24", "v", "Pico with RP2040")}, "rp2"),
        ({"platform": "pyboard"}, "stm32"),
        ({"platform": "linux"}, "unix"),
        ({"platform": "microbit"}, None),
        ({}, None),
    ],
)
def test_board_from_what_the_firmware_says(facts: dict, board: str | None) -> None:
    assert audit.board_from_facts(facts) == board


# -- hostile replies ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff" * 2000,
        b"{}\n" + b"0" * 64,
        b'{"seq": -1}\nabc',
        b'{"seq":1,"committed":"../a","trial":null,"tries":0,"counter":0,"unlocks":0}\n'
        + b"0" * 64,
    ],
)
def test_state_copies_that_are_not_intact_are_refused(raw: bytes) -> None:
    assert ds.parse_state(raw) is None


def test_intact_state_copy_parses() -> None:
    import hashlib

    body = b'{"seq":3,"committed":"a","trial":null,"tries":0,"counter":1,"unlocks":0}'
    raw = body + b"\n" + hashlib.sha256(body).hexdigest().encode()
    # written by a guard before the fail count: it reads as 0 failed boots
    assert ds.parse_state(raw) == {
        "seq": 3,
        "committed": "a",
        "trial": None,
        "tries": 0,
        "counter": 1,
        "unlocks": 0,
        "fails": 0,
    }


def test_device_text_is_cleaned_before_it_is_shown() -> None:
    assert ds.log_lines(b"1 ok\n2 \x1b[31mred\x07\n") == ["1 ok", "2 ?[31mred?"]
    assert ds.parse_config(b'{"profile": "\\u001b[2Jx", "board": "unix"}') == {
        "profile": "?[2Jx",
        "board": "unix",
    }
    assert ds.parse_config(b"[1, 2]") is None and ds.parse_config(b"x" * 5000) is None


# -- the probes in the interface model are runnable ---------------------------------------


def test_every_audit_probe_is_runnable_and_judges_both_ways() -> None:
    import ast

    from mpseal.lockdown.probing import helper_source

    serial = {probes.AP_PROMPT, probes.AP_RAW_REPL, probes.AP_CTRL_C, probes.AP_APP_EXIT}
    for i in itf.INTERFACES:
        for probe in i.audit:
            if probe.kind == ProbeKind.SERIAL:
                assert probe in serial, i.id  # the console check knows how to run it
                continue
            assert probe.kind == ProbeKind.DEVICE, i.id
            ast.parse(probe.code, mode="eval")
            if probe.helper:
                assert probe.code.startswith(probe.helper + "(")
                ast.parse(helper_source(probe.helper))  # the device function exists
            if not probe.secret:
                assert probe.open_if or probe.otherwise == Seen.OPEN, i.id
                assert probe.closed_if, i.id
                assert (
                    probe.judge("raises OSError") == Seen.UNKNOWN
                    or "raises OSError" in probe.open_if + probe.closed_if
                )
    # Interfaces inside the chip have no probe: the audit says unknown, never closed.
    assert not itf.INTERFACES_BY_ID["rom-download"].audit
    assert probes.AP_MEM32.judge("True") == Seen.OPEN
    assert probes.AP_MEM32.judge("raises ImportError") == Seen.CLOSED
    assert probes.AP_FLASH_API.judge("['esp32.Partition']") == Seen.OPEN
    assert probes.AP_FLASH_API.judge("failed") == Seen.UNKNOWN
