"""``mpseal audit``: which interfaces of a live device are open, found by running the
probes of the lockdown model (``model.py``; catalog in ``probes.py``) on it.

1. First contact (``device/console.py``): listen, Enter, Ctrl-C, Ctrl-B, Ctrl-A, each
   with a deadline. A locked-down board (``field``/``sealed``: Ctrl-C ignored, an app
   that never returns) shows no prompt; the audit says so — "REPL unreachable:
   expected after lockdown" — and reports what can only be seen from inside as unknown.
2. At a prompt: the raw REPL through the :class:`Transport`, one small exec per probe
   (a micro:bit has about 8 KB of heap): the firmware's facts, ``help('modules')``, the
   boot guard's files, then every interface's audit probes.
3. One :class:`Finding` per interface of the board: open / closed / unknown, the probes
   and their raw results, the threat tier, the levers that close it on this board
   (runtime / firmware / hardware / design) and whether closing is reversible.

The board is ``--board``, else what the platform says (``sys.platform``, ``os.uname``),
else the guard's ``device.json``. A board mpseal does not target (the micro:bit) gets
the interfaces every hardware port has.

Exit codes (docs/audit.md): 0 nothing open; 1 REPL unreachable (nothing open seen from
outside: expected after lockdown); 10..13 open holes, by the weakest attacker who can
use one (10: T3 tools ... 13: T0, anyone with a cable).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from mpseal.device.console import DEFAULT_TIMING, ConsoleCheck, Timing, check_console
from mpseal.device.picoboard import PicoBoard
from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import SimLink
from mpseal.device.transport import Transport
from mpseal.errors import UsageError
from mpseal.formats.boards import BOARDS
from mpseal.lockdown import devicestate as ds
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.model import (
    HW,
    PROFILES,
    TIER_ATTACKER,
    Interface,
    Kind,
    Lever,
    Probe,
    ProbeKind,
    Reversible,
    Seen,
    Tier,
)
from mpseal.lockdown.plan import parse_keep
from mpseal.lockdown.probes import AP_RAW_REPL
from mpseal.lockdown.probing import DeviceProbes, clean

EXIT_CLEAN = 0
EXIT_UNREACHABLE = 1
EXIT_OPEN = {Tier.T3: 10, Tier.T2: 11, Tier.T1: 12, Tier.T0: 13}
USB_LINE_BOARDS = frozenset({"esp32s3", "rp2", "rp2350", "stm32", "openmv"})
REPL_IDS = ("repl-usb", "repl-uart")
UNREACHABLE = (
    "REPL unreachable on this line: expected after lockdown (the field/sealed "
    "profile ignores Ctrl-C and never returns to the REPL)"
)
NO_REPL = "not probed: no REPL to run it in (expected after lockdown)"
_TIERS = list(Tier)

Connect = Callable[[str], Transport]


@dataclass(frozen=True)
class AuditOptions:
    board: str | None = None  # None: from the device
    keep: tuple[str, ...] = ()  # uses kept on purpose (lockdown plan --keep): not failures
    fail_on: Tier = Tier.T3  # open holes usable by this tier or a weaker one fail the audit
    line: str | None = None  # "usb" or "uart": which REPL the audited line is
    timing: Timing = DEFAULT_TIMING
    timeout: float = 10.0  # per probe


@dataclass(frozen=True)
class Evidence:
    kind: str  # serial / device / host / manual / note
    probe: str  # what was run or sent (device code as written in probes.py/levers.py)
    result: str  # what came back, cleaned; or why it was not run

    def to_dict(self) -> dict[str, str]:
        return {"kind": self.kind, "probe": self.probe, "result": self.result}


@dataclass(frozen=True)
class Finding:
    interface: Interface
    status: Seen
    reason: str
    evidence: tuple[Evidence, ...]
    levers: tuple[Lever, ...]
    kept: bool = False

    @property
    def tier(self) -> Tier:
        return self.interface.tier

    def to_dict(self) -> dict[str, object]:
        return {
            "id": self.interface.id,
            "title": self.interface.title,
            "tier": self.tier.value,
            "status": self.status.value,
            "kept": self.kept,
            "reason": self.reason,
            "evidence": [e.to_dict() for e in self.evidence],
            "close": [lever_dict(lv) for lv in self.levers],
        }


def lever_dict(lv: Lever) -> dict[str, object]:
    return {
        "lever": lv.id,
        "kind": lv.kind.value,
        "action": lv.action,
        "stops": lv.stops.value,
        "reversible": lv.reversible.value,
        "irreversible": lv.reversible == Reversible.NO,
        "profiles": [p for p in PROFILES if p in lv.profiles],
        "options": [f"{o.name}={o.value}" for o in lv.options],
        "check": lv.check.how,
    }


@dataclass(frozen=True)
class AuditReport:
    port: str
    board: str | None
    board_source: str
    line: str
    console: ConsoleCheck
    facts: dict[str, object]
    modules: tuple[str, ...]
    guard: ds.GuardInfo
    findings: tuple[Finding, ...]
    options: AuditOptions
    power_on: tuple[str, ...] = ()  # guard lines printed at power-on (virtual board)
    notes: tuple[str, ...] = field(default=())

    @property
    def reachable(self) -> bool:
        return self.console.reachable

    @property
    def announced_profile(self) -> str | None:
        return ds.announced_profile(self.console.output) or ds.announced_profile(
            "\n".join(f"[mpseal] {ln}" for ln in self.power_on).encode()
        )

    def failing(self) -> list[Finding]:
        limit = _TIERS.index(self.options.fail_on)
        return [
            f
            for f in self.findings
            if f.status == Seen.OPEN and not f.kept and _TIERS.index(f.tier) <= limit
        ]

    @property
    def worst(self) -> Tier | None:
        tiers = [f.tier for f in self.failing()]
        return min(tiers, key=_TIERS.index) if tiers else None

    @property
    def exit_code(self) -> int:
        worst = self.worst
        if worst is not None:
            return EXIT_OPEN.get(worst, EXIT_OPEN[Tier.T3])
        return EXIT_CLEAN if self.reachable else EXIT_UNREACHABLE

    def verdict(self) -> str:
        worst = self.worst
        if worst is not None:
            n = len(self.failing())
            return (
                f"{n} interface(s) open; the weakest attacker who gets in: {worst.value} "
                f"({TIER_ATTACKER[worst]})"
            )
        if not self.reachable:
            seen = self.announced_profile
            why = f"; the guard announced the {seen} profile at boot" if seen else ""
            return f"{UNREACHABLE}{why}. Nothing open was seen from outside."
        return "nothing open that the audit can see (unknowns need a host or manual check)"

    def counts(self) -> dict[str, int]:
        out = {s.value: 0 for s in Seen}
        for f in self.findings:
            out[f.status.value] += 1
        return out

    def to_dict(self) -> dict[str, object]:
        return {
            "port": self.port,
            "board": self.board,
            "board_source": self.board_source,
            "line": self.line,
            "reachable": self.reachable,
            "console": {
                "prompt": self.console.prompt,
                "raw_repl": self.console.raw,
                "steps": [
                    {"sent": repr(s.sent), "seen": clean(repr(s.seen), 400), "seconds": s.seconds}
                    for s in self.console.steps
                ],
            },
            "power_on": list(self.power_on),
            "announced_profile": self.announced_profile,
            "device": {**self.facts, "fingerprint": ds.fingerprint(self.facts)}
            if self.facts
            else {},
            "modules": list(self.modules),
            "guard": self.guard.to_dict(),
            "findings": [f.to_dict() for f in self.findings],
            "summary": {
                **self.counts(),
                "failing": len(self.failing()),
                "worst_open_tier": self.worst.value if self.worst else None,
                "fail_on": self.options.fail_on.value,
                "keep": list(self.options.keep),
            },
            "verdict": self.verdict(),
            "notes": list(self.notes),
            "exit_code": self.exit_code,
        }


# --------------------------------------------------------------------------- running


def audit_port(
    port: str,
    options: AuditOptions = AuditOptions(),
    *,
    connect: Connect | None = None,
    power_on: Iterable[str] = (),
    board_hint: tuple[str, str] | None = None,
) -> AuditReport:
    """Audit the board on ``port`` (a serial device, a pty, ``socket://``).

    ``board_hint`` (board, why) is used when neither the options nor the device say.
    """
    _check_options(options)
    console = check_console(port, timing=options.timing)
    facts: dict[str, object] = {}
    modules: tuple[str, ...] = ()
    guard = ds.GuardInfo(False)
    notes: list[str] = []
    outcomes: dict[int, tuple[str, str]] = {}  # id(probe) -> (token, shown result)
    if console.reachable:
        transport = (connect or _serial)(port)
        probes = DeviceProbes(transport, timeout=options.timeout)
        try:
            facts, out = ds.read_facts(probes)
            if not out.ok:
                notes.append(f"firmware facts: {out.text()}")
            modules = ds.read_modules(probes)
            guard = ds.read_guard(probes)
            board, _ = _board(options, facts, guard, board_hint)
            for itf_ in _interfaces(board):
                for probe in itf_.audit:
                    if probe.kind == ProbeKind.DEVICE and id(probe) not in outcomes:
                        outcomes[id(probe)] = _run(probes, probe)
            if probes.gone:
                notes.append(f"the device stopped answering during the audit: {probes.gone}")
            probes.close()
        finally:
            transport.close()
    board, source = _board(options, facts, guard, board_hint)
    line = options.line or ("usb" if board in USB_LINE_BOARDS else "uart")
    findings = tuple(
        _finding(i, board, line, console, outcomes, guard, options, port)
        for i in _interfaces(board)
    )
    return AuditReport(
        port,
        board,
        source,
        line,
        console,
        facts,
        modules,
        guard,
        findings,
        options,
        tuple(power_on),
        tuple(notes),
    )


def audit_sim(
    board: VirtualBoard | PicoBoard, options: AuditOptions = AuditOptions()
) -> AuditReport:
    """Power the virtual board on (its boot sequence runs, as on a board) and audit it."""
    if isinstance(board, PicoBoard):
        board.pico.start()
        try:
            board.settle()
            lines = ds.console_guard_lines(board.pico.output)
            return audit_port(
                board.pico.path,
                options,
                power_on=lines,
                board_hint=("rp2", "the virtual Pico (stock RPI_PICO in rp2040js)"),
            )
        finally:
            board.pico.stop()
    link = SimLink(board.flash, board.info.heapsize, boot=True)
    try:
        lines = ds.console_guard_lines(link.power_on_output)
        return audit_port(
            link.path,
            options,
            power_on=lines,
            board_hint=("unix", "the virtual board (the unix port's VM)"),
        )
    finally:
        link.close()


def _serial(port: str) -> Transport:
    return SerialTransport(port)


def _check_options(options: AuditOptions) -> None:
    if options.board is not None:
        itf.check_board(options.board)
    if options.line not in (None, "usb", "uart"):
        raise UsageError("--line must be usb or uart")
    parse_keep(options.keep)


def _run(probes: DeviceProbes, probe: Probe) -> tuple[str, str]:
    out = probes.call(probe.helper, probe.code) if probe.helper else probes.value(probe.code)
    token = out.token
    if probe.secret:
        return token, _secret_summary(out.value) if out.ok else out.text()
    return token, out.text()


def _secret_summary(value: object) -> str:
    if not isinstance(value, str):
        return "not a string"
    problems = itf.webrepl_password_problems(value)
    verdict = "; ".join(problems) if problems else "as strong as WebREPL allows"
    return f"{len(value)} characters (not shown): {verdict}"


# --------------------------------------------------------------------------- the board


def _board(
    options: AuditOptions,
    facts: dict[str, object],
    guard: ds.GuardInfo,
    hint: tuple[str, str] | None = None,
) -> tuple[str | None, str]:
    if options.board:
        return options.board, "--board"
    found = board_from_facts(facts)
    if found:
        return found, "the firmware (sys.platform, os.uname)"
    if guard.board in BOARDS:
        return guard.board, "the guard's device.json"
    if hint is not None:
        return hint
    return None, "unknown: the interfaces every hardware port has"


def board_from_facts(facts: dict[str, object]) -> str | None:
    platform = facts.get("platform")
    uname = facts.get("uname")
    impl = facts.get("impl")
    machine = " ".join(str(x) for x in uname) if isinstance(uname, tuple) else ""
    if isinstance(impl, tuple) and len(impl) > 2 and isinstance(impl[2], str):
        machine += " " + impl[2]
    machine = machine.upper()
    if platform == "esp32":
        return "esp32s3" if "ESP32S3" in machine.replace("-", "") else "esp32"
    if platform == "rp2":
        return "rp2350" if "RP2350" in machine else "rp2"
    if platform in ("pyboard", "stm32"):
        return "openmv" if "OPENMV" in machine else "stm32"
    if platform in ("linux", "darwin"):
        return "unix"
    return None


def _interfaces(board: str | None) -> tuple[Interface, ...]:
    if board is not None:
        return itf.interfaces_for(board)
    return tuple(i for i in itf.INTERFACES if HW <= i.boards)


def _levers(i: Interface, board: str | None) -> tuple[Lever, ...]:
    if board is not None:
        return i.levers_for(board)
    return tuple(lv for lv in i.levers if lv.boards & HW)


# --------------------------------------------------------------------------- judging


def _finding(
    i: Interface,
    board: str | None,
    line: str,
    console: ConsoleCheck,
    outcomes: dict[int, tuple[str, str]],
    guard: ds.GuardInfo,
    options: AuditOptions,
    port: str,
) -> Finding:
    levers = _levers(i, board)
    kept = bool(i.kept_by & set(options.keep))
    if not i.audit:
        return Finding(i, Seen.UNKNOWN, _not_visible(i), _host_checks(levers, port), levers, kept)
    evidence: list[Evidence] = []
    verdicts: list[Seen] = []
    for probe in i.audit:
        if probe.kind == ProbeKind.SERIAL:
            token = _console_token(probe, console)
            evidence.append(Evidence("serial", probe.code, _console_result(probe, console)))
        elif not console.reachable:
            evidence.append(Evidence(probe.kind.value, probe.code, NO_REPL))
            continue
        else:
            token, shown = outcomes.get(id(probe), ("failed", "not run"))
            evidence.append(Evidence(probe.kind.value, probe.code, shown))
        verdicts.append(probe.judge(token))
    status = (
        Seen.OPEN
        if Seen.OPEN in verdicts
        else Seen.CLOSED
        if Seen.CLOSED in verdicts
        else Seen.UNKNOWN
    )
    if i.id in REPL_IDS and i.id != f"repl-{line}":
        # The REPL answered (or not) on the audited line; this is the other one.
        status = Seen.UNKNOWN
        return Finding(
            i,
            status,
            f"not the audited line (the audit reached the {line} REPL); audit that line too",
            tuple(evidence),
            levers,
            kept,
        )
    return Finding(i, status, _reason(i, status, console, guard), tuple(evidence), levers, kept)


def _console_token(probe: Probe, console: ConsoleCheck) -> str:
    if probe is AP_RAW_REPL:
        return console.raw
    return console.prompt


def _console_result(probe: Probe, console: ConsoleCheck) -> str:
    if probe is AP_RAW_REPL:
        return {
            "banner": "b'raw REPL; CTRL-B to exit'",
            "no banner": "no raw REPL banner",
            "none": "not tried: no prompt",
        }[console.raw]
    last = []
    for s in console.steps:
        if s.sent == b"\x01":
            break  # the raw REPL check: shown by its own probe
        if s.sent:
            last.append(s)
    shown = "; ".join(f"{s.sent!r} -> {clean(repr(s.seen[-60:]), 90)}" for s in last)
    return f"{console.prompt}: {shown}" if shown else console.prompt


def _reason(i: Interface, status: Seen, console: ConsoleCheck, guard: ds.GuardInfo) -> str:
    if i.id in (*REPL_IDS, "raw-repl", "ctrl-c", "app-exit"):
        if not console.reachable:
            return UNREACHABLE
        if i.id == "ctrl-c":
            if console.prompt == "interrupted":
                return "Ctrl-C stopped the running program and the prompt followed"
            return (
                "nothing was running to interrupt (the REPL was waiting); audit again while "
                "the app runs"
            )
        if i.id == "app-exit":
            return {
                "prompt": "the REPL was waiting: main.py had ended (or there is none)",
                "interrupted": "after Ctrl-C ended the program, the REPL followed",
                "raw": "a raw REPL was open: the line had been handed to the REPL",
            }.get(console.prompt, "")
        if i.id == "raw-repl" and status == Seen.OPEN:
            return "Ctrl-A at the prompt gave the raw REPL (mpremote, Thonny, rshell get in)"
        if status == Seen.OPEN:
            return "a Python prompt answered on this line"
        return ""
    if not console.reachable:
        return NO_REPL
    if status == Seen.UNKNOWN:
        return "the probe's result does not say (see the evidence)"
    return ""


def _not_visible(i: Interface) -> str:
    if i.tier in (Tier.T3, Tier.T4):
        return (
            f"not visible from MicroPython ({i.tier.value}: needs the chip's fuses, OTP or "
            "option bytes): run the host checks"
        )
    return "no probe can see it from the device: check it by hand"


def _host_checks(levers: tuple[Lever, ...], port: str) -> tuple[Evidence, ...]:
    out = []
    for lv in levers:
        probe = lv.check.probe
        if probe is None or probe.kind not in (ProbeKind.HOST, ProbeKind.MANUAL):
            continue
        code = probe.code.replace("{port}", port) if probe.kind == ProbeKind.HOST else probe.code
        out.append(
            Evidence(
                probe.kind.value,
                code,
                f"not run by the audit; {lv.id} took effect when: {probe.closed_when}",
            )
        )
    return tuple(out)


# --------------------------------------------------------------------------- short labels

REVERSIBLE_SHORT = {
    Reversible.YES: "reversible",
    Reversible.REFLASH: "reflash to undo",
    Reversible.ERASE: "chip erase to undo",
    Reversible.NO: "IRREVERSIBLE",
}


def lever_label(lv: Lever) -> str:
    """``runtime rt-kbd-intr (field/sealed; reversible)``: one lever in a table cell."""
    extra = []
    if lv.kind == Kind.RUNTIME and lv.profiles:
        extra.append("/".join(p for p in PROFILES if p in lv.profiles))
    extra.append(REVERSIBLE_SHORT[lv.reversible])
    return f"{lv.kind.value} {lv.id} ({'; '.join(extra)})"
