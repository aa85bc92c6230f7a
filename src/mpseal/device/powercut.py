"""Exhaustive power-cut check of an update on the virtual board.

For every block write N of a whole update cycle (stage -> trial boot with
confirm() -> first committed boot), the flash loses power at write N (and, with
``tear``, that write stops half-way); the board is then rebooted without cuts
and must run a validly signed image (the old one or the new one), with a
security counter that never went down, and never end up without a bootable
image. Each step restarts from the flash as it was before that step.
"""

from __future__ import annotations

import hashlib
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path

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
    # the point whose flash was the same, byte for byte, and whose power-on result this
    # one is (the same flash powers on the same way: it is powered on once; _PowerOns)
    same_as: tuple[str, int] | None = None


@dataclass
class PowerCutReport:
    points: list[CutPoint] = field(default_factory=list)
    writes_per_step: dict[str, int] = field(default_factory=dict)
    # the virtual Pico's real cuts that confirmed the recorded ones (check_update_pico)
    confirmed: list[CutPoint] = field(default_factory=list)

    @property
    def tried(self) -> int:
        return len(self.points)

    @property
    def survived(self) -> int:
        return sum(p.ok for p in self.points)

    def failures(self) -> list[CutPoint]:
        return [p for p in self.points if not p.ok]

    @property
    def booted(self) -> int:
        """Cut points (recorded and confirmed) powered on: those not the same as one before."""
        return sum(p.same_as is None for p in self.points + self.confirmed)


class _PowerOns:
    """Each flash a cut left, powered on and checked once: a flash the same, byte for
    byte, as one before (an erase of erased blocks, a torn write that tore nothing, a
    real cut that left what its recorded one did) powers on the same way, so its point
    takes that result (``same_as``)."""

    def __init__(self, check: Callable[[str, int, bool], CutPoint]) -> None:
        self._check = check  # powers the board on from its flash as it is now
        self._seen: dict[bytes, CutPoint] = {}

    def point(self, flash: bytes, step: str, n: int, torn: bool = False) -> CutPoint:
        key = hashlib.sha256(flash).digest()
        first = self._seen.get(key)
        if first is not None:
            return replace(first, step=step, write=n, torn=torn, same_as=(first.step, first.write))
        self._seen[key] = point = self._check(step, n, torn)
        return point


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
    ``cut_steps`` run once without cuts. A flash the same as one already powered on is not
    powered on again (``_PowerOns``).
    """
    report = PowerCutReport()
    power_ons = _PowerOns(
        lambda step, n, torn: _reboot_and_check(
            board, step, n, torn, versions, min_counter, heapsize
        )
    )
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
                point = power_ons.point(board.flash.read_bytes(), name, n, torn)
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
CONFIRM_CUTS = 3  # real cuts a step: the first write, the last, and one between


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
    delta: bytes | None = None,
    cut_steps: tuple[str, ...] = PICO_STEPS,
    confirm_cuts: int = CONFIRM_CUTS,
) -> PowerCutReport:
    """The same check on a virtual Pico (stock firmware, real littlefs, rp2040js).

    Power is lost at every flash operation (each erase and each program counts one)
    of: the guard staging ``new_blob`` (asked over the REPL, so the board must have
    the dev profile and run a committed release), the trial boot, and the first
    committed boot. After each cut the board is powered on without cuts and must boot
    an allowed version with a counter not below ``min_counter``. There are no torn
    writes here: an operation is done whole or not at all (docs/virtual-pico.md). With
    ``delta`` the stage step rebuilds the release from it (DELTA_STAGE). Steps not in
    ``cut_steps`` run once without cuts.

    Each step runs whole once with its flash operations recorded; the flash a cut at
    operation N leaves is the flash before the step with the first N - 1 operations
    done, and each of those is powered on and checked. ``confirm_cuts`` of them (the
    first, the last and ones between) are also cut for real: the real cut must follow
    the same operations (kind, place, length) and leave the same files (``_confirm``),
    and its flash is powered on and checked too (``report.confirmed``). A cut in the
    emulator costs a power-on and the step again: twice the time for each point.

    A flash the same as one already powered on is not powered on again (``_PowerOns``;
    ``report.booted`` counts the others).
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

    def power_on(step: str, n: int, torn: bool) -> CutPoint:
        return _reboot_and_check_pico(board, step, n, versions, min_counter)

    power_ons = _PowerOns(power_on)

    for name in PICO_STEPS:
        if name not in cut_steps:
            _pico_step(board, name, cut=0, code=code)
            continue
        before = board.flash.read_bytes()
        powered_on, ops = _recorded_step(board, name, code)
        after = board.flash.read_bytes()
        confirm = _spread(len(ops), confirm_cuts)
        flash = bytearray(before)
        for op in powered_on:  # the stage's board booted to its REPL first
            op.apply(flash)
        cut_flash: dict[int, bytes] = {}
        for n, op in enumerate(ops, start=1):
            image = bytes(flash)  # what a cut at write n leaves
            if n in confirm:
                cut_flash[n] = image
            board.flash.write_bytes(image)
            point = power_ons.point(image, name, n)
            report.points.append(point)
            if progress:
                progress(point)
            op.apply(flash)
        if bytes(flash) != after:
            raise MpsealError(f"power-cut check: the recorded writes of {name} do not replay")
        for n in sorted(confirm):
            board.flash.write_bytes(before)
            run, done = _traced_step(board, name, n, code)
            if not run.lost:
                raise MpsealError(f"power-cut check: {name} ended before its write {n} this time")
            _confirm(board, name, n, powered_on + ops[: n - 1], done, cut_flash[n])
            point = power_ons.point(board.flash.read_bytes(), name, n)
            report.confirmed.append(point)
            if progress:
                progress(point)
        report.writes_per_step[name] = len(ops)
        board.flash.write_bytes(after)
    return report


