"""What the device pays, on stock MicroPython v1.28.0 firmware in two emulators.

    .venv/bin/python benchmarks/device.py [--no-pico] [--no-qemu] [--no-boot] [--json]

Columns, measured in this run:
  RP2040 cycles   the virtual Pico (rp2040js, stock RPI_PICO image): the emulator's
                  cycle counter (device/pico.py ``counters()``) around one raw-REPL exec
                  that runs the statement once, minus the same exec running it zero times
                  (same code, same length: the serial traffic cancels out). ms at 125 MHz.
  M3 instructions QEMU MPS2-AN385 (Cortex-M3, stock image) with ``-icount shift=0``: the
                  virtual clock advances 1 ns per instruction, so ``time.ticks_us()``
                  reads instructions / 1000 (exact to +-1000; tests/qemu_mps2.py).

Rows: one ECDSA P-256 verify (key decode and table included: ``p256.verify``) on Python
integers (p256 alone, the path of a port without the inline assembler) and with
p256_thumb (what the guard ships to ARM boards), and the ratio between them; key
generation (``p256_sign.generate``) and one signature (``p256_sign.sign``, including the
self-check verify it always does, and without it); the heap the verifier's modules hold
after import; the guard's boot (power-on to the app's ``main``) for a 64 KB and a 200 KB
app on the stock RPI_PICO and RPI_PICO_ROMFS images, at the first committed boot and at the
one after it (the usual boot: nothing written to the flash before main), and its peak
heap, measured by benchmarks/guard_boot.py (the guard's helper; see there how) on the
virtual Pico. The modules are compiled by the real mpy-cross for the RP2040
(armv6m) and the same .mpy bytes go to both emulators. The MPS2 has no os.urandom: key
generation there draws from a SHA-256 test source (one hash per call; on the Pico the
real os.urandom). The heap p256 needs is found on the M3 by bisection: the smallest free
heap (a ballast bytearray takes the rest) in which a fresh board imports p256 and
verifies once. A figure that cannot be measured prints as "n/a (why)", never a guess.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT / "benchmarks"))
from qemu_mps2 import Mps2  # noqa: E402

from mpseal.device.vm import runtime_dir  # noqa: E402
from mpseal.formats.boards import get_board  # noqa: E402
from mpseal.packaging.mpycross import CompileOptions, Compiler, Module  # noqa: E402

CPU_HZ = 125_000_000
PRIVATE_KEY = 0x1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF1234567890ABCDEF
MESSAGE = b"mpseal benchmark: release metadata to verify at boot"
MODULES = ("p256", "p256_fast", "p256_thumb", "p256_sign")
GOAL_VERIFY = 25_000_000  # cycles on the RP2040
GOAL_BOOT_MS = 300  # power-on to main, 64 KB app, 125 MHz
GOAL_HEAP = 32 * 1024  # peak heap during boot over the app's own, 200 KB app

# Sets up the statements' inputs on the device (after the modules are importable).
SETUP = """
import gc, p256, p256_sign
from binascii import unhexlify
pub = unhexlify({pub!r})
dig = unhexlify({dig!r})
sig = unhexlify({sig!r})
priv = unhexlify({priv!r})
assert p256.verify(pub, dig, sig)
"""
MPS2_ENTROPY = """
import hashlib
_c = [0]
def _test_urandom(n):
    _c[0] += 1
    return hashlib.sha256(str(_c[0]).encode()).digest()[:n]
