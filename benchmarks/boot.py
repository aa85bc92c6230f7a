"""Boot time with the mpseal guard vs mounting the same image with no verification.

    .venv/bin/python benchmarks/boot.py [--rounds 15] [--json]

For 64 KB and 256 KB images on the virtual board (the real MicroPython VM,
littlefs flash image), in the same run, interleaved: the time from power-on to
the app's main() (a) through the boot guard (signature check + streamed image
hash + RAM re-hash + mount) and (b) with a bare mount of the same slot. Prints
medians and the ratio, then the VM instruction count of one signature verify
(valgrind callgrind, from benchmarks/p256_cost.py) when valgrind is installed.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
sys.path.insert(0, str(HERE.parent / "src"))

from mpseal.device.sim import VirtualBoard  # noqa: E402
from mpseal.device.vm import find_micropython, runtime_dir  # noqa: E402
from mpseal.packaging.package import build  # noqa: E402
from mpseal.packaging.project import Project  # noqa: E402

APP = """\
import time
from mpseal_guard import confirm
def main():
    print("T", time.ticks_us())
    confirm()
"""


def prepare(folder: Path, image_kb: int) -> VirtualBoard:
    subprocess.run(
        [str(BIN / "mpseal"), "init", str(folder / "proj"), "--board", "unix", "--name", "bench"],
        check=True,
        capture_output=True,
    )
    proj_dir = folder / "proj"
    cfg = proj_dir / "mpseal.toml"
    cfg.write_text(cfg.read_text().replace('profile = "dev"', 'profile = "field"'))
    (proj_dir / "app" / "main.py").write_text(APP)
    # Incompressible data brings the ROMFS image to the wanted size.
    (proj_dir / "app" / "data" / "blob.bin").write_bytes(os.urandom(image_kb * 1024 - 1200))
    project = Project.load(proj_dir)
    blob = build(project, project.release_signer()).path.read_bytes()
    board = VirtualBoard.create(folder / "board", flash_size=4 * 1024 * 1024)
    board.install(blob, project.trust_root(), profile="field")
    report = board.boot()
    assert report.ran(), report.output
    return board


def time_boot(board: VirtualBoard, mode: str) -> float:
    res = subprocess.run(
        [
            str(find_micropython()),
            str(HERE / "device" / "boot_timer.py"),
            str(runtime_dir()),
            str(board.flash),
            mode,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    t0 = re.search(r"^T0 (\d+)$", res.stdout, re.M)
    t1 = re.search(r"^T (\d+)$", res.stdout, re.M)
    if not (t0 and t1):
        raise SystemExit(f"boot.py: a {mode} boot did not reach the app:\n{res.stdout}{res.stderr}")
    return (int(t1.group(1)) - int(t0.group(1))) / 1000.0


def instruction_count() -> dict[str, object] | None:
    script = HERE / "p256_cost.py"
    if not script.is_file():
        return None
    res = subprocess.run(
        [sys.executable, str(script), "--json"], capture_output=True, text=True, timeout=600
    )
    if res.returncode != 0:
        return {"error": (res.stderr.strip().splitlines() or ["p256_cost.py failed"])[-1]}
    return json.loads(res.stdout)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--no-instructions", action="store_true")
    args = ap.parse_args()
    results: dict[str, object] = {}
    with tempfile.TemporaryDirectory(prefix="mpseal-bench-boot-") as tmp:
        for kb in (64, 256):
            board = prepare(Path(tmp) / f"{kb}k", kb)
            guard, bare = [], []
            for _ in range(args.rounds):  # interleaved: both see the same machine noise
                guard.append(time_boot(board, "guard"))
                bare.append(time_boot(board, "mount"))
            g, b = statistics.median(guard), statistics.median(bare)
            results[f"{kb}K"] = {
                "guard_ms": round(g, 2),
                "mount_only_ms": round(b, 2),
                "ratio": round(g / b, 2),
                "overhead_ms": round(g - b, 2),
            }
            if not args.json:
                print(
                    f"{kb:>4} KB image: guard {g:7.2f} ms, bare mount {b:7.2f} ms, "
                    f"ratio {g / b:5.2f}x, guard overhead {g - b:6.2f} ms "
                    f"(medians of {args.rounds})"
                )
    if not args.no_instructions:
        results["verify_instructions"] = instruction_count()
        cost = results["verify_instructions"]
        if not args.json and isinstance(cost, dict) and "instructions_per_verify" in cost:
            runs = cost["instructions_per_verify"]
            ms = cost["wall_clock"]["verify"]["median_ms"]
            print(
                f"one P-256 signature verify in the VM: {runs[0]:,} instructions "
                f"(callgrind, runs: {', '.join(f'{r:,}' for r in runs)}), {ms} ms median"
            )
        elif not args.json:
            print(f"one P-256 signature verify in the VM: {cost}")
    if args.json:
        print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
