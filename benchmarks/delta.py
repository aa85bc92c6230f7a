#!/usr/bin/env python3
"""Delta-size benchmark (issue 15): how many bytes a device downloads for an update.

The code bases are real third-party MicroPython code: the pinned packages of
benchmarks/build.py (one ``pip download``, cached in benchmarks/.cache/), built with
``mpseal build`` (real mpy-cross, signed artifacts) in two sizes:

  small   microdot alone (a web framework: 17 modules)
  medium  microdot and a dozen Adafruit libraries (networking, display, LEDs): chosen
          when the file list was in the manifest and its 16 KiB limit capped a release
          at ~84 modules (the list is now the image's file index: any size fits)

For each, two updates, each measured as the delta the server would publish
(formats/delta.py, the exact bytes a device downloads) against:

  one constant   a numeric constant changed in one module -> % of the full artifact
                 (goal <= 2 %); also shown against the full artifact deflated
  one module     a module that was not in the old release added (nothing in the old
                 image to copy from: the worst case of a module's code changing) ->
                 ratio to that module's .mpy deflated at level 9 (goal <= 1.2x)

Every delta is applied back on the host and must rebuild the new artifact exactly.
Run:  .venv/bin/python benchmarks/delta.py [--json]      (exit 2 if it cannot measure)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import zlib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import build as bb  # the build benchmark's pinned code base

GOAL_CONSTANT = 0.02
GOAL_MODULE = 1.2
MEDIUM = (
    "httpserver",
    "minimqtt",
    "requests",
    "connectionmanager",
    "display_text",
    "led_animation",
    "logging",
    "datetime",
    "ticks",
    "register",
    "busdevice",
    "ntp",
)
CONSTANT = re.compile(rb"^[ \t]*([A-Za-z_][A-Za-z0-9_.]*) = (\d+)$", re.M)


def build_release(project: Path, version: str) -> bytes:
    from mpseal.packaging.package import build
    from mpseal.packaging.project import Project

    cfg = project / "mpseal.toml"
    cfg.write_text(re.sub(r'version = "[^"]*"', f'version = "{version}"', cfg.read_text(), count=1))
    proj = Project.load(project)
    return build(proj, proj.release_signer()).path.read_bytes()


def mpy_of(project: Path, module: Path) -> bytes:
    """The module as compiled into the image (the build cache keeps each .mpy)."""
    from mpseal.formats import artifact, romfs

    blob = (sorted((project / "dist").glob("*.mpseal"))[-1]).read_bytes()
    art = artifact.decode(blob)
    rel = module.relative_to(project / "app").with_suffix(".mpy").as_posix()
    for f in romfs.read(art.image):
        if f.path == rel:
            return f.data
    raise bb.BenchError(f"{rel} is not in the image")


def code_base(name: str, wheels: list[Path], work: Path) -> Path:
    project = work / name
    bb.run([str(bb.tool("mpseal")), "init", str(project), "--board", "unix"], "mpseal init")
    source = project / "app"
    (source / "greet.py").unlink(missing_ok=True)
    (source / "main.py").write_text(bb.ENTRY)
    cfg = project / "mpseal.toml"
    cfg.write_text(
        cfg.read_text().replace('board = "unix"', 'board = "unix"\nfilesystem_size = "16M"', 1)
    )
    bb.extract(wheels, source)
    bb.keep_compilable(source, work / f"check-{name}")
    return project


def measure(name: str, project: Path) -> dict:
    from mpseal.formats import delta

    source = project / "app"
    modules = sorted(p for p in source.rglob("*.py") if p.name != "main.py")
    # The module added in the second update: held out of the first two releases.
    added = max(modules, key=lambda p: p.stat().st_size if p.stat().st_size < 20000 else 0)
    held = added.read_bytes()
    added.unlink()
    bb.log(f"{name}: building 3 releases of {len(modules) + 1} modules")
    v1 = build_release(project, "1.0.0")
    # One constant: the first `name = <int>` line found (sorted module order), + 1.
    for mod in modules:
        if mod == added:
            continue
        text = mod.read_bytes()
        m = CONSTANT.search(text)
        if m:
            mod.write_bytes(
                text[: m.start(2)] + str(int(m.group(2)) + 1).encode() + text[m.end(2) :]
            )
            break
    else:
        raise bb.BenchError(f"{name}: no module-level integer constant to change")
    v2 = build_release(project, "1.0.1")
    bb.log(f"{name}: making the deltas ({len(v2)}-byte artifacts)")
    d_const = delta.make(v1, v2)
    assert delta.apply(v1, d_const) == v2
    added.write_bytes(held)
    v3 = build_release(project, "1.0.2")
    d_mod = delta.make(v2, v3)
    assert delta.apply(v2, d_mod) == v3
    mpy = mpy_of(project, added)
    mod_z = len(zlib.compress(mpy, 9))
    return {
        "code_base": name,
        "modules": len(modules) + 1,
        "artifact": len(v2),
        "artifact_deflated": len(zlib.compress(v2, 9)),
        "constant_module": str(mod.relative_to(source)),
        "constant": m.group(1).decode(),
        "constant_delta": len(d_const),
        "constant_pct": 100 * len(d_const) / len(v2),
        "module": str(added.relative_to(source)),
        "module_mpy": len(mpy),
        "module_deflated": mod_z,
        "module_delta": len(d_mod),
        "module_ratio": len(d_mod) / mod_z,
    }


def report(rows: list[dict]) -> str:
    out = []
    for r in rows:
        ok_c = r["constant_pct"] <= GOAL_CONSTANT * 100
        ok_m = r["module_ratio"] <= GOAL_MODULE
        out += [
            f"{r['code_base']}: {r['modules']} modules, artifact {r['artifact']} bytes "
            f"({r['artifact_deflated']} deflated)",
            f"  one constant ({r['constant']} in {r['constant_module']}): delta "
            f"{r['constant_delta']} bytes = {r['constant_pct']:.2f} % of the full artifact, "
            f"{100 * r['constant_delta'] / r['artifact_deflated']:.2f} % of it deflated "
            f"(goal <= {GOAL_CONSTANT * 100:.0f} %: {'met' if ok_c else 'MISSED'})",
            f"  one module ({r['module']} added, {r['module_mpy']} bytes .mpy, "
            f"{r['module_deflated']} deflated): delta {r['module_delta']} bytes = "
            f"{r['module_ratio']:.2f}x the module deflated "
            f"(goal <= {GOAL_MODULE}x: {'met' if ok_m else 'MISSED'})",
        ]
    return "\n".join(out)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--json", action="store_true")
    ap.add_argument("--small", action="store_true", help="only the small code base")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mpseal-delta-bench-"))
    try:
        wheels, _ = bb.download(bb.CACHE / "dists")
        small = [w for w in wheels if w.name.startswith("microdot-")]
        rows = [measure("small (microdot)", code_base("small", small, work))]
        if not args.small:
            medium = [
                w
                for w in wheels
                if w.name.startswith("microdot-")
                or any(w.name.startswith(f"adafruit_circuitpython_{n}-") for n in MEDIUM)
            ]
            rows.append(
                measure(f"medium ({len(medium)} packages)", code_base("medium", medium, work))
            )
    except bb.BenchError as e:
        print(f"benchmark: {e}", file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(rows, indent=2) if args.json else report(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
