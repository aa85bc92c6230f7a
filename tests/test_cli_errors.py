"""The README's promise: an error is one line on stderr and exit 2/3/4 (issue 12).

Each test is a case that broke it: a traceback after "serving https://...", Click's
three-line usage text, a Python dict from `sim update`, `--json` failures with no JSON.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from conftest import MPSEAL, Run, run_mpseal


def one_line(res: Run, code: int) -> str:
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("mpseal: "), res.stderr
    assert "Traceback" not in res.stderr + res.stdout
    return lines[0]


def _self_signed(folder: Path, name: str) -> tuple[Path, Path]:
    cert, key = folder / f"{name}.pem", folder / f"{name}-key.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "2",
            "-subj",
            "/CN=127.0.0.1",
        ],
        check=True,
        capture_output=True,
    )
    return cert, key


@pytest.mark.parametrize("case", ["mismatched", "missing", "cert-as-key"])
def test_serve_with_a_bad_tls_key_is_one_line_before_serving(
    project: Path, tmp_path: Path, case: str
) -> None:
    cert, _ = _self_signed(tmp_path, "server")
    _, other_key = _self_signed(tmp_path, "other")
    key = {"mismatched": other_key, "missing": tmp_path / "nope.pem", "cert-as-key": cert}[case]
    res = run_mpseal(
        "serve", "--port", "1", "--tls-cert", cert, "--tls-key", key, cwd=project, timeout=30
    )
    line = one_line(res, 2)
    assert "serving" not in res.stderr and "--tls-key" in line


def test_usage_error_is_one_line(project: Path) -> None:
    line = one_line(run_mpseal("serve", "--port", "0", cwd=project), 2)
    assert "--port" in line and "mpseal serve --help" in line
    one_line(run_mpseal("no-such-command"), 2)


def test_json_failure_prints_json(project: Path) -> None:
    res = run_mpseal("verify", "missing.mpseal", "--json", cwd=project)
    one_line(res, 2)
    doc = json.loads(res.stdout)
    assert doc["exit_code"] == 2 and "missing.mpseal" in doc["error"]


def test_sim_update_of_an_unprovisioned_board_says_what_to_do(project: Path) -> None:
    assert run_mpseal("sim", "create", cwd=project).returncode == 0
    line = one_line(run_mpseal("sim", "update", cwd=project), 2)
    assert "mpseal provision --sim sim/default" in line and "{" not in line
    res = run_mpseal("sim", "update", "--json", cwd=project)
    assert json.loads(res.stdout)["exit_code"] == 2


def test_sim_boot_of_an_empty_board_is_one_line(project: Path) -> None:
    assert run_mpseal("sim", "create", cwd=project).returncode == 0
    line = one_line(run_mpseal("sim", "boot", cwd=project), 2)
    assert "mpseal sim install" in line


def test_sim_status_is_readable(built: Path) -> None:
    project = built.parent.parent
    assert run_mpseal("sim", "create", cwd=project).returncode == 0
    assert run_mpseal("sim", "install", built, cwd=project).returncode == 0
    res = run_mpseal("sim", "status", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "{" not in res.stdout and "'" not in res.stdout.split("boot log")[0]
    assert "trial:     slot a" in res.stdout
    assert "slot a:    hello 1.0.0 (counter 1)" in res.stdout
    assert "slot b:    empty" in res.stdout


def test_lockdown_plan_echoes_the_out_folder_given(tmp_path: Path) -> None:
    res = run_mpseal(
        "lockdown",
        "plan",
        "--board",
        "esp32",
        "--keep",
        "ota,uart-logs",
        "--out",
        "hardening/",
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr
    assert "--out hardening/" in res.stdout and "--out lockdown/" not in res.stdout
    assert "FROZEN_MANIFEST=$PWD/hardening/manifest.py" in res.stdout
    assert (tmp_path / "hardening" / "manifest.py").is_file()
    assert "--out hardening/" in (tmp_path / "hardening" / "plan.md").read_text()


def test_tables_are_not_cut_in_a_pipe(built: Path) -> None:
    """rich cut tables at 80 columns when stdout was a pipe (`release list | less`)."""
    project = built.parent.parent
    long_name = "a_rather_long_module_name_that_goes_past_eighty_columns_of_a_table.py"
    (project / "app" / long_name).write_text("X = 1\n")
    assert run_mpseal("build", cwd=project).returncode == 0
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    proc = subprocess.run(
        [str(MPSEAL), "inspect", str(built)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stderr
    assert long_name.replace(".py", ".mpy") in proc.stdout


def test_sim_boot_when_the_board_runs_out_of_ram_is_a_failure(built: Path) -> None:
    """The guard failing (MemoryError in a small heap) printed a traceback and exited 0."""
    project = built.parent.parent
    assert run_mpseal("sim", "create", cwd=project).returncode == 0
    assert run_mpseal("sim", "install", built, cwd=project).returncode == 0
    for heap in ("40K", "64K"):  # the guard cannot load / the guard fails while booting
        res = run_mpseal("sim", "boot", "--heapsize", heap, cwd=project)
        assert res.returncode in (3, 4), (res.stdout, res.stderr)
        lines = res.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mpseal: ") and "MemoryError" in lines[0]


def test_serve_refuses_an_artifact_redirect_devices_would_not_follow(project: Path) -> None:
    """Issue 10.10: the device client keeps one pinned connection per round and does not
    follow a redirect to a CDN, so `serve` says so at start instead of failing devices."""
    res = run_mpseal(
        "serve",
        "--port",
        "1",
        "--artifact-base-url",
        "https://cdn.example/fw/",
        cwd=project,
        timeout=30,
    )
    line = one_line(res, 2)
    assert "serving" not in res.stderr and "--artifact-base-url" in line
    assert "does not follow redirects" in line


def test_an_admin_command_with_a_ca_file_that_is_no_certificate_is_one_line(
    tmp_path: Path,
) -> None:
    bad = tmp_path / "server-ca.pem"
    bad.write_text("not a certificate\n")
    res = run_mpseal(
        "release",
        "list",
        "--server",
        "https://127.0.0.1:1",
        "--ca",
        bad,
        env={"MPSEAL_ADMIN_TOKEN": "t"},
        timeout=30,
    )
    line = one_line(res, 2)
    assert "--ca" in line and "server-ca.pem" in line and "CA certificate" in line
