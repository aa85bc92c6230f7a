"""The guard's boot on the virtual Pico (stock RPI_PICO v1.28.0 in rp2040js): time from
power-on to the app's ``main`` and the heap it needs, for an app image of a given size.

    .venv/bin/python benchmarks/guard_boot.py [--kb 64 200] [--no-heap] [--json]

``measure(app_kb, workdir)`` is what benchmarks/device.py calls. What it measures, on
the second boot of a committed release (the first is the trial that commits it):

  main_us       the RP2040 timer (time.ticks_us(), running since the chip's reset) read
                first thing in the app's main(): boot ROM, firmware start, littlefs mount,
                the guard (signature verify, image hash, log line, mount) and the import
                of the app's main module. Emulated time at 125 MHz, flash erase/program
                times included at the datasheet's typical figures (docs/virtual-pico.md).
  cycles        the emulator's cycle counter when the board printed that line (read after
                it appeared, so a little high: an upper bound).
  main_us_again the same for the boot after that (the usual boot of a product: same
                committed image, and the guard's log already ends with the "booting" line
                it would write, so nothing is written to the flash before main; the first
                committed boot appends that line, which on littlefs can cost a 4 KB
                erase, ~45 ms at the chip's typical figure).
  held          gc.mem_alloc() after gc.collect() in main(): what stays allocated (the
                guard's and the app's code and state).
  peak          the heap the boot needs at its worst: the board's free heap in boot.py
                (before main.py) minus the largest ballast (a bytearray boot.py holds)
                with which the boot still reaches main(), found by bisection (1 KB steps;
                the flash image is put back before every try).
  transient     peak - held: what the boot needs on top of what stays.

The app is main.py plus data files of random bytes up to ``app_kb`` KB of image (data
files are not imported, so the app's own heap is its main module only); the mount path
is the one the guard picks on that firmware (verified-files on stock RPI_PICO).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from mpseal.device.picoboard import PicoBoard  # noqa: E402
from mpseal.packaging.package import build  # noqa: E402
from mpseal.packaging.project import Project  # noqa: E402

CPU_HZ = 125_000_000
MARK = re.compile(rb"MPSEAL-BENCH main_us=(\d+) alloc=(\d+) free=(\d+) mount=(\S+) free0=(-?\d+)")
BENCH_MAIN = """\
import time
def main():
    t = time.ticks_us()
    import gc
    from mpseal_guard import confirm, status
    gc.collect()
    try:
        import __main__
        f0 = getattr(__main__, "_mpseal_free0", -1)
    except ImportError:
        f0 = -1
    print("MPSEAL-BENCH main_us=%d alloc=%d free=%d mount=%s free0=%d"
          % (t, gc.mem_alloc(), gc.mem_free(), status()["mount"], f0))
    confirm()
    print("MPSEAL-BENCH-DONE")
    while True:  # runs on, as a product's app does, until the host powers the board off
        time.sleep_ms(100)
