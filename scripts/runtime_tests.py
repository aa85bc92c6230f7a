"""The device runtime's test figure: how many tests exercise each module of src/mpseal/runtime/.

MicroPython's unix port is built without ``sys.settrace``, so line coverage of the device
code cannot be measured in the VM it runs in. Recording in the VM which modules each test
loaded was tried (simboard.py appending ``sys.modules`` at exit): its few hundred bytes of
bytecode broke tests/test_build.py::test_runs_in_a_small_heap, so a gate run would no
longer test the heap a real run has. What is counted instead, from the source:

- *named*: test functions whose body names the module (``mpseal_guard``, ``p256``, ...);
- *driven*: of those, the ones in files that start the VM on runtime code directly.

Most guard, release, state and update-client code is reached through the virtual board
(``VirtualBoard``) and the OTA world, whose tests name the board, not the module: the
counts are a floor, informational, and do not fail the gates.

Usage: python scripts/runtime_tests.py
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "src" / "mpseal" / "runtime"
TESTS = ROOT / "tests"
# The virtual board itself (harness, flash, REPL, firmware shapes, SD card): not device code.
HARNESS = {"simboard", "simflash", "simrepl", "simfirmware", "simsdcard"}
GENERATED = {"p256_thumb"}  # Thumb-1 assembly: runs only on ARM boards (QEMU tests)


def device_modules() -> dict[str, int]:
    """Module name -> lines of code (not blank, not comment)."""
    out = {}
    for path in sorted(RUNTIME.glob("*.py")):
        if path.stem in HARNESS:
            continue
        lines = [ln.strip() for ln in path.read_text().splitlines()]
        out[path.stem] = sum(1 for ln in lines if ln and not ln.startswith("#"))
    return out


def named(modules: set[str]) -> tuple[Counter[str], Counter[str]]:
    """(tests naming each module, of which in files that run the VM on runtime code)."""
    anywhere: Counter[str] = Counter()
    direct: Counter[str] = Counter()
    for path in sorted(TESTS.glob("test_*.py")):
        text = path.read_text()
        runs_vm = "find_micropython" in text or "vm.run(" in text
        targets = _file_targets(text)
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                body = ast.get_source_segment(text, node) or ""
                hit = {m for m in modules if m in body or m in targets}
                anywhere.update(hit)
                if runs_vm:
                    direct.update(hit)
    return anywhere, direct


def _file_targets(text: str) -> set[str]:
    """Runtime modules a test file's module-level constants point at (``SOURCE = ...p256``)."""
    found = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign):
            seg = ast.dump(node.value)
            found.update(m for m in device_modules() if f"'{m}.py'" in seg or f"'{m}'" in seg)
    return found


def main(argv: list[str]) -> int:
    modules = device_modules()
    anywhere, direct = named(set(modules))
    print(f"{'runtime module':<20} {'lines':>6} {'named':>6} {'driven':>7}")
    for name, lines in modules.items():
        print(f"{name:<20} {lines:>6} {anywhere[name]:>6} {direct[name]:>7}")
    print("(test functions naming each module; a floor: scripts/runtime_tests.py says why)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
