"""The files of a lockdown plan: firmware build fragment, frozen boot files, the plan itself.

manifest.py               frozen manifest: the port's own modules + frozen/
frozen/boot.py, main.py   frozen boot files (they win over /boot.py and /main.py)
frozen/mpseal_*.py        the boot guard, copied from mpseal's runtime/
mpconfigboard_mpseal.h    build options, #included at the end of mpconfigboard.h
sdkconfig.mpseal          ESP-IDF options (esp32 boards)
plan.md, plan.json        the plan, for people and for scripts
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

from mpseal.formats.boards import BOARDS
from mpseal.fsutil import write_atomic
from mpseal.lockdown import interfaces as itf
from mpseal.lockdown.levers import FW_ESP_SECURE
from mpseal.lockdown.model import ESP
from mpseal.lockdown.plan import Plan, Step

# Frozen main.py: Ctrl-C off before anything else is imported, then the guard. The guard
# itself (src/mpseal/runtime/mpseal_guard.py) applies the rest of the profile.
FROZEN_MAIN = (
    b"import micropython\nmicropython.kbd_intr(-1)\nimport mpseal_guard\nmpseal_guard.boot()\n"
)
# Frozen boot.py: empty on purpose; it exists so that no /boot.py on the filesystem runs.
FROZEN_BOOT = b"# Frozen by mpseal lockdown plan: shadows any /boot.py on the filesystem.\n"

_PORT_MANIFEST = {
    "esp32": "$(PORT_DIR)/boards/manifest.py",
    "esp32s3": "$(PORT_DIR)/boards/manifest.py",
    "rp2": "$(PORT_DIR)/boards/manifest.py",
    "rp2350": "$(PORT_DIR)/boards/manifest.py",
    "stm32": "$(PORT_DIR)/boards/manifest.py",
}


def guard_modules(board: str | None = None) -> dict[str, bytes]:
    """The guard's MicroPython files shipped in mpseal.runtime (not the virtual-board ones).

    For a board whose native code is Thumb, also p256's assembly path (p256_fast,
    p256_thumb): frozen, the firmware's own mpy-cross compiles it for the port. Other
    ports cannot compile Thumb assembly; p256 uses Python integers there."""
    from mpseal.device.guard_install import THUMB_ARCHS, THUMB_ONLY
    from mpseal.formats.boards import get_board

    thumb = board is not None and get_board(board).arch in THUMB_ARCHS
    out = {}
    for entry in resources.files("mpseal.runtime").iterdir():
        name = entry.name
        if name.endswith(".py") and (
            name.startswith("mpseal_") or name == "p256.py" or (thumb and name[:-3] in THUMB_ONLY)
        ):
            out[name] = entry.read_bytes()
    return dict(sorted(out.items()))


def render_manifest(plan: Plan) -> str:
    lines = [
        (
            f"# Frozen manifest from `mpseal lockdown plan --board {plan.board}` "
            f"(profile {plan.profile}, keep: {', '.join(plan.keep) or 'nothing'})."
        ),
        "# Build with FROZEN_MANIFEST=<path to this file>; paths below are relative to it.",
    ]
    base = _PORT_MANIFEST.get(plan.board)
    if base:
        lines += [
            "# The port's own frozen modules (filesystem setup in _boot.py, drivers).",
            f'include("{base}")',
        ]
    else:
        lines += ["# OpenMV: add the freeze() line below to the board's own frozen manifest."]
    lines += [
        "# boot.py and main.py frozen: since MicroPython 1.18 they run instead of /boot.py",
        "# and /main.py on the filesystem, so no REPL session or USB drive can replace them.",
        "# The mpseal boot guard is frozen with them.",
        'freeze("frozen")',
        "# The app stays a signed ROMFS image (updatable by the guard). To freeze it too",
        '# (then an app update needs a firmware update): freeze("path/to/app")',
    ]
    return "\n".join(lines) + "\n"


def render_header(plan: Plan) -> str:
    lines = [
        (
            f"// Build options from `mpseal lockdown plan --board {plan.board}` "
            f"(keep: {', '.join(plan.keep) or 'nothing'})."
        ),
        '// #include "mpconfigboard_mpseal.h" at the END of the board\'s mpconfigboard.h.',
        f"// Each option closes an interface of docs/lockdown/{BOARDS[plan.board].port}.md.",
    ]
    if plan.board == "openmv":
        lines.append("// OpenMV: put these in the OpenMV board configuration (not verified).")
    last = None
    for lever, opt in itf.build_options(plan.board, plan.keep):
        if opt.file != "mpconfigboard.h":
            continue
        if lever is not last:
            lines += ["", f"// {lever.id}: {lever.action}"]
            last = lever
        if opt.note:
            lines.append(f"// {opt.name}: {opt.note}")
        if opt.overridable:
            lines.append(f"#undef {opt.name}")
            if opt.value:
                lines.append(f"#define {opt.name} {opt.value}")
        else:
            lines.append(f"// needs a port patch: #define {opt.name} {opt.value}")
    return "\n".join(lines) + "\n"


def render_sdkconfig(plan: Plan) -> str:
    lines = [
        f"# ESP-IDF options from `mpseal lockdown plan --board {plan.board}`.",
        (
            "# list(APPEND SDKCONFIG_DEFAULTS ${MICROPY_BOARD_DIR}/sdkconfig.mpseal) in the "
            "board's mpconfigboard.cmake."
        ),
    ]
    for _lever, opt in itf.build_options(plan.board, plan.keep):
        if opt.file != "sdkconfig":
            continue
        if opt.note:
            lines.append(f"# {opt.note}")
        lines.append(f"# {opt.name} is not set" if opt.value == "n" else f"{opt.name}={opt.value}")
    if FW_ESP_SECURE.caveat:
        lines.append(f"# Note: {FW_ESP_SECURE.caveat}")
    return "\n".join(lines) + "\n"


def render_text(plan: Plan) -> str:
    """The plan as plain text (Markdown), for plan.md and for the terminal."""
    out = [
        f"# Lockdown plan for {plan.board}",
        "",
        f"Profile: **{plan.profile}**. Kept: {', '.join(plan.keep) or 'nothing'}.",
        "",
    ]
    for n, step in enumerate(plan.steps, 1):
        out += _render_step(n, step)
    out += ["## Left open", ""]
    if not plan.left_open:
        out.append("Nothing this plan knows of, up to T3. T4 (a lab) is out of scope.")
    for o in plan.left_open:
        out.append(
            f"- **{o.interface.id}** ({o.interface.tier.value}, {o.interface.title}): {o.why}"
        )
    return "\n".join(out) + "\n"


def _render_step(n: int, step: Step) -> list[str]:
    mark = " — IRREVERSIBLE" if step.irreversible else ""
    stops = f" (stops {step.stops.value})" if step.stops else ""
    lines = [f"## {n}. [{step.phase.value}] {step.title}{mark}{stops}", ""]
    if step.detail:
        lines += [step.detail, ""]
    if step.commands:
        lines += ["```sh", *step.commands, "```", ""]
    if step.verify:
        lines += [f"Verify: {step.verify}", ""]
    return lines


def plan_files(plan: Plan) -> dict[str, bytes]:
    files: dict[str, bytes] = {
        "plan.md": render_text(plan).encode(),
        "plan.json": (json.dumps(plan.to_dict(), indent=2, sort_keys=True) + "\n").encode(),
    }
    if plan.board == "unix":
        return files
    files["manifest.py"] = render_manifest(plan).encode()
    files["mpconfigboard_mpseal.h"] = render_header(plan).encode()
    if plan.board in ESP:
        files["sdkconfig.mpseal"] = render_sdkconfig(plan).encode()
    files["frozen/boot.py"] = FROZEN_BOOT
    files["frozen/main.py"] = FROZEN_MAIN
    for name, data in guard_modules(plan.board).items():
        files[f"frozen/{name}"] = data
    return files


def write_plan(plan: Plan, out_dir: Path) -> list[Path]:
    """Write every file of the plan under ``out_dir`` (atomically, one by one)."""
    written = []
    for rel, data in plan_files(plan).items():
        path = Path(out_dir) / rel
        write_atomic(path, data)
        written.append(path)
    return written
