"""``mpseal inspect-device`` (the warranty check) on the virtual board: an official unit, a
unit whose guard refused a foreign-signed image, a unit whose trust root was replaced,
a locked unit, and the parsing of what a device reports."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest
from conftest import run_mpseal
from release_support import LOOPING_MAIN, board_running, release

from mpseal.device.guard_install import TRUST_ROOT
from mpseal.device.sim import VirtualBoard
from mpseal.errors import FormatError
from mpseal.formats import artifact
from mpseal.lockdown import warranty
from mpseal.lockdown.warranty import Mark, Verdict
from mpseal.packaging.project import Project


def inspect(board: Path, project: Path, *extra: str) -> tuple[int, dict]:
    res = run_mpseal("inspect-device", "--sim", board, "-C", project, "--json", *extra)
    assert res.stdout.startswith("{"), res.stderr
    return res.returncode, json.loads(res.stdout)


def marks(doc: dict, mark: str) -> list[str]:
    return [f"{e['what']}: {e['detail']}" for e in doc["evidence"] if e["mark"] == mark]


@pytest.fixture
def other_project(tmp_path: Path) -> Path:
    """Someone else's project: its own keys and trust root (a foreign signer)."""
    folder = tmp_path / "other"
    assert run_mpseal("init", folder, "--board", "unix", "--name", "hello").returncode == 0
    return folder


def test_unit_running_an_official_release_is_official(project: Path, tmp_path: Path) -> None:
    board = board_running(project, tmp_path / "board")
    code, doc = inspect(tmp_path / "board", project)
    assert code == 0 and doc["verdict"] == Verdict.OFFICIAL == "official", doc["evidence"]
    running = [s for s in doc["slots"] if s["running"]]
    assert len(running) == 1 and running[0]["slot"] == "a"
    assert running[0]["official_file"] == "hello-1.0.0.mpseal"
    assert running[0]["signed_by_us"] and running[0]["image"] == "intact"
    assert doc["trust_root"] == "ours, version 1"
    ok = " ".join(marks(doc, "ok"))
    assert "main.py: the guard's shim" in ok and "byte for byte the guard" in ok
    assert not marks(doc, "attempt") and not marks(doc, "modified")
    assert doc["device"]["id"] == board.hardware_id
    assert "Secure Boot" in doc["cannot_prove"]
    assert doc["official_releases"] == ["hello-1.0.0.mpseal"]


def test_foreign_signed_image_refused_by_the_guard_is_a_recorded_attempt(
    project: Path, other_project: Path, tmp_path: Path
) -> None:
    board = board_running(project, tmp_path / "board")
    root = Project.load(project).trust_root()
    board.install(release(project, "1.1.0", 1), root)  # same counter: 1.0.0 stays bootable
    assert board.boot().ran()[-1][:2] == ("hello", "1.1.0")  # committed in slot b
    # The owner copies someone else's build over the running slot, by hand.
    board.put(release(other_project, "6.6.6", 9), "/mpseal/slot-b.mpseal")
    report = board.boot()
    assert any(
        ln.startswith("slot b refused: manifest is signed by an unknown key")
        for ln in report.guard_lines
    ), report.output
    assert report.ran()[-1][:2] == ("hello", "1.0.0")  # fell back to our slot a

    code, doc = inspect(tmp_path / "board", project)
    assert code == 1 and doc["verdict"] == "tampering attempt recorded", doc["evidence"]
    attempts = marks(doc, "attempt")
    assert any(
        "guard log: slot b refused: manifest is signed by an unknown key" in a for a in attempts
    )
    assert any(
        a.startswith("slot b: hello 6.6.6 (counter 9): NOT signed by our release key")
        for a in attempts
    )
    running = next(s for s in doc["slots"] if s["running"])
    assert running["slot"] == "a" and running["official_file"] == "hello-1.0.0.mpseal"
    assert not marks(doc, "modified")


def test_replaced_trust_root_is_modified(
    project: Path, other_project: Path, tmp_path: Path
) -> None:
    board = board_running(project, tmp_path / "board")
    theirs = Project.load(other_project).trust_root()
    board.put(theirs.raw, TRUST_ROOT)  # the owner trusts their own key now ...
    board.install(release(other_project, "6.6.6", 9), theirs)  # ... and runs their build
    assert board.boot().ran()[-1][:2] == ("hello", "6.6.6")

    code, doc = inspect(tmp_path / "board", project)
    assert code == 6 and doc["verdict"] == "modified"
    assert doc["trust_root"].startswith("NOT ours")
    modified = marks(doc, "modified")
    assert any(
        m.startswith("trust root: replaced: a valid trust root that is not ours") for m in modified
    )
    assert any(
        m.startswith("slot b (running): hello 6.6.6 (counter 9): NOT signed by our release key")
        and "verifies under the trust root on the device" in m
        for m in modified
    )


