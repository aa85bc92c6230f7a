"""Exhaustive power-cut check of an update on the virtual board.

For every block write N of a whole update cycle (stage -> trial boot with
confirm() -> first committed boot), the flash loses power at write N (and, with
``tear``, that write stops half-way); the board is then rebooted without cuts
and must run a validly signed image (the old one or the new one), with a
security counter that never went down, and never end up without a bootable
image. Each step restarts from the flash as it was before that step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mpseal.device.sim import INCOMING_PATH, VirtualBoard

MAX_WRITES_PER_STEP = 2000


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


def check_update(board: VirtualBoard, new_blob: bytes, versions: set[str], min_counter: int,
                 tear: bool = False, progress: Callable[[CutPoint], None] | None = None,
                 heapsize: str | None = None) -> PowerCutReport:
    """Cut power at every write of stage -> trial -> committed boot of ``new_blob``.

    ``board`` must already run a committed release; ``versions`` are the
    versions allowed to run after a cut (old and new); the committed counter
    must never drop below ``min_counter``.
    """
    report = PowerCutReport()
    board.put(new_blob, INCOMING_PATH)
    steps = [("stage", ("stage", INCOMING_PATH)), ("trial boot", ("boot",)),
             ("committed boot", ("boot",))]
    for name, cmd in steps:
        before = board.flash.read_bytes()
        completed_at = None
        for n in range(1, MAX_WRITES_PER_STEP + 1):
            for torn in ((False, True) if tear else (False,)):
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


def _reboot_and_check(board: VirtualBoard, step: str, n: int, torn: bool, versions: set[str],
                      min_counter: int, heapsize: str | None) -> CutPoint:
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
    return CutPoint(step, n, torn, version, counter if isinstance(counter, int) else -1,
                    not why, why)
