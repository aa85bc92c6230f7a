"""The docs, run as written (issue 12): a command that no longer works fails CI.

Every ```sh block of the step-by-step pages is executed in order, one page per fresh
folder, in ONE bash session on a real pseudo-terminal (so `cd` and `export` carry over
and mpseal sees a terminal, as a reader's shell does), with the virtual boards, a real
`mpseal serve` on 127.0.0.1 and the micro:bit in QEMU.

What the runner adds, and nothing else:
- after each command line, a check of its exit status (0, or the one a
  `<!-- docs-run: exit N (why) -->` comment before the block names for its last line);
- after a line that starts `mpseal serve ... &`, a wait until the server answers;
- port 8443 in the page is replaced by a free ephemeral port (other tests run at once);
- at the end, background jobs (the server, QEMU) are stopped.

A block preceded by `<!-- docs-run: skip (why) -->` is not run: that list is printed by
this test and kept short (a board on /dev/ttyUSB0, the scripts that run this test).
Reference pages (formats, threats, config) hold no shell blocks. docs/virtual-pico.md is
run by its own tests (tests/test_pico_*.py): the Pico emulator takes ~40 s per boot.
"""

from __future__ import annotations

import os
import re
import shlex
import socket
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import BIN
from pty_support import run_in_pty

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first

ROOT = Path(__file__).resolve().parent.parent
PAGES = [
    "README.md",
    "docs/provisioning.md",
    "docs/audit.md",
    "docs/certificates.md",
    "docs/updates.md",
]
DIRECTIVE = re.compile(r"<!--\s*docs-run:\s*(skip|exit\s+(\d+))\b(.*?)-->", re.S)
FENCE = re.compile(r"^```(\S*)\s*$")
DONE = "__DOCS_RUN_DONE__"
FAIL = "__DOCS_RUN_FAIL__"


@dataclass
class Block:
    page: str
    line: int  # 1-based line of the opening fence
    text: str
    skip: str | None = None  # the reason, when skipped
    exit: int = 0  # expected exit status of the last command


def blocks(page: str) -> list[Block]:
    lines = (ROOT / page).read_text().splitlines()
    out: list[Block] = []
    i = 0
    while i < len(lines):
        m = FENCE.match(lines[i])
        if not m:
            i += 1
            continue
        lang, start = m.group(1), i
        j = i + 1
        while j < len(lines) and not FENCE.match(lines[j]):
            j += 1
        if lang == "sh":
            before = "\n".join(lines[max(0, start - 3) : start])
            found = list(DIRECTIVE.finditer(before))
            d = found[-1] if found else None
            block = Block(page, start + 1, "\n".join(lines[start + 1 : j]))
            if d is not None and d.group(1) == "skip":
                block.skip = d.group(3).strip() or "no reason given"
            elif d is not None:
                block.exit = int(d.group(2))
            out.append(block)
        i = j + 1
    return out


def commands(text: str) -> list[str]:
    """Logical command lines: continuation lines joined, comments and blanks dropped."""
    out, cur = [], ""
    for raw in text.splitlines():
        cur += raw
        if cur.endswith("\\"):
            cur = cur[:-1] + " "
            continue
        if cur.strip() and not cur.strip().startswith("#"):
            out.append(cur)
        cur = ""
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def script_for(page: str, port: int) -> str:
    parts = [
        "set -u",
        "trap 'kill $(jobs -p) 2>/dev/null; wait' EXIT",
        f"export PATH={shlex.quote(str(BIN))}:$PATH",
    ]
    for b in blocks(page):
        if b.skip:
            continue
        cmds = commands(b.text.replace("8443", str(port)))
        for n, cmd in enumerate(cmds):
            where = shlex.quote(f"{b.page}:{b.line}: {cmd.strip()[:120]}")
            want = b.exit if n == len(cmds) - 1 else 0
            parts.append(cmd)
            parts.append(
                f'__rc=$?; if [ $__rc -ne {want} ]; then echo; echo "{FAIL} exit '
                f'$__rc (expected {want}) at "{where}; exit 1; fi'
            )
            if re.match(r"\s*mpseal serve\b.*&\s*(#.*)?$", cmd):
                parts.append(_wait_for_server(port, where))
    parts.append(f"echo {DONE}")
    return "\n".join(parts) + "\n"


def _wait_for_server(port: int, where: str) -> str:
    probe = (
        "import socket,sys\ntry:\n socket.create_connection(('127.0.0.1', "
        f"{port}), 0.5).close()\nexcept OSError:\n sys.exit(1)"
    )
    return (
        f"for __i in $(seq 150); do python3 -c {shlex.quote(probe)} && break; "
        f"sleep 0.2; done; python3 -c {shlex.quote(probe)} || "
        f'{{ echo "{FAIL} the server did not start at "{where}; exit 1; }}'
    )


def test_skipped_blocks_are_few_and_say_why() -> None:
    skipped = [b for p in PAGES for b in blocks(p) if b.skip]
    for b in skipped:
        print(f"skipped {b.page}:{b.line}: {b.skip}")
        assert len(b.skip) > 20, f"{b.page}:{b.line}: say why it cannot run"
    assert len(skipped) <= 8
    assert sum(1 for p in PAGES for b in blocks(p) if not b.skip) >= 6


@pytest.mark.parametrize("page", PAGES)
def test_page_runs_as_written(page: str, tmp_path: Path) -> None:
    folder = tmp_path / "reader"
    folder.mkdir()
    script = folder.parent / "docs-run.sh"
    script.write_text(script_for(page, free_port()))
    env = {
        "HOME": str(tmp_path),
        "PYTHONPATH": os.environ.get("PYTHONPATH", ""),
        "MPSEAL_PASSPHRASE": "",
    }
    env.pop("MPSEAL_PASSPHRASE")
    res = run_in_pty(["bash", str(script)], cwd=folder, env=env, timeout=240)
    text = res.text
    tail = "\n".join(text.splitlines()[-40:])
    assert FAIL not in text, tail
    assert "Traceback" not in text, tail
    assert res.returncode == 0 and DONE in text, tail