def test_locked_unit_cannot_be_inspected_without_a_service_unlock(
    project: Path, tmp_path: Path
) -> None:
    board_running(project, tmp_path / "board", profile="field", main=LOOPING_MAIN)
    code, doc = inspect(tmp_path / "board", project)
    assert code == 5 and doc["verdict"] == "unknown" and not doc["reachable"]
    assert "service unlock token" in doc["summary"]
    # What the guard printed at power-on is still evidence.
    assert any(
        e["what"] == "console" and e["detail"].startswith("booting hello 1.0.0")
        for e in doc["evidence"]
    )


def test_table_output_and_the_firmware_fingerprint(project: Path, tmp_path: Path) -> None:
    board_running(project, tmp_path / "board")
    _, doc = inspect(tmp_path / "board", project)
    fp = doc["device"]["fingerprint"]
    res = run_mpseal(
        "inspect-device", "--sim", tmp_path / "board", "-C", project, "--expect-firmware", fp
    )
    assert res.returncode == 0, res.stdout + res.stderr
    assert "official: hello 1.0.0 (counter 1)" in res.stdout
    assert "What this cannot prove" in res.stdout
    code, doc = inspect(tmp_path / "board", project, "--expect-firmware", "0" * 64)
    assert code == 6 and any(m.startswith("firmware: fingerprint") for m in marks(doc, "modified"))


def test_bypassed_guard_is_modified(project: Path, tmp_path: Path) -> None:
    board = board_running(project, tmp_path / "board")
    board.put(b"print('my own firmware app')\n", "/main.py")
    code, doc = inspect(tmp_path / "board", project)
    assert code == 6 and any(
        m.startswith("main.py: /main.py is not the guard's shim") for m in marks(doc, "modified")
    )


# -- what a device reports is untrusted -------------------------------------------------


def test_slot_header_parser_refuses_hostile_headers(project: Path) -> None:
    proj = Project.load(project)
    from mpseal.packaging.package import build

    head = build(proj, proj.release_signer()).path.read_bytes()[: artifact.HEADER_LENGTH]
    mlen, count, off, ilen = warranty._header(head, warranty.DEFAULT_LIMITS)
    assert count == 1 and off % 64 == 0 and ilen > 0 and mlen > 0
    cases = [head[:31], b"\0" * 32, head[:12] + struct.pack("<I", 10**9) + head[16:]]
    cases.append(bytes([head[0] ^ 1]) + head[1:])
    for bad in cases:
        with pytest.raises(FormatError):
            warranty._header(bad, warranty.DEFAULT_LIMITS)


def test_log_lines_are_classified() -> None:
    ev = warranty._log_evidence(
        [
            "3 slot b refused: manifest is signed by an unknown key",
            "4 trial of slot b reverted: app crashed: ValueError: x",
            "5 trial of slot a reverted: image hash does not match the signed manifest",
            "6 unlock refused: unlock token is for another device",
            "7 service unlock 1: profile dev for this boot",
            "8 something the guard never writes",
        ],
        "guard log",
    )
    assert [(e.mark, e.detail.split(":")[0]) for e in ev] == [
        (Mark.ATTEMPT, "slot b refused"),
        (Mark.INFO, "trial of slot b reverted"),
        (Mark.ATTEMPT, "trial of slot a reverted"),
        (Mark.ATTEMPT, "unlock refused"),
        (Mark.INFO, "service unlock 1"),
    ]


def test_verdict_order_modified_beats_unknown_beats_attempt() -> None:
    from mpseal.device.console import ConsoleCheck
    from mpseal.lockdown.devicestate import GuardInfo

    def verdict(*ms: Mark, reachable: bool = True) -> Verdict:
        console = ConsoleCheck("prompt" if reachable else "none", "banner")
        return warranty.WarrantyReport(
            "p",
            console,
            {},
            GuardInfo(True),
            "",
            (),
            tuple(warranty.Evidence("x", m, "") for m in ms),
        ).verdict

    assert verdict(Mark.OK) == Verdict.OFFICIAL
    assert verdict(Mark.OK, Mark.ATTEMPT) == Verdict.ATTEMPT
    assert verdict(Mark.ATTEMPT, Mark.UNKNOWN) == Verdict.UNKNOWN
    assert verdict(Mark.UNKNOWN, Mark.MODIFIED, Mark.ATTEMPT) == Verdict.MODIFIED
    assert verdict(Mark.OK, reachable=False) == Verdict.UNKNOWN


def test_needs_exactly_one_target(project: Path, tmp_path: Path) -> None:
    VirtualBoard.create(tmp_path / "b")
    res = run_mpseal("inspect-device", "-C", project)
    assert res.returncode == 2 and "exactly one of" in res.stderr