"""
BALLAST = (
    "try:\n    _mpseal_ballast = bytearray({n})\n"
    "except MemoryError:\n    print('MemoryError: no room for the ballast')\n"
)
STEP = 1024  # the heap bisection's resolution (the peak is an upper bound by up to this)
FREE_AT_START = "import gc\ngc.collect()\n_mpseal_free0 = gc.mem_free()\n"


def _app(folder: Path, app_kb: int) -> bytes:
    res = subprocess.run(
        [
            str(Path(sys.executable).parent / "mpseal"),
            "init",
            str(folder),
            "--board",
            "rp2",
            "--name",
            "bench",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "PYTHONPATH": str(ROOT / "src")},
    )
    if res.returncode != 0:
        raise RuntimeError(res.stderr.strip())
    app = folder / "app"
    (app / "main.py").write_text(BENCH_MAIN)
    for extra in ("greet.py",):
        (app / extra).unlink(missing_ok=True)
    data = app / "data"
    data.mkdir(exist_ok=True)
    for f in data.iterdir():
        f.unlink()
    (data / "blob0.bin").write_bytes(os.urandom(64))
    proj = Project.load(folder)
    blob = build(proj, proj.release_signer()).path.read_bytes()
    # Fill with 16 KB data files up to the size asked for (the image's size, not the file's).
    i = 1
    while len(blob) < app_kb * 1024:
        need = app_kb * 1024 - len(blob)
        (data / f"blob{i}.bin").write_bytes(os.urandom(min(16 * 1024, max(need - 256, 64))))
        i += 1
        blob = build(proj, proj.release_signer()).path.read_bytes()
    return blob


def _boot_to_main(board: PicoBoard, timeout: float = 300.0) -> dict[str, int | str]:
    pico = board.pico
    pico.start()
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            m = MARK.search(pico.output)
            if m:
                cycles = pico.counters().cycles
                # Power stays on until confirm() is done: the trial boot must commit, or
                # the next boot would be a second trial, not the committed boot measured.
                while b"MPSEAL-BENCH-DONE" not in pico.output and time.monotonic() < deadline:
                    time.sleep(0.05)
                return {
                    "main_us": int(m[1]),
                    "held": int(m[2]),
                    "free_at_main": int(m[3]),
                    "mount": m[4].decode(),
                    "cycles": cycles,
                    "free0": int(m[5]),
                }
            if b"locked idle" in pico.output or b"MemoryError" in pico.output:
                return {"failed": pico.output.decode(errors="replace")[-300:]}
            time.sleep(0.05)
        return {"failed": "timeout"}
    finally:
        pico.stop()


def _set_boot_py(board: PicoBoard, text: str) -> None:
    with board.session() as link:
        link.exec("_mpseal_ballast = None\nimport gc\ngc.collect()\n")  # the REPL's globals
        link.write_file("/boot.py", text.encode())
        # A boot that fails for want of heap counts as a failed boot of the committed
        # image; the bisection must not run into the guard's max_fails limit.
        link.write_file(
            "/mpseal/device.json",
            json.dumps(
                {
                    "board": "rp2",
                    "profile": "dev",
                    "max_tries": 3,
                    "max_image": 4194304,
                    "max_fails": 1000,
                }
            ).encode(),
        )


def measure(
    app_kb: int, workdir: Path, heap: bool = True, romfs: bool = False
) -> dict[str, object]:
    """Boot figures of the guard on the virtual Pico for an app image of ``app_kb`` KB
    (``romfs``: on the RPI_PICO_ROMFS image, where the guard runs from the partition)."""
    folder = workdir / f"{'romfs' if romfs else 'plain'}{app_kb}"
    blob = _app(folder / "app", app_kb)
    proj = Project.load(folder / "app")
    board = PicoBoard.create(folder / "pico", romfs=romfs)
    installed = board.install(blob, proj.trust_root(), profile="dev")
    first = _boot_to_main(board)  # the trial boot: verify, run, confirm (commit)
    if "failed" in first:
        return {"app_bytes": len(blob), "failed": first["failed"]}
    out: dict[str, object] = {
        "app_bytes": len(blob),
        "guard_at": installed.get("guard_at", "lib"),
        **_boot_to_main(board),
    }
    # The next boot is the usual one: same committed image, and the log already ends with
    # its "booting" line, so the guard writes nothing to the flash before main.
    again = _boot_to_main(board)
    if "failed" not in again:
        out["main_us_again"] = again["main_us"]
        out["cycles_again"] = again["cycles"]
    if heap and "failed" not in out:
        # Every trial starts from this flash image: a boot that ran out of heap may leave
        # the board locked (that is the guard's job), so the host puts the flash back.
        _set_boot_py(board, "")
        clean = board.pico.flash.read_bytes()

        def boots_with(text: str) -> dict[str, int | str]:
            board.pico.flash.write_bytes(clean)
            _set_boot_py(board, text)
            return _boot_to_main(board)

        got = boots_with(FREE_AT_START)
        free0 = int(got.get("free0", -1))
        if free0 < 0:
            raise RuntimeError(f"the board did not report its free heap: {got}")
        lo, hi = 0, free0  # lo: a ballast that boots; hi: one that does not
        while hi - lo > STEP:
            mid = (lo + hi) // 2 // 256 * 256
            ok = "failed" not in boots_with(BALLAST.format(n=mid))
            lo, hi = (mid, hi) if ok else (lo, mid)
        board.pico.flash.write_bytes(clean)
        out["free_at_start"] = free0
        out["peak"] = free0 - lo
        out["transient"] = out["peak"] - int(out["held"])  # type: ignore[call-overload]
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kb", type=int, nargs="+", default=[64, 200])
    ap.add_argument("--no-heap", action="store_true")
    ap.add_argument("--romfs", action="store_true", help="the RPI_PICO_ROMFS image")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    results = {}
    with tempfile.TemporaryDirectory(prefix="mpseal-bench-") as tmp:
        for kb in args.kb:
            results[kb] = measure(kb, Path(tmp), heap=not args.no_heap, romfs=args.romfs)
    if args.json:
        print(json.dumps(results, indent=2))
        return
    for kb, r in results.items():
        if "failed" in r:
            print(f"{kb} KB app: failed: {r['failed']}")
            continue
        line = (
            f"{kb} KB app ({r['app_bytes']} B, mount {r['mount']}, guard in {r['guard_at']}): "
            "power-on to main "
            f"{int(r['main_us']) / 1000:.1f} ms emulated at 125 MHz "
            f"({int(r['cycles']) / 1e6:.1f} M cycles, upper bound) at the first committed "
            "boot"
        )
        if "main_us_again" in r:
            line += (
                f", {int(r['main_us_again']) / 1000:.1f} ms "
                f"({int(r['cycles_again']) / 1e6:.1f} M cycles) at the next"
            )
        if "peak" in r:
            line += (
                f"; heap: peak {int(r['peak']) // 1024} KB, held at main "
                f"{int(r['held']) // 1024} KB, transient {int(r['transient']) // 1024} KB"
            )
        print(line)


if __name__ == "__main__":
    main()
