"""Cost of one ECDSA P-256 verify by the device's verifier (runtime/p256.py) in the real VM.

    .venv/bin/python benchmarks/p256_cost.py [--runs 31] [--json] [--no-callgrind]

(a) Wall clock: one MicroPython unix-port process imports p256 and times ``--runs``
    verifies (``gc.collect()`` before each, so every run starts from the same heap
    state); the median and minimum are printed for ``verify(pub, digest, sig)`` (key
    decode and table included), for ``PublicKey.verify`` with a key built once, for
    building that key, and for ``verify`` with p256 compiled by mpy-cross in a 32 KB heap.

(b) Instructions: ``valgrind --tool=callgrind`` counts every machine instruction of a VM
    process that imports p256 and verifies K times. The VM command is a small CPython
    wrapper around the VM's extension module, so the count includes CPython's start-up;
    the difference between K = 1 and K = 0 (same script, same inputs, PYTHONHASHSEED=0)
    is the cost of exactly one verify, and is stable from run to run. Totals are used, no
    --toggle-collect. Both differences are measured twice and printed, to show stability.

The key and signature are fixed (private key 0x1234..., RFC 6979 deterministic signing),
so results compare across runs and commits. Runs in well under 3 minutes.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from mpseal.device.vm import find_micropython, runtime_dir

PRIVATE_KEY = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF
MESSAGE = b"mpseal benchmark: release metadata to verify at boot"
TIMEOUT = 300

# Runs in the VM. argv: module dir, pub hex, digest hex, sig hex, mode, count.
#   mode "verify" / "key": verify `count` times (for callgrind), no output
#   mode "time": print TIME:<name>:<median us>:<min us> lines for `count` runs each
DRIVER = """
import sys, gc, time
sys.path.insert(0, sys.argv[1])
import p256
from binascii import unhexlify
pub, digest, sig = [unhexlify(a) for a in sys.argv[2:5]]
mode, count = sys.argv[5], int(sys.argv[6])
if mode == "verify":
    for _ in range(count):
        if not p256.verify(pub, digest, sig):
            raise SystemExit("verify failed")
elif mode == "key":
    key = p256.PublicKey(pub)
    for _ in range(count):
        if not key.verify(digest, sig):
            raise SystemExit("verify failed")
