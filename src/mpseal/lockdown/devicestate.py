"""What a connected device can tell about itself: firmware facts, modules, the guard's files.

Shared by the audit and the warranty check. Every reply is untrusted: read with a
limit, parsed on the host (``ast.literal_eval``, ``json`` with size caps), and a
file that is missing, too big or malformed becomes ``None`` plus a note, never an
exception. On a firmware that lies (no Secure Boot, T3) all of this can be forged;
the warranty docs say so.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass, field

from mpseal.lockdown.probing import DeviceProbes, Outcome, clean

GUARD_DIR = "/mpseal"
DEVICE_CONFIG = GUARD_DIR + "/device.json"
LOG = GUARD_DIR + "/log.txt"
LOG_OLD = LOG + ".1"  # the guard rotates its log at 4 KB
STATE_FILES = (GUARD_DIR + "/state.a", GUARD_DIR + "/state.b")
CONFIG_MAX = 2048
STATE_MAX = 1024  # mpseal_state._MAX_STATE
LOG_TAIL = 4096
LOG_LINES = 60
READ_LINE = 96  # bytes per line printed by mpa_read
MODULES_MAX = 400
_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_./]{0,63}\Z")
_STATE_FIELDS = ("seq", "committed", "trial", "tries", "counter", "unlocks", "fails")
_ANNOUNCED = re.compile(r"\[mpseal\] lockdown (dev|field|sealed):")
_GUARD_LINE = re.compile(r"\[mpseal\] (.*)")


def read_file(probes: DeviceProbes, path: str, n: int, off: int = 0) -> tuple[bytes | None, str]:
    """Up to ``n`` bytes of ``path`` from ``off`` (from the end if negative); (None, why) if
    it cannot be read."""
    out = probes.lines(
        "mpa_read",
        f"mpa_read({path!r}, {off}, {n})",
        max_lines=n // READ_LINE + 2,
        timeout=10.0 + n / 2000,
    )
    if not out.ok:
        return None, out.text()
    assert isinstance(out.value, list)
    if out.value == [None]:
        return None, "missing"
    chunks = [v for v in out.value if isinstance(v, bytes)]
    if len(chunks) != len(out.value):
        return None, "the device's reply is not file data"
    data = b"".join(chunks)
    if len(data) > n:
        return None, f"the device sent {len(data)} bytes, over the {n} asked for"
    return data, ""


def read_facts(probes: DeviceProbes) -> tuple[dict[str, object], Outcome]:
    """Firmware, port, sys.path, files, free heap and unique id; the first failure, if any."""
    probes.prepare()
    facts: dict[str, object] = {}
    failed = Outcome({})
    for helper in ("mpa_sys", "mpa_os"):
        out = probes.call(helper, f"{helper}()")
        if out.ok and isinstance(out.value, dict):
            facts.update({str(k): v for k, v in out.value.items()})
        elif failed.ok:
            failed = out if not out.ok else Outcome(failed="the reply is not a dict")
    probes.set_heap(facts.get("mem_free"))
    out = probes.call("mpa_id", "mpa_id()")
    if out.ok and isinstance(out.value, str):
        facts["id"] = clean(out.value, 64)
    return facts, failed


def read_modules(probes: DeviceProbes) -> tuple[str, ...]:
    """Module names from ``help('modules')``: built-in and frozen (an empty tuple if none)."""
    out = probes.output("help('modules')")
    if not out.ok or not isinstance(out.value, str):
        return ()
    names = []
    for line in out.value.splitlines():
        if line.startswith("Plus "):
            break
        names += [w for w in line.split() if _MODULE.match(w)]
    return tuple(sorted(set(names))[:MODULES_MAX])


def facts_summary(facts: dict[str, object]) -> dict[str, object]:
    """The facts that describe the firmware (what ``fingerprint`` hashes)."""
    keys = ("platform", "version", "impl", "uname")
    return {k: facts[k] for k in keys if k in facts}


def fingerprint(facts: dict[str, object]) -> str:
    """SHA-256 over what the firmware says about itself (a modified firmware can say the same)."""
    text = json.dumps(facts_summary(facts), sort_keys=True, default=repr)
    return hashlib.sha256(text.encode()).hexdigest()


@dataclass(frozen=True)
class GuardInfo:
    """The mpseal boot guard's files as read from the device."""

    installed: bool
    config: dict[str, object] | None = None
    state: dict[str, object] | None = None
    damaged: int = 0  # state copies present but not intact
    log: tuple[str, ...] = ()
    files: tuple[tuple[str, int], ...] = ()
    notes: tuple[str, ...] = field(default=())

    @property
    def profile(self) -> str | None:
        p = (self.config or {}).get("profile")
        return p if isinstance(p, str) else None

    @property
    def board(self) -> str | None:
        b = (self.config or {}).get("board")
        return b if isinstance(b, str) else None

    def to_dict(self) -> dict[str, object]:
        return {
            "installed": self.installed,
            "config": self.config,
            "profile": self.profile,
            "state": self.state,
            "damaged_state_copies": self.damaged,
            "log": list(self.log),
            "files": [list(f) for f in self.files],
            "notes": list(self.notes),
        }


