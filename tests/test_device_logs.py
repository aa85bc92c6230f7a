"""Device logs: the update client hands the guard's log and the app's lines to the server in
bounded batches with its report round (runtime/mpseal_logs.py), on the unix MicroPython VM
against the real server; the batching and rotation logic run on the VM on their own."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
from ota_support import World, guard_log, ota_world
from pico_exec import pico_with

from mpseal.device.vm import find_micropython, runtime_dir
from mpseal.fleet import devicelogs
from mpseal.fleet.registry import Registry


@pytest.fixture
def world(project: Path, tmp_path: Path):
    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as w:
        yield w


def _server_lines(world: World, hardware_id: str) -> list[tuple[str, str]]:
    reg = Registry.open(world.db_url)
    dev = reg.find_device(hardware_id)
    assert dev is not None
    return [(ln.source, ln.line) for ln in devicelogs.recent(reg, dev.id, 1000)]


def test_guard_log_reaches_the_server_with_the_report_round(world: World) -> None:
    board = world.board(world.release("1.0.0", 1))
    hw = board.hardware_id
    board.put(b"app started\nsensor 3 ok\n", "/mpseal/app-log.txt")
    world.publish(world.release("2.0.0", 2))
    assert world.ota(board) == {"result": "staged"}
    board.boot()
    assert world.ota(board) == {"result": "none"}
    got = _server_lines(world, hw)
    on_device = guard_log(board)
    guard_sent = [line for src, line in got if src == "guard"]
    assert guard_sent and all(any(line in d for d in on_device) for line in guard_sent)
    assert any("staged hello 2.0.0" in line for line in guard_sent)
    assert ("app", "app started") in got and ("app", "sensor 3 ok") in got
    # nothing is sent twice: a round with nothing new adds nothing
    before = len(_server_lines(world, hw))
    assert world.ota(board) == {"result": "none"}
    assert len(_server_lines(world, hw)) == before


VM_SCRIPT = r"""
import json, os
import mpseal_logs as L
L.SOURCES = (("guard", d + "/log.txt"), ("app", d + "/app-log.txt"))
L.CURSOR = d + "/logs-sent.json"
out = []
def drain():
    while True:
        lines, cur = L.batch()
        if not lines:
            return
        assert len(lines) <= L.LINES
        out.append(len(lines))
        for src, t in lines:
            print(json.dumps([src, t]))
        L.commit(cur)
for i in range(45):
    with open(d + "/log.txt", "a") as f:
        f.write("%d boot %d\n" % (i, i))
drain()
# the guard rotates: log.txt -> log.txt.1, new lines in a new log.txt
with open(d + "/log.txt", "a") as f:
    f.write("45 boot 45\n")
os.rename(d + "/log.txt", d + "/log.txt.1")
with open(d + "/log.txt", "w") as f:
    f.write("46 new file\n47 half")  # a line still being written is not sent
L.app("x" * 500)
drain()
print(json.dumps(out))
"""


def _check_batches(output: str) -> None:
    *lines, sizes = output.splitlines()
    sent = [json.loads(x) for x in lines]
    guard = [t for s, t in sent if s == "guard"]
    assert guard == [f"{i} boot {i}" for i in range(46)] + ["46 new file"]
    assert [t for s, t in sent if s == "app"] == ["x" * 200]
    assert max(json.loads(sizes)) == 20  # LINES per batch


def test_log_batches_are_bounded_and_follow_rotation_on_the_vm(tmp_path: Path) -> None:
    script = tmp_path / "logs_run.py"
    script.write_text(f"d = {str(tmp_path)!r}\n" + VM_SCRIPT)
    res = subprocess.run(
        [str(find_micropython()), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MICROPYPATH": str(runtime_dir())},
    )
    assert res.returncode == 0, res.stdout + res.stderr
    _check_batches(res.stdout)


def test_log_batches_on_the_virtual_pico_match_the_vm(tmp_path: Path) -> None:
    """The same module and script on stock RPI_PICO firmware (rp2040js, littlefs): the
    same lines in the same batches as on the unix VM (the Pico has no network here)."""
    script = tmp_path / "logs_run.py"
    script.write_text(f"d = {str(tmp_path)!r}\n" + VM_SCRIPT)
    vm = subprocess.run(
        [str(find_micropython()), str(script)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"MICROPYPATH": str(runtime_dir())},
    )
    assert vm.returncode == 0, vm.stderr
    module = (runtime_dir() / "mpseal_logs.py").read_bytes()
    with pico_with({"mpseal_logs.py": module}) as link:
        out = link.exec("import os\nos.mkdir('/lt')\nd = '/lt'\n" + VM_SCRIPT, timeout=120)
    out = out.replace("\r\n", "\n")
    _check_batches(out)
    assert out.strip() == vm.stdout.strip()