@dataclass(frozen=True)
class FlashOp:
    """One flash operation of the emulator's trace: an erase (``data`` None) or a
    program of ``data`` (the bytes as programmed: already ANDed with the flash)."""

    offset: int
    length: int
    data: bytes | None

    def apply(self, flash: bytearray) -> None:
        end = self.offset + self.length
        flash[self.offset : end] = b"\xff" * self.length if self.data is None else self.data

    @classmethod
    def parse(cls, line: str) -> FlashOp:
        """A trace line: ``E offset length`` or ``P offset length hex``."""
        try:
            kind, offset, length, *rest = line.split()
            data = bytes.fromhex(rest[0]) if rest else b""
            op = cls(int(offset), int(length), None if kind == "E" else data)
        except ValueError:
            op = None
        if (
            op is None
            or kind not in ("E", "P")
            or (op.data is not None and len(op.data) != op.length)
        ):
            raise MpsealError(f"power-cut check: bad flash trace line {line[:40]!r}")
        return op


def _spread(count: int, k: int) -> set[int]:
    """``k`` of the writes 1..count, the first and the last among them."""
    if count <= 0 or k <= 0:
        return set()
    if k == 1:
        return {count}
    return {1 + round(i * (count - 1) / (k - 1)) for i in range(k)}


def _recorded_step(board: PicoBoard, step: str, code: str) -> tuple[list[FlashOp], list[FlashOp]]:
    """Run the step whole with the emulator's flash trace on: the operations of the
    power-on before the step's own (the stage's boot to the REPL), and the step's."""
    run, ops = _traced_step(board, step, 0, code)
    if run.lost:
        raise MpsealError(f"power-cut check: {step} lost power without a cut")
    return ops[: run.first], ops[run.first :]


def _traced_step(board: PicoBoard, step: str, cut: int, code: str) -> tuple[StepRun, list[FlashOp]]:
    """``_pico_step`` with the flash trace on: the run, and the power-on's operations
    done (up to the cut, or to the step's end)."""
    with tempfile.TemporaryDirectory(prefix="mpseal-cut-") as tmp:
        trace = Path(tmp) / "flash.trace"
        trace.touch()
        run = _pico_step(board, step, cut=cut, code=code, trace=trace)
        lines = trace.read_text().splitlines()
    done = run.first + cut - 1 if run.lost else run.last
    ops = [FlashOp.parse(line) for line in lines[:done]]
    if len(ops) != done:
        raise MpsealError(f"power-cut check: the flash trace of {step} is missing writes")
    return run, ops


def _confirm(
    board: PicoBoard,
    step: str,
    n: int,
    recorded: list[FlashOp],
    done: list[FlashOp],
    recorded_flash: bytes,
) -> None:
    """A real cut at write ``n`` against the recorded one: the same operations (kind,
    place, length) before it, and the same files (paths, sizes, contents). The bytes may
    differ where littlefs keeps each file's modification time (the board's clock, which
    runs with the host's while the board waits for it) and in those metadata entries'
    checksums: nothing the guard reads."""
    if [(o.offset, o.length, o.data is None) for o in done] != [
        (o.offset, o.length, o.data is None) for o in recorded
    ]:
        raise MpsealError(
            f"power-cut check: a real cut at write {n} of {step} followed other writes than "
            "the recorded run (the step does not write the same each time)"
        )
    real_flash = board.flash.read_bytes()
    real_files = board.files()
    board.flash.write_bytes(recorded_flash)
    recorded_files = board.files()
    board.flash.write_bytes(real_flash)
    if real_files != recorded_files:
        raise MpsealError(
            f"power-cut check: a real cut at write {n} of {step} left other files than the "
            "recorded writes"
        )


@dataclass(frozen=True)
class StepRun:
    lost: bool  # power was lost (the cut)
    first: int  # writes of this power-on before the step's own
    last: int  # writes of this power-on when the step ended


def _pico_step(
    board: PicoBoard, step: str, cut: int, code: str | None = None, trace: Path | None = None
) -> StepRun:
    """Run one step with power lost at its ``cut``-th flash write (0: none). ``code``:
    what the stage step runs (default: the guard's stage of INCOMING); ``trace``: the
    emulator's record of this power-on's writes. A boot step ends at the chip's first
    reset (the next boot is not the step's)."""
    pico = board.pico
    try:
        if step == "stage":
            from mpseal.device.guard_install import INCOMING, STAGE, STAGE_TIMEOUT

            code = code or STAGE.format(path=INCOMING, key=None)

            pico.start(trace=trace)
            board.settle()
            transport = SerialTransport(pico.path)
            try:
                transport.exec("pass")  # in the raw REPL before the cut is armed
                first = pico.counters().writes
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
                last = first if lost else pico.counters().writes
            finally:
                pico.stop()  # the line closes: a stage still waiting ends
                transport.close()
            return StepRun(lost, first, last)
        pico.start(cut_after=cut, trace=trace)
        report = board.follow_one_boot()
        if report.outcome == "cut":
            return StepRun(True, 0, 0)
        resets = [e for e in pico.events if e.get("event") == "reset"]
        if not resets:
            return StepRun(False, 0, pico.counters().writes)
        at_reset = resets[0].get("writes")
        if not isinstance(at_reset, int):
            raise MpsealError("power-cut check: the emulator's reset event has no write count")
        return StepRun(False, 0, at_reset)
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