def parse_config(data: bytes) -> dict[str, object] | None:
    if len(data) > CONFIG_MAX:
        return None
    try:
        doc = json.loads(data.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    return {
        clean(str(k), 40): (v if isinstance(v, (int, bool)) or v is None else clean(str(v), 80))
        for k, v in list(doc.items())[:16]
    }


def parse_state(data: bytes) -> dict[str, object] | None:
    """One state copy, ``JSON\\nSHA256HEX``, as the guard writes it; None if not intact."""
    if len(data) > STATE_MAX:
        return None
    body, sep, digest = data.partition(b"\n")
    if not sep or hashlib.sha256(body).hexdigest().encode() != digest.strip():
        return None
    try:
        doc = json.loads(body.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return None
    if not isinstance(doc, dict):
        return None
    doc = {"fails": 0, **doc}
    if set(doc) != set(_STATE_FIELDS):
        return None
    for key in ("seq", "tries", "counter", "unlocks", "fails"):
        if type(doc[key]) is not int or doc[key] < 0:
            return None
    for key in ("committed", "trial"):
        if doc[key] not in (None, "a", "b"):
            return None
    return {k: doc[k] for k in _STATE_FIELDS}


def log_lines(data: bytes) -> list[str]:
    """Lines of the guard's log (``SEQ message``), cleaned; a first partial line dropped."""
    text = data.decode("utf-8", "replace")
    lines = text.splitlines()
    return [clean(ln, 200) for ln in lines if ln.strip()]


def _seq(state: dict[str, object]) -> int:
    seq = state["seq"]
    return seq if isinstance(seq, int) else -1


def read_guard(probes: DeviceProbes) -> GuardInfo:
    listing = probes.call("mpa_ls", f"mpa_ls({GUARD_DIR!r})")
    if not listing.ok:
        return GuardInfo(False, notes=(f"listing {GUARD_DIR}: {listing.text()}",))
    if not isinstance(listing.value, list):
        return GuardInfo(False)
    files = tuple(
        (clean(str(e[0]), 60), e[1])
        for e in listing.value
        if isinstance(e, tuple) and len(e) == 2 and isinstance(e[1], int)
    )
    notes = []
    config = None
    raw, why = read_file(probes, DEVICE_CONFIG, CONFIG_MAX + 1)
    if raw is not None:
        config = parse_config(raw)
        if config is None:
            notes.append(f"{DEVICE_CONFIG} is not a JSON object of at most {CONFIG_MAX} bytes")
    else:
        notes.append(f"{DEVICE_CONFIG}: {why}")
    best = None
    damaged = 0
    for path in STATE_FILES:
        raw, why = read_file(probes, path, STATE_MAX + 1)
        if raw is None:
            continue
        st = parse_state(raw)
        if st is None:
            damaged += 1
        elif best is None or _seq(st) > _seq(best):
            best = st
    log: list[str] = []
    for path in (LOG_OLD, LOG):
        raw, why = read_file(probes, path, LOG_TAIL, -LOG_TAIL)
        if raw is not None:
            lines = log_lines(raw)
            if len(raw) == LOG_TAIL and lines:
                lines = lines[1:]  # the tail starts mid-line
            log += lines
    return GuardInfo(True, config, best, damaged, tuple(log[-LOG_LINES:]), files, tuple(notes))


def console_guard_lines(output: bytes) -> list[str]:
    """The guard's lines (``[mpseal] ...``) in what the console showed."""
    text = output.decode("utf-8", "replace")
    found = []
    for line in text.splitlines():
        m = _GUARD_LINE.search(line)
        if m:
            found.append(clean(m.group(1), 200))
    return found[-LOG_LINES:]


def announced_profile(output: bytes) -> str | None:
    """The lockdown profile the guard announced on the console, if it did."""
    found = _ANNOUNCED.findall(output.decode("utf-8", "replace"))
    return found[-1] if found else None