else:
    def timed(name, fn):
        ts = []
        for _ in range(count):
            gc.collect()
            t = time.ticks_us()
            ok = fn()
            ts.append(time.ticks_diff(time.ticks_us(), t))
            if ok is False:
                raise SystemExit("verify failed")
        ts.sort()
        print("TIME:%s:%d:%d" % (name, ts[len(ts) // 2], ts[0]))
    key = p256.PublicKey(pub)
    timed("verify", lambda: p256.verify(pub, digest, sig))
    timed("key_verify", lambda: key.verify(digest, sig))
    timed("key_build", lambda: p256.PublicKey(pub) and None)
"""


def vector() -> tuple[bytes, bytes, bytes]:
    key = ec.derive_private_key(PRIVATE_KEY, ec.SECP256R1())
    der = key.sign(MESSAGE, ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    r, s = decode_dss_signature(der)
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return pub, hashlib.sha256(MESSAGE).digest(), r.to_bytes(32, "big") + s.to_bytes(32, "big")


def vm_command() -> list[str]:
    """The VM as an exec-able command (the venv's ``micropython`` is a CPython script)."""
    vm = find_micropython()
    with open(vm, "rb") as f:
        is_script = f.read(2) == b"#!"
    return [sys.executable, str(vm)] if is_script else [str(vm)]


def driver_args(folder: Path, module_dir: Path, mode: str, count: int) -> list[str]:
    pub, digest, sig = vector()
    return [
        str(folder / "driver.py"),
        str(module_dir),
        pub.hex(),
        digest.hex(),
        sig.hex(),
        mode,
        str(count),
    ]


def wall_clock(
    folder: Path, module_dir: Path, runs: int, heapsize: str | None = None
) -> dict[str, dict[str, float]]:
    cmd = vm_command() + (["-X", f"heapsize={heapsize}"] if heapsize else [])
    res = subprocess.run(
        cmd + driver_args(folder, module_dir, "time", runs),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    if res.returncode != 0:
        raise SystemExit(f"VM run failed: {res.stderr.strip() or res.stdout.strip()}")
    out = {}
    for line in res.stdout.splitlines():
        if line.startswith("TIME:"):
            _, name, median, low = line.split(":")
            out[name] = {"median_ms": int(median) / 1000, "min_ms": int(low) / 1000}
    return out


def instructions(folder: Path, module_dir: Path, mode: str, count: int) -> int:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    res = subprocess.run(
        ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
        + vm_command()
        + driver_args(folder, module_dir, mode, count),
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
    )
    if res.returncode != 0:
        raise SystemExit(f"valgrind run failed: {res.stderr.strip()[-500:]}")
    m = re.search(r"(?:Collected|I\s+refs)\s*:\s*([\d,]+)", res.stderr)
    if not m:
        raise SystemExit("no instruction total in valgrind's output")
    return int(m.group(1).replace(",", ""))


def per_verify(folder: Path, module_dir: Path, mode: str) -> int:
    return instructions(folder, module_dir, mode, 1) - instructions(folder, module_dir, mode, 0)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=31, help="timed verifies per measurement")
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--no-callgrind", action="store_true", help="skip (b)")
    args = ap.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mpseal-p256-") as tmp:
        folder = Path(tmp)
        (folder / "driver.py").write_text(DRIVER)
        mpy_dir = folder / "mpy"
        mpy_dir.mkdir()
        mpy_cross = Path(find_micropython()).parent / "mpy-cross"
        subprocess.run(
            [str(mpy_cross), "-o", str(mpy_dir / "p256.mpy"), str(runtime_dir() / "p256.py")],
            check=True,
            timeout=60,
        )
        results["wall_clock"] = wall_clock(folder, runtime_dir(), args.runs)
        results["wall_clock_32k_heap_mpy"] = wall_clock(folder, mpy_dir, args.runs, "32K")
        if not args.no_callgrind:
            if not shutil.which("valgrind"):
                raise SystemExit("valgrind is not installed (apt-get install valgrind)")
            results["instructions_per_verify"] = [
                per_verify(folder, runtime_dir(), "verify") for _ in range(2)
            ]
            results["instructions_per_verify_cached_key"] = [
                per_verify(folder, runtime_dir(), "key") for _ in range(2)
            ]
    if args.json:
        print(json.dumps(results, indent=2))
        return
    wc = results["wall_clock"]
    w32 = results["wall_clock_32k_heap_mpy"]
    print(
        f"P-256 verify in the MicroPython VM ({find_micropython()}), "
        f"median of {args.runs} in one process:"
    )
    print(
        f"  verify(pub, digest, sig)        {wc['verify']['median_ms']:6.2f} ms "
        f"(min {wc['verify']['min_ms']:.2f})"
    )
    print(
        f"  PublicKey.verify, key built once {wc['key_verify']['median_ms']:5.2f} ms "
        f"(min {wc['key_verify']['min_ms']:.2f})"
    )
    print(f"  PublicKey(pub)                  {wc['key_build']['median_ms']:6.2f} ms")
    print(
        f"  verify, .mpy in a 32 KB heap    {w32['verify']['median_ms']:6.2f} ms "
        f"(min {w32['verify']['min_ms']:.2f})"
    )
    if "instructions_per_verify" in results:
        a, b = results["instructions_per_verify"]
        c, d = results["instructions_per_verify_cached_key"]
        print("VM instructions for one verify (callgrind, 1 verify minus 0 verifies):")
        print(f"  verify(pub, digest, sig)   run 1: {a:,}   run 2: {b:,}")
        print(f"  PublicKey.verify           run 1: {c:,}   run 2: {d:,}")


if __name__ == "__main__":
    main()
