"""Exhaustive power-cut check of an update on the virtual board.

For every block write N of a whole update cycle (stage -> trial boot with
confirm() -> first committed boot), the flash loses power at write N (and, with
``tear``, that write stops half-way); the board is then rebooted without cuts
and must run a validly signed image (the old one or the new one), with a
security counter that never went down, and never end up without a bootable
image. Each step restarts from the flash as it was before that step.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from mpseal.device.picoboard import PicoBoard
from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import INCOMING_PATH, MAX_BOOTS, VirtualBoard
from mpseal.errors import MpsealError

MAX_WRITES_PER_STEP = 2000
DELTA_PATH = "/mpseal/incoming.mpsd"


@dataclass
class CutPoint:
    step: str
    write: int
    torn: bool
    ran: str  # version that ran after the reboot, or "" if none
    counter: int
    ok: bool
    why: str = ""


@dataclass
class PowerCutReport:
    points: list[CutPoint] = field(default_factory=list)
    writes_per_step: dict[str, int] = field(default_factory=dict)

    @property
    def tried(self) -> int:
        return len(self.points)

    @property
    def survived(self) -> int:
        return sum(p.ok for p in self.points)

    def failures(self) -> list[CutPoint]:
        return [p for p in self.points if not p.ok]


def _lost_power(res_stdout: str, res_stderr: str) -> bool:
    return "PowerCut" in res_stdout or "PowerCut" in res_stderr


def check_update(
    board: VirtualBoard,
    new_blob: bytes,
    versions: set[str],
    min_counter: int,
    tear: bool = False,
    progress: Callable[[CutPoint], None] | None = None,
    heapsize: str | None = None,
    delta: bytes | None = None,
    cut_steps: tuple[str, ...] = ("stage", "trial boot", "committed boot"),
) -> PowerCutReport:
    """Cut power at every write of stage -> trial -> committed boot of ``new_blob``.

    ``board`` must already run a committed release; ``versions`` are the
    versions allowed to run after a cut (old and new); the committed counter
    must never drop below ``min_counter``. With ``delta`` (formats/delta.py, from the
    running release to ``new_blob``) the stage step rebuilds the release from it instead
    (mpseal_delta: apply into a file, per-file check, the guard's stage). Steps not in
    ``cut_steps`` run once without cuts.
    """
    report = PowerCutReport()
    if delta is None:
        board.put(new_blob, INCOMING_PATH)
        stage: tuple[str, ...] = ("stage", INCOMING_PATH)
    else:
        board.put(delta, DELTA_PATH)
        stage = ("delta-stage", DELTA_PATH)
    steps = [("stage", stage), ("trial boot", ("boot",)), ("committed boot", ("boot",))]
    for name, cmd in steps:
        if name not in cut_steps:
            board.command(*cmd, heapsize=heapsize)
            continue
        before = board.flash.read_bytes()
        completed_at = None
        for n in range(1, MAX_WRITES_PER_STEP + 1):
            for torn in (False, True) if tear else (False,):
                board.flash.write_bytes(before)
                res = board.command(*cmd, cut=n, tear=torn, heapsize=heapsize)
                if not _lost_power(res.stdout, res.stderr):
                    completed_at = n - 1
                    break
                point = _reboot_and_check(board, name, n, torn, versions, min_counter, heapsize)
                report.points.append(point)
                if progress:
                    progress(point)
            if completed_at is not None:
                break
        report.writes_per_step[name] = completed_at if completed_at is not None else -1
        # Leave the board as the completed step left it, for the next step.
        board.flash.write_bytes(before)
        board.command(*cmd, heapsize=heapsize)
    return report


def _reboot_and_check(
    board: VirtualBoard,
    step: str,
    n: int,
    torn: bool,
    versions: set[str],
    min_counter: int,
    heapsize: str | None,
) -> CutPoint:
    boot = board.boot(heapsize=heapsize)
    ran = boot.ran()
    version = ran[-1][1] if ran else ""
    status = board.status()
    state = status.get("state") or {}
    counter = state.get("counter", -1) if isinstance(state, dict) else -1
    why = ""
    if boot.outcome not in ("running", "returned") or not ran:
        why = f"board did not boot an image ({boot.outcome}): {boot.guard_lines[-1:]}"
    elif version not in versions:
        why = f"ran version {version}, not one of {sorted(versions)}"
    elif not isinstance(counter, int) or counter < min_counter:
        why = f"security counter {counter} dropped below {min_counter}"
    return CutPoint(
        step, n, torn, version, counter if isinstance(counter, int) else -1, not why, why
    )


# --------------------------------------------------------------------------- the virtual Pico

PICO_STEPS = ("stage", "trial boot", "committed boot")


# The update client's delta path on a board, over the REPL (mpseal_ota._via_delta after
# the download): rebuild from the committed slot, check every file, stage.
DELTA_STAGE = (
    "import os, mpseal_guard, mpseal_delta\n"
    "try:\n"
    " mpseal_guard._load_state(mpseal_guard.trust_root())\n"
    " _o = '/mpseal/delta.new'\n"
    " mpseal_delta.apply({path!r}, mpseal_guard.slot_path(mpseal_guard._state.committed), _o)\n"
    " mpseal_delta.check_files(_o)\n"
    " _r = mpseal_guard.stage(_o)\n"
    " os.remove(_o)\n"
    " print(repr(('STAGED', _r.version, mpseal_guard._state.trial)))\n"
    "except Exception as e:\n"
    " print(repr(('REFUSED', str(e)[:160])))\n"
)


def check_update_pico(
    board: PicoBoard,
    new_blob: bytes,
    versions: set[str],
    min_counter: int,
    progress: Callable[[CutPoint], None] | None = None,
    max_writes: int = MAX_WRITES_PER_STEP,
    delta: bytes | None = None,
    cut_steps: tuple[str, ...] = PICO_STEPS,
) -> PowerCutReport:
    """The same check on a virtual Pico (stock firmware, real littlefs, rp2040js).

    Power is lost at every flash operation (each erase and each program counts one)
    of: the guard staging ``new_blob`` (asked over the REPL, so the board must have
    the dev profile and run a committed release), the trial boot, and the first
    committed boot. After each cut the board is powered on without cuts and must boot
    an allowed version with a counter not below ``min_counter``. There are no torn
    writes here: an operation is done whole or not at all (docs/virtual-pico.md). With
    ``delta`` the stage step rebuilds the release from it (DELTA_STAGE). Steps not in
    ``cut_steps`` run once without cuts (each emulated cut costs two power-ons: a test
    that changes only one step cuts only there).
    """
    from mpseal.device.guard_install import INCOMING, STAGE

    report = PowerCutReport()
    # Cuts count flash operations, not time: no flash chip timing (the emulator would
    # otherwise wait out each erase's 45 ms in wall time whenever the CPU idles).
    board.pico.flash_timing = False
    code = (
        STAGE.format(path=INCOMING, key=None)
        if delta is None
        else DELTA_STAGE.format(path=DELTA_PATH)
    )
    with board.session() as transport:
        transport.write_file(
            INCOMING if delta is None else DELTA_PATH, new_blob if delta is None else delta
        )
    for name in PICO_STEPS:
        if name not in cut_steps:
            _pico_step(board, name, cut=0, code=code)
            continue
        before = board.flash.read_bytes()
        completed_at = None
        for n in range(1, max_writes + 1):
            board.flash.write_bytes(before)
            if not _pico_step(board, name, cut=n, code=code):
                completed_at = n - 1  # the step ran whole: the flash holds its outcome
                break
            point = _reboot_and_check_pico(board, name, n, versions, min_counter)
            report.points.append(point)
            if progress:
                progress(point)
        report.writes_per_step[name] = completed_at if completed_at is not None else -1
        if completed_at is None:  # never finished within max_writes: run it whole
            board.flash.write_bytes(before)
            _pico_step(board, name, cut=0, code=code)
    return report


def _pico_step(board: PicoBoard, step: str, cut: int, code: str | None = None) -> bool:
    """Run one step with power lost at its ``cut``-th flash write; True if it was lost.
    ``code``: what the stage step runs (default: the guard's stage of INCOMING)."""
    pico = board.pico
    try:
        if step == "stage":
            from mpseal.device.guard_install import INCOMING, STAGE, STAGE_TIMEOUT

            code = code or STAGE.format(path=INCOMING, key=None)

            pico.start()
            board.settle()
            transport = SerialTransport(pico.path)
            try:
                transport.exec("pass")  # in the raw REPL before the cut is armed
                if cut:
                    pico.arm_cut(cut)
                done = threading.Event()

                def stage() -> None:
                    try:
                        transport.exec(code, timeout=STAGE_TIMEOUT)
                    except (MpsealError, OSError, TypeError, ValueError):
                        pass  # the line went down with the power: pyserial fails as it can
                    finally:
                        done.set()

                threading.Thread(target=stage, daemon=True).start()
                while not done.wait(0.2) and pico.cut is None:
                    pass
                lost = pico.cut is not None
            finally:
                pico.stop()  # the line closes: a stage still waiting ends
                transport.close()
            return lost
        pico.start(cut_after=cut)
        report = board.follow_one_boot()
        return report.outcome == "cut"
    finally:
        pico.stop()


def _reboot_and_check_pico(
    board: PicoBoard, step: str, n: int, versions: set[str], min_counter: int
) -> CutPoint:
    boot = board.boot(max_boots=MAX_BOOTS)
    ran = boot.ran()
    version = ran[-1][1] if ran else ""
    state = board.status().get("state") or {}
    counter = state.get("counter", -1) if isinstance(state, dict) else -1
    why = ""
    if boot.outcome not in ("running", "returned") or not ran:
        why = f"board did not boot an image ({boot.outcome}): {boot.guard_lines[-1:]}"
    elif version not in versions:
        why = f"ran version {version}, not one of {sorted(versions)}"
    elif not isinstance(counter, int) or counter < min_counter:
        why = f"security counter {counter} dropped below {min_counter}"
    return CutPoint(
        step, n, False, version, counter if isinstance(counter, int) else -1, not why, why
    )