p256_sign.urandom = _test_urandom
"""
STATEMENTS = {
    "verify": "p256.verify(pub, dig, sig)",
    "keygen": "p256_sign.generate()",
    "sign": "p256_sign.sign(priv, dig, pub=pub)",
    "sign_nocheck": "p256_sign.sign(priv, dig, check=False)",
}


def inputs() -> dict[str, str]:
    key = ec.derive_private_key(PRIVATE_KEY, ec.SECP256R1())
    r, s = decode_dss_signature(key.sign(MESSAGE, ec.ECDSA(hashes.SHA256())))
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    return {
        "pub": pub.hex(),
        "dig": hashlib.sha256(MESSAGE).hexdigest(),
        "sig": (r.to_bytes(32, "big") + s.to_bytes(32, "big")).hex(),
        "priv": PRIVATE_KEY.to_bytes(32, "big").hex(),
    }


def rp2_modules() -> dict[str, bytes]:
    board = get_board("rp2")
    compiler = Compiler(
        CompileOptions(board.mpy, board.arch, opt=2, source_lines=False), cache_dir=None
    )
    out = compiler.compile_all(
        [Module(f"{m}.py", (runtime_dir() / f"{m}.py").read_bytes()) for m in MODULES]
    )
    return {name[:-3] + ".mpy": data for name, data in out.items()}


HEAP = """
import gc
gc.collect()
_a = gc.mem_free()
import p256
gc.collect()
print("HEAP", _a - gc.mem_free(), p256.FAST)
"""


def _heap(out: str) -> tuple[int, bool]:
    line = next(ln for ln in out.splitlines() if ln.startswith("HEAP "))
    _, n, fast = line.split()
    return int(n), fast == "True"


# --- QEMU MPS2-AN385 -------------------------------------------------------------------


def qemu(files: dict[str, bytes], args: dict[str, str]) -> dict[str, object]:
    res: dict[str, object] = {}
    pure = {"p256.mpy": files["p256.mpy"], "p256_sign.mpy": files["p256_sign.mpy"]}
    for label, mods in (("pure", pure), ("fast", files)):
        with Mps2(timeout=600) as board:
            board.put(mods)
            heap, fast = _heap(board.exec(HEAP))
            assert fast == (label == "fast"), f"p256.FAST is {fast} with {sorted(mods)}"
            board.exec(SETUP.format(**args) + MPS2_ENTROPY + "_ramfs.f.clear()\n")
            res[f"heap_{label}"] = heap
            res[f"verify_{label}"] = board.instructions("", STATEMENTS["verify"])
            if label == "fast":
                for name in ("keygen", "sign", "sign_nocheck"):
                    res[name] = board.instructions("", STATEMENTS[name])
    verifier = {k: v for k, v in files.items() if k != "p256_sign.mpy"}
    for label, mods in (("pure", {"p256.mpy": files["p256.mpy"]}), ("fast", verifier)):
        try:
            res[f"room_{label}"] = qemu_room(mods, args)
        except Exception as e:  # noqa: BLE001 - printed as n/a with the reason
            res[f"room_{label}"] = f"n/a ({type(e).__name__}: {str(e)[-80:]})"
    return res


PROBE = """
import gc
gc.collect()
_b = []  # ballast in chunks (the free heap is not one block): `room` bytes stay free
for _n in (16384, 4096, 1024, 256, 64, 16):
    while gc.mem_free() - _n - 16 > {room}:
        try:
            _b.append(bytearray(_n))
        except MemoryError:
            break
try:
    import p256
    from binascii import unhexlify
    ok = p256.verify(unhexlify({pub!r}), unhexlify({dig!r}), unhexlify({sig!r}))
    print("FITS" if ok else "WRONG")
except MemoryError:
    print("MEMORY")
