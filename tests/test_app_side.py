"""The app side of updates, as the template app does it (docs/app.md), end to end.

Issue 12: without `app` in device.toml every check was a bare 400; without
report_boot() `release list` showed "in progress" for ever and auto-halt never fired;
the template app returned from main(), so in `field`/`sealed` it reboot-looped.
"""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_mpseal
from serve_support import project_server
from server_support import ADMIN_TOKEN


def _set(project: Path, old: str, new: str) -> None:
    path = project / "mpseal.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_template_app_never_returns_in_the_field_profile(project: Path) -> None:
    _set(project, 'profile = "dev"', 'profile = "field"')
    assert run_mpseal("build", cwd=project).returncode == 0
    assert run_mpseal("sim", "create", cwd=project).returncode == 0
    assert run_mpseal("sim", "install", "dist/hello-1.0.0.mpseal", cwd=project).returncode == 0
    res = run_mpseal("sim", "boot", "--run-for", "3", "--json", cwd=project)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    # One boot, still running when powered off: no return, no reset, no reboot loop.
    assert report["boots"] == 1 and report["outcome"] == "running", report
    assert not any("app returned" in ln for ln in report["guard"])
    assert any(ln.startswith("committed hello 1.0.0") for ln in report["guard"])


def test_update_confirmed_by_the_template_app_is_counted_by_the_server(project: Path) -> None:
    assert run_mpseal("build", cwd=project).returncode == 0
    assert run_mpseal("ca", "init", "ca", cwd=project).returncode == 0
    assert run_mpseal("sim", "create", "--sim", "sim/a", cwd=project).returncode == 0
    with project_server(project) as url:
        env = {"MPSEAL_SERVER": url, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        # device.toml names only the server: provision adds app, board and channel.
        (project / "device.toml").write_text(f'server = "{url}"\n')
        res = run_mpseal(
            "provision",
            "--sim",
            "sim/a",
            "--config",
            "device.toml",
            "--artifact",
            "dist/hello-1.0.0.mpseal",
            cwd=project,
        )
        assert res.returncode == 0, res.stderr
        assert run_mpseal("sim", "boot", "--sim", "sim/a", cwd=project).returncode == 0

        _set(project, 'version = "1.0.0"', 'version = "1.1.0"')
        _set(project, "security_counter = 1", "security_counter = 2")
        assert run_mpseal("build", cwd=project).returncode == 0
        for args in (
            ["release", "publish", "dist/hello-1.1.0.mpseal"],
            ["release", "promote", "1.1.0", "--percent", "100"],
        ):
            res = run_mpseal(*args, cwd=project, env=env)
            assert res.returncode == 0, res.stderr
        res = run_mpseal("sim", "update", "--sim", "sim/a", cwd=project)
        assert res.returncode == 0, res.stderr
        assert res.stdout.startswith("staged:")
        res = run_mpseal("sim", "boot", "--sim", "sim/a", cwd=project)
        assert res.returncode == 0, res.stderr
        assert "committed hello 1.1.0" in res.stdout
        listed = json.loads(run_mpseal("release", "list", "--json", cwd=project, env=env).stdout)
        counts = {r["version"]: r["counts"] for r in listed}
        assert counts["1.1.0"]["updated"] == 1 and counts["1.1.0"]["in_progress"] == 0, counts


def test_a_device_provisioned_for_a_channel_follows_that_channel(project: Path) -> None:
    assert run_mpseal("build", cwd=project).returncode == 0
    assert run_mpseal("ca", "init", "ca", cwd=project).returncode == 0
    assert run_mpseal("sim", "create", "--sim", "sim/b", cwd=project).returncode == 0
    with project_server(project) as url:
        env = {"MPSEAL_SERVER": url, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        (project / "device.toml").write_text(f'server = "{url}"\n')
        res = run_mpseal(
            "provision",
            "--sim",
            "sim/b",
            "--config",
            "device.toml",
            "--channel",
            "beta",
            cwd=project,
        )
        assert res.returncode == 0, res.stderr
        for args in (
            ["release", "publish", "dist/hello-1.0.0.mpseal", "--channel", "beta"],
            ["release", "promote", "1.0.0", "--percent", "100"],
        ):
            res = run_mpseal(*args, cwd=project, env=env)
            assert res.returncode == 0, res.stderr
        res = run_mpseal("sim", "update", "--sim", "sim/b", cwd=project)
        assert res.returncode == 0, res.stdout + res.stderr
        assert res.stdout.startswith("staged:")
