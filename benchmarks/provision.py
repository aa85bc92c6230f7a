#!/usr/bin/env python3
"""Provisioning benchmark (issue 4): identities issued per second, and serial bytes per byte.

Section "identities": a P-256 key, a certificate from the fleet's issuing CA
(mpseal.pki, ECDSA P-256/SHA-256) and the registry rows (device, certificate,
secret fingerprints, event) on the default SQLite database, recorded in batches
as a factory line does; wall clock for the whole of it. Goal: >= 1,000/s.

Section "wire": serial bytes per payload byte.

Writes the same files to real MicroPython over a serial line with mpseal's
transport and, in the same run, with ``mpremote fs cp``, and counts the bytes
sent from the host to the board (the direction that limits provisioning):

  virtual   the virtual board (unix port VM + littlefs flash) behind a pty; the
            pty relay counts every byte, whichever program talks (mpseal
            in-process, ``mpremote connect <pty> resume fs cp`` as a subprocess)
  microbit  MicroPython 1.9.2 for the micro:bit in QEMU (no raw-paste, no
            binascii, 16 KB RAM); mpseal's own counter; mpremote is tried too

Files: ``binary`` (random bytes) and ``text`` (the first bytes of mpremote's own
transport_serial.py: real source code nobody on this project wrote).

Columns: ``warm`` is one more file in an open session (the helper is loaded),
``cold`` a fresh connection (a fresh boot) that writes only this file, helper
included; for mpremote ``per file`` is its cold run minus its cold run for an
empty file. ``mpseal s`` is the time for the cold and the warm write together. Goal: binary <= 1.4
(mpremote's repr() costs ~2.9).

Sections are functions in SECTIONS.
Run: .venv/bin/python benchmarks/provision.py [--json] [--section identities|wire] [--no-microbit]
Exit status: 0 when measured (--strict: 1 if a goal is missed), 2 if the benchmark fails.
"""

from __future__ import annotations

import argparse
import json
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import mpremote

from mpseal.device.serialboard import SerialTransport
from mpseal.device.sim import VirtualBoard
from mpseal.device.simlink import SimLink
from mpseal.errors import MpsealError

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
GOAL_BINARY = 1.4
SIZES = {"virtual": 32 * 1024, "microbit": 4 * 1024}


class BenchError(Exception):
    pass


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def payloads(size: int) -> dict[str, bytes]:
    text = (Path(mpremote.__file__).parent / "transport_serial.py").read_bytes()
    if len(text) < size:
        raise BenchError(f"the text sample is only {len(text)} bytes")
    return {"binary": random.Random(2024).randbytes(size), "text": text[:size]}


# -- section "wire" -----------------------------------------------------------------


