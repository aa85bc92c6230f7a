"""The new-user path in a real terminal: what the README promises, run in a pseudo-terminal.

Issue 12: demo, tests and CI never gave the CLI a TTY, so `mpseal build` crashed in every
interactive terminal and nothing caught it. These tests run the console script on the
slave side of a pty, where rich draws progress bars and hides the cursor.
"""

from __future__ import annotations

from pathlib import Path

from conftest import run_mpseal
from pty_support import mpseal_in_pty


def test_build_in_a_terminal_draws_progress_and_exits_0(project: Path) -> None:
    res = mpseal_in_pty("build", cwd=project)
    assert res.returncode == 0, res.text
    assert "Built " in res.text and "Traceback" not in res.text
    assert "lost sys.stderr" not in res.text
    assert not res.cursor_left_hidden
    assert (project / "dist" / "hello-1.0.0.mpseal").is_file()


def test_build_error_in_a_terminal_is_one_line_and_restores_the_cursor(project: Path) -> None:
    (project / "app" / "broken.py").write_text("def f(:\n")
    res = mpseal_in_pty("build", cwd=project)
    assert res.returncode == 3, res.text
    lines = [ln for ln in res.text.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("mpseal: "), res.text
    assert not res.cursor_left_hidden


def test_relative_sim_path_provisions(project: Path) -> None:
    """README: `mpseal provision ... --sim sim/a` from the project folder (was ENOENT)."""
    assert run_mpseal("ca", "init", "ca", cwd=project).returncode == 0
    assert run_mpseal("sim", "create", "--sim", "sim/a", cwd=project).returncode == 0
    res = run_mpseal("provision", "--sim", "sim/a", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "1 provisioned" in res.stderr + res.stdout


def test_relative_sim_path_warranty_verdict_is_official(built: Path) -> None:
    """`inspect-device --sim sim/default` on an official board said 'unknown', exit 5."""
    project = built.parent.parent
    assert run_mpseal("sim", "create", cwd=project).returncode == 0
    assert run_mpseal("sim", "install", built, cwd=project).returncode == 0
    res = run_mpseal("inspect-device", "--sim", "sim/default", cwd=project)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "official:" in res.stdout


def test_provision_writes_app_board_channel_and_rerun_applies_a_new_config(project: Path) -> None:
    """device.toml had to carry app = ... or every update check was a bare 400; and a
    second provision with another --config was skipped without a word."""
    import json

    from mpseal.device.sim import VirtualBoard

    assert run_mpseal("ca", "init", "ca", cwd=project).returncode == 0
    assert run_mpseal("sim", "create", "--sim", "sim/a", cwd=project).returncode == 0
    (project / "device.toml").write_text('server = "https://127.0.0.1:8443"\n')
    res = run_mpseal("provision", "--sim", "sim/a", "--config", "device.toml", cwd=project)
    assert res.returncode == 0, res.stderr
    board = VirtualBoard(project / "sim" / "a")
    cfg = json.loads(board.get("/mpseal/config.json"))
    assert (cfg["app"], cfg["board"], cfg["channel"]) == ("hello", "unix", "stable")
    assert cfg["server"] == "https://127.0.0.1:8443"
    first_cert = board.get("/mpseal/id/device.der")

    res = run_mpseal("provision", "--sim", "sim/a", "--config", "device.toml", cwd=project)
    assert "0 provisioned, 1 already done" in res.stderr + res.stdout

    (project / "device.toml").write_text('server = "https://10.0.0.2:8443"\n')
    res = run_mpseal(
        "provision", "--sim", "sim/a", "--config", "device.toml", "--channel", "beta", cwd=project
    )
    assert res.returncode == 0, res.stderr
    assert "changed channel,config" in res.stderr and "1 provisioned" in res.stderr + res.stdout
    cfg = json.loads(board.get("/mpseal/config.json"))
    assert (cfg["server"], cfg["channel"]) == ("https://10.0.0.2:8443", "beta")
    assert board.get("/mpseal/id/device.der") != first_cert  # redone cleanly, new identity