"""


def qemu_room(files: dict[str, bytes], args: dict[str, str]) -> int:
    """Smallest free heap (to 256 bytes) in which p256 imports and verifies once."""
    lo, hi = 1024, 96 * 1024  # MEMORY at lo (checked below), FITS at hi

    def fits(room: int) -> bool:
        with Mps2(timeout=600) as board:
            board.put(files)
            out = board.exec(PROBE.format(room=room, **args)).strip()
        assert out in ("FITS", "MEMORY"), out
        return out == "FITS"

    if fits(lo) or not fits(hi):
        raise RuntimeError("heap probe out of its range")
    while hi - lo > 256:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if fits(mid) else (mid, hi)
    return hi


# --- the virtual Pico ------------------------------------------------------------------


def pico(files: dict[str, bytes], args: dict[str, str]) -> dict[str, object]:
    from mpseal.device.pico import VirtualPico
    from mpseal.device.serialboard import SerialTransport

    res: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mpseal-bench-pico-") as tmp:
        board = VirtualPico.create(Path(tmp) / "board")
        board.start()
        try:
            board.wait_repl(60)
            with SerialTransport(board.path) as link:
                link.exec("import os\ntry:\n    os.mkdir('/lib')\nexcept OSError:\n    pass\n")
                for name, data in files.items():
                    link.write_file(f"/lib/{name}", data)

                def cycles(stmt: str) -> int:
                    # counter around "for _ in range(N): stmt" for N = 1 minus N = 0
                    got = []
                    for n in (0, 1):
                        code = f"gc.collect()\nfor _ in range({n}):\n    {stmt}\n"
                        c0 = board.counters().cycles
                        link.exec(code, timeout=600)
                        got.append(board.counters().cycles - c0)
                    return got[1] - got[0]

                # pure first: p256 alone (the assembly modules hidden, as on a board that
                # ships neither), in a fresh interpreter
                link.exec(
                    "import os\nfor m in ('p256_fast', 'p256_thumb'):\n"
                    "    os.rename('/lib/%s.mpy' % m, '/lib/%s.off' % m)"
                )
                link.soft_reset()
                heap, fast = _heap(link.exec(HEAP, timeout=60))
                assert not fast
                res["heap_pure"] = heap
                link.exec(SETUP.format(**args), timeout=600)
                res["verify_pure"] = cycles(STATEMENTS["verify"])
                link.exec(
                    "import os\nfor m in ('p256_fast', 'p256_thumb'):\n"
                    "    os.rename('/lib/%s.off' % m, '/lib/%s.mpy' % m)"
                )
                link.soft_reset()
                heap, fast = _heap(link.exec(HEAP, timeout=60))
                assert fast, "p256 did not take the assembly path on the RP2040"
                res["heap_fast"] = heap
                link.exec(SETUP.format(**args), timeout=600)
                for name in ("verify", "keygen", "sign", "sign_nocheck"):
                    res[name if name != "verify" else "verify_fast"] = cycles(STATEMENTS[name])
        finally:
            board.stop()
    return res


# --- the guard's boot (benchmarks/guard_boot.py, the guard's own helper) ---------------

BOOT_KB = (64, 200)


# The two stock images: RPI_PICO (no ROMFS: the guard loads from /lib, the app is served
# by verified-files) and RPI_PICO_ROMFS (the guard runs in place from the partition's head,
# the app from its mirror after it).
FIRMWARES = (("", False, "RPI_PICO"), ("romfs", True, "RPI_PICO_ROMFS"))


def boot() -> dict[str, object]:
    """guard_boot.measure per firmware and app size: power-on to main on the virtual Pico;
    the heap bisection for the 200 KB app only (it boots the board a dozen times)."""
    try:
        import guard_boot  # type: ignore[import-not-found]
    except ImportError:
        return {"_why": "n/a (benchmarks/guard_boot.py, the guard's boot helper, is not here)"}
    res: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mpseal-bench-boot-") as tmp:
        for key, romfs, _ in FIRMWARES:
            for kb in BOOT_KB:
                try:
                    res[f"boot{kb}{key}"] = guard_boot.measure(
                        kb, Path(tmp), heap=kb == 200, romfs=romfs
                    )
                except Exception as e:  # noqa: BLE001 - printed as n/a with the reason
                    res[f"boot{kb}{key}"] = {"error": f"{type(e).__name__}: {str(e)[-120:]}"}
    return res


def boot_lines(res: dict[str, object]) -> list[str]:
    lines = []
    for key, _, name in FIRMWARES:
        lines.append(f"on stock {name}:")
        lines.extend(_boot_lines(res, key))
    return lines


def _boot_lines(res: dict[str, object], key: str) -> list[str]:
    m3 = "n/a (MPS2: no writable filesystem for the guard's slots)"
    lines = []
    heap_goal = f"goal <= {GOAL_HEAP // 1024} KB over the app's own"
    for kb in BOOT_KB:
        r = res.get(f"boot{kb}{key}")
        label = f"guard boot to main, {kb} KB app"
        goal = f"<= {GOAL_BOOT_MS} ms at 125 MHz" if kb == 64 else ""
        if not isinstance(r, dict):
            lines.append(f"{label:<38} {res.get('_why', 'n/a')}   {goal}")
            continue
        if "error" in r:
            lines.append(
                f"{label:<38} n/a (guard_boot.measure raised {str(r['error'])[-100:]!r})  {goal}"
            )
            continue
        if "failed" in r:
            lines.append(f"{label:<38} n/a (the boot failed: {str(r['failed'])[-100:]!r})  {goal}")
            continue
        ms = int(r["main_us"]) / 1000
        verdict = (" : " + ("met" if ms <= GOAL_BOOT_MS else "NOT met")) if goal else ""
        lines.append(
            f"{label:<38} {_m(int(r['cycles'])):>12} {ms:7.1f} ms   {m3}   "
            f"{goal}{verdict}  (first committed boot: appends its log line; mount "
            f"{r.get('mount')}, guard in {r.get('guard_at')}; cycles read after the line "
            "appeared: an upper bound; ms from the board's timer)"
        )
        if "main_us_again" in r:
            ms = int(r["main_us_again"]) / 1000
            verdict = (" : " + ("met" if ms <= GOAL_BOOT_MS else "NOT met")) if goal else ""
            lines.append(
                f"{'  the boot after it':<38} {_m(int(r['cycles_again'])):>12} "
                f"{ms:7.1f} ms   {m3}   {goal}{verdict}  (the usual boot: same image, "
                "nothing written to the flash before main)"
            )
        if "peak" in r:
            peak = int(r["peak"])
            lines.append(
                f"{'peak heap during boot, ' + str(kb) + ' KB app':<38} "
                f"{peak / 1024:.0f} KB (held at main {int(r['held']) / 1024:.0f} KB, "
                f"transient {int(r['transient']) / 1024:.0f} KB; 1 KB steps)   "
                f"{heap_goal}: "
                + ("met" if peak <= GOAL_HEAP else "NOT met")
                + " (the app's own is its main module only, so the whole peak is "
                "counted)"
            )
    if not any(line.startswith("peak heap") for line in lines):
        r = res.get(f"boot{BOOT_KB[-1]}{key}")
        why = (
            f"n/a (no 200 KB boot: {str(r.get('failed') or r.get('error'))[-60:]!r})"
            if isinstance(r, dict)
            else str(res.get("_why", "n/a"))
        )
        lines.append(
            f"{'peak heap during boot, ' + str(BOOT_KB[-1]) + ' KB app':<38} {why}   {heap_goal}"
        )
    return lines


# --- output ----------------------------------------------------------------------------


def _m(n: object) -> str:
    return f"{n / 1e6:7.2f} M" if isinstance(n, int) else str(n)


def _ms(n: object) -> str:
    return f"{n / CPU_HZ * 1000:7.1f} ms" if isinstance(n, int) else ""


def report(pic: dict[str, object], qem: dict[str, object], boo: dict[str, object]) -> list[str]:
    def row(label: str, key: str, goal: str = "") -> str:
        c, i = pic.get(key, pic.get("_why", "n/a")), qem.get(key, qem.get("_why", "n/a"))
        return f"{label:<38} {_m(c):>12} {_ms(c):>10}   {_m(i):>12}   {goal}"

    lines = [
        f"{'':<38} {'RP2040 cycles':>12} {'@125 MHz':>10}   {'M3 instr.':>12}   goal",
        row("P-256 verify, Python integers", "verify_pure"),
        row(
            "P-256 verify, p256_thumb (shipped)",
            "verify_fast",
            f"<= {GOAL_VERIFY / 1e6:.0f} M cycles on RP2040: "
            + _verdict(pic.get("verify_fast"), GOAL_VERIFY),
        ),
    ]
    for src, name in ((pic, "RP2040"), (qem, "M3")):
        a, b = src.get("verify_pure"), src.get("verify_fast")
        if isinstance(a, int) and isinstance(b, int):
            lines.append(f"  {name}: p256_thumb is {a / b:.1f}x faster than Python integers")
    lines += [
        row("key generation (generate)", "keygen"),
        row("one signature (sign, self-checked)", "sign"),
        row("one signature (sign, check=False)", "sign_nocheck"),
    ]
    lines.append(
        f"{'heap held by p256 after import':<38} "
        f"{_bytes(pic, 'heap_pure')} pure, {_bytes(pic, 'heap_fast')} fast (RP2040); "
        f"{_bytes(qem, 'heap_pure')} pure, {_bytes(qem, 'heap_fast')} fast (M3)"
    )
    lines.append(
        f"{'heap to import p256 and verify once':<38} "
        f"{_bytes(qem, 'room_pure')} pure, {_bytes(qem, 'room_fast')} fast (M3: "
        "smallest free heap that works, found by bisection)"
    )
    lines += boot_lines(boo)
    return lines


def _bytes(src: dict[str, object], key: str) -> str:
    v = src.get(key)
    return f"{v / 1024:.1f} KB" if isinstance(v, int) else str(v or "n/a")


def _verdict(v: object, goal: int) -> str:
    return ("met" if v <= goal else "NOT met") if isinstance(v, int) else "not measured"


def _run(what: str, fn: Callable[[], dict[str, object]]) -> dict[str, object]:
    t = time.monotonic()
    try:
        res = fn()
    except Exception as e:  # noqa: BLE001 - a part that cannot run prints n/a with why
        return {"_why": f"n/a ({what}: {type(e).__name__}: {str(e)[-200:]})"}
    print(f"[{what}: {time.monotonic() - t:.0f} s wall]", file=sys.stderr)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--no-pico", action="store_true")
    ap.add_argument("--no-qemu", action="store_true")
    ap.add_argument("--no-boot", action="store_true")
    ap.add_argument("--json", action="store_true")
    opts = ap.parse_args()
    files = rp2_modules()
    args = inputs()
    pic = (
        {"_why": "n/a (--no-pico)"} if opts.no_pico else _run("rp2040js", lambda: pico(files, args))
    )
    qem = {"_why": "n/a (--no-qemu)"} if opts.no_qemu else _run("qemu", lambda: qemu(files, args))
    boo = {"_why": "n/a (--no-boot)"} if opts.no_boot or opts.no_pico else _run("guard boot", boot)
    if opts.json:
        print(json.dumps({"rp2040_cycles": pic, "m3_instructions": qem, "boot": boo}, indent=2))
    else:
        print("\n".join(report(pic, qem, boo)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