def mpremote_cp(path: str, local: Path, name: str) -> tuple[bool, str]:
    exe = Path(sys.executable).parent / "mpremote"
    try:
        res = subprocess.run(
            [str(exe), "connect", path, "resume", "fs", "cp", str(local), f":{name}"],
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        return False, "timed out"
    last = (res.stderr.strip() or res.stdout.strip()).splitlines()[-1:] or [""]
    return res.returncode == 0, last[0][:120]


def wire_virtual(work: Path) -> dict[str, Any]:
    board = VirtualBoard.create(work / "board", flash_size=1024 * 1024)
    files = payloads(SIZES["virtual"])
    out: dict[str, Any] = {}

    def session() -> tuple[SerialTransport, SimLink]:
        link = SimLink(board.flash)
        return SerialTransport(link.path, on_close=link.close), link

    for kind, data in files.items():
        row: dict[str, Any] = {"size": len(data)}
        t, link = session()  # cold: connect, load the helper, write
        start = time.monotonic()
        t.write_file(f"{kind}.cold", data)
        row["mpseal_cold"] = link.to_board / len(data)
        before = link.to_board  # warm: one more file on the same connection
        t.write_file(f"{kind}.warm", data)
        row["mpseal_warm"] = (link.to_board - before) / len(data)
        row["mpseal_seconds"] = time.monotonic() - start
        if t.read_file(f"{kind}.warm", len(data)) != data:
            raise BenchError(f"mpseal: the {kind} file read back differs")
        t.close()
        local = work / kind
        local.write_bytes(data)
        (work / "empty").write_bytes(b"")
        counts = {}
        for name, src in (("empty", work / "empty"), (kind, local)):
            link = SimLink(board.flash)
            ok, why = mpremote_cp(link.path, src, f"{name}.mpremote")
            counts[name] = link.to_board
            link.close()
            if not ok:
                raise BenchError(f"mpremote fs cp failed on the virtual board: {why}")
        row["mpremote_cold"] = counts[kind] / len(data)
        row["mpremote_per_file"] = (counts[kind] - counts["empty"]) / len(data)
        out[kind] = row
    return out


def wire_microbit() -> dict[str, Any]:
    from serial_boards import qemu_microbit  # the tests' QEMU harness

    files = payloads(SIZES["microbit"])
    out: dict[str, Any] = {}
    for kind, data in files.items():
        with qemu_microbit() as pts:  # a fresh boot: cold includes loading the helper
            row: dict[str, Any] = {"size": len(data)}
            t = SerialTransport(pts)
            start = time.monotonic()
            t.write_file(f"{kind}.c", data)
            row["mpseal_cold"] = t.wire.tx / len(data)
            before = t.wire.tx
            t.write_file(f"{kind}.w", data)
            row["mpseal_warm"] = (t.wire.tx - before) / len(data)
            row["mpseal_seconds"] = time.monotonic() - start
            if t.read_file(f"{kind}.w", len(data)) != data:
                raise BenchError(f"mpseal: the {kind} file read back from the micro:bit differs")
            t.close()
            out[kind] = row
    with qemu_microbit() as pts, tempfile.NamedTemporaryFile(prefix="mpseal-bench-") as f:
        f.write(files["binary"])
        f.flush()
        ok, why = mpremote_cp(pts, Path(f.name), "m.bin")
    out["mpremote"] = "works" if ok else f"fails: {why}"
    return out


def section_wire(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    log("wire: virtual board ...")
    result: dict[str, Any] = {"goal_binary": GOAL_BINARY, "virtual": wire_virtual(work)}
    if not args.no_microbit:
        log("wire: micro:bit in QEMU ...")
        result["microbit"] = wire_microbit()
    boards = [b for b in ("virtual", "microbit") if b in result]
    result["pass"] = all(result[b]["binary"]["mpseal_warm"] <= GOAL_BINARY for b in boards)
    return result


def report_wire(r: dict[str, Any]) -> str:
    lines = [
        "Wire bytes per payload byte, host -> board (lower is better)",
        f"{'board':9} {'file':7} {'bytes':>6}  {'mpseal warm':>11} {'cold':>6}"
        f"  {'mpremote per file':>17} {'cold':>6}  {'mpseal s':>8}",
    ]
    for board in ("virtual", "microbit"):
        if board not in r:
            continue
        for kind in ("binary", "text"):
            row = r[board][kind]
            mp = (
                f"{row['mpremote_per_file']:17.3f} {row['mpremote_cold']:6.3f}"
                if "mpremote_cold" in row
                else f"{'-':>17} {'-':>6}"
            )
            lines.append(
                f"{board:9} {kind:7} {row['size']:6d}  {row['mpseal_warm']:11.3f} "
                f"{row['mpseal_cold']:6.3f}  {mp}  {row['mpseal_seconds']:8.2f}"
            )
        if board == "microbit":
            lines.append(f"  mpremote fs cp on the micro:bit: {r[board]['mpremote']}")
    verdict = "met" if r["pass"] else "MISSED"
    lines.append(f"Goal: binary <= {r['goal_binary']} (mpseal warm): {verdict}")
    return "\n".join(lines)


GOAL_IDENTITIES = 1000.0


def section_identities(args: argparse.Namespace, work: Path) -> dict[str, Any]:
    import os

    from mpseal.fleet.provision import issue_identity
    from mpseal.fleet.registry import Identity, Registry
    from mpseal.pki.ca import CaOptions, init_ca, load_issuing_ca

    log("identities: issuing on SQLite ...")
    init_ca(work / "ca", CaOptions(name="bench fleet"))
    ca = load_issuing_ca(work / "ca")
    registry = Registry.open(f"sqlite:///{work / 'fleet.db'}")
    total, batch = args.identities, 500
    secrets = (("wifi_password", "ab" * 32), ("api_token", "cd" * 32))
    t0 = time.perf_counter()
    issue_s = 0.0
    for start in range(0, total, batch):
        t = time.perf_counter()
        issued = [
            issue_identity(ca, os.urandom(8).hex(), 5 * 365)
            for _ in range(min(batch, total - start))
        ]
        issue_s += time.perf_counter() - t
        registry.record_identities(
            [Identity(i.hardware_id, "esp32", i.record, secrets=secrets) for i in issued]
        )
    elapsed = time.perf_counter() - t0
    rate = total / elapsed
    return {
        "identities": total,
        "seconds": round(elapsed, 3),
        "per_second": round(rate, 1),
        "issue_share": round(issue_s / elapsed, 3),
        "goal": GOAL_IDENTITIES,
        "pass": rate >= GOAL_IDENTITIES,
    }


def report_identities(r: dict[str, Any]) -> str:
    verdict = "met" if r["pass"] else "MISSED"
    return (
        f"Identities (key + certificate + registry rows, SQLite): {r['identities']} in "
        f"{r['seconds']} s = {r['per_second']:.0f}/s "
        f"({r['issue_share']:.0%} of it key and certificate)\n"
        f"Goal: >= {r['goal']:.0f}/s: {verdict}"
    )


SECTIONS: dict[
    str,
    tuple[Callable[[argparse.Namespace, Path], dict[str, Any]], Callable[[dict[str, Any]], str]],
] = {
    "identities": (section_identities, report_identities),
    "wire": (section_wire, report_wire),
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--section",
        choices=sorted(SECTIONS),
        action="append",
        help="run only this section (repeatable; default: all)",
    )
    ap.add_argument("--no-microbit", action="store_true", help="skip the QEMU micro:bit")
    ap.add_argument("--identities", type=int, default=5000, help="how many to issue")
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    ap.add_argument("--strict", action="store_true", help="exit 1 when a goal is missed")
    args = ap.parse_args()
    results: dict[str, Any] = {}
    work = Path(tempfile.mkdtemp(prefix="mpseal-bench-provision-"))
    try:
        for name in args.section or list(SECTIONS):
            results[name] = SECTIONS[name][0](args, work)
    except (BenchError, MpsealError) as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        print("\n\n".join(SECTIONS[name][1](r) for name, r in results.items()))
    if args.strict and not all(r.get("pass", True) for r in results.values()):
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
