"""The device runtime's test figure: how many tests exercise each module of src/mpseal/runtime/.

MicroPython's unix port is built without ``sys.settrace``, so line coverage of the device
code cannot be measured in the VM it runs in. What can be measured is which runtime modules
each test made the VM load:

- *loaded*: tests during which a virtual-board run (runtime/simboard.py) had the module in
  ``sys.modules`` (tests/conftest.py gives each test a file, simboard.py appends to it);
- *driven*: tests in files that start the VM on a runtime module directly (p256, meta,
  secrets drivers) and name the module: counted from the source, since those drivers
  are the tests' own scripts.

The REPL sessions of the serial transport (runtime/simrepl.py: audit, provisioning) are
not recorded. On a whole-suite run (``--whole``) every device module must have at least
one test of either kind.

Usage: python scripts/runtime_tests.py USAGE_FOLDER [--whole]
"""

from __future__ import annotations

import ast
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUNTIME = ROOT / "src" / "mpseal" / "runtime"
TESTS = ROOT / "tests"
# The virtual board itself (harness, flash, REPL, firmware shapes): not device code.
HARNESS = {"simboard", "simflash", "simrepl", "simfirmware"}
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


def loaded(folder: Path) -> Counter[str]:
    counts: Counter[str] = Counter()
    for record in folder.glob("*.txt"):
        names = set(record.read_text().split())
        counts.update(names)
    return counts


def driven(modules: set[str]) -> Counter[str]:
    counts: Counter[str] = Counter()
    for path in sorted(TESTS.glob("test_*.py")):
        text = path.read_text()
        if "find_micropython" not in text and "vm.run(" not in text:
            continue
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef) and node.name.startswith("test_"):
                body = ast.get_source_segment(text, node) or ""
                counts.update(m for m in modules if m in body or m in _file_targets(text))
    return counts


def _file_targets(text: str) -> set[str]:
    """Runtime modules a test file's module-level constants point at (``SOURCE = ...p256``)."""
    found = set()
    for node in ast.parse(text).body:
        if isinstance(node, ast.Assign):
            seg = ast.dump(node.value)
            found.update(m for m in device_modules() if f"'{m}.py'" in seg or f"'{m}'" in seg)
    return found


def main(argv: list[str]) -> int:
    if not argv or argv[0].startswith("-"):
        print(__doc__.strip().splitlines()[-1], file=sys.stderr)
        return 2
    folder = Path(argv[0])
    whole = "--whole" in argv[1:]
    modules = device_modules()
    got, direct = loaded(folder), driven(set(modules))
    print(f"{'runtime module':<20} {'lines':>6} {'loaded':>7} {'driven':>7}")
    untested = []
    for name, lines in modules.items():
        print(f"{name:<20} {lines:>6} {got[name]:>7} {direct[name]:>7}")
        if got[name] + direct[name] == 0 and name not in GENERATED:
            untested.append(name)
    tests = len(list(folder.glob("*.txt")))
    print(f"({tests} tests ran the virtual board; 'loaded'/'driven': see scripts/runtime_tests.py)")
    if whole and untested:
        print(f"runtime modules no test exercises: {', '.join(untested)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
