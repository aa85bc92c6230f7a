"""`mpseal provision` and `mpseal registry` as a user runs them: three virtual boards at once."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import run_mpseal


def test_provision_three_virtual_boards_in_parallel_then_again(
    project: Path, tmp_path: Path
) -> None:
    assert run_mpseal("ca", "init", project / "ca").returncode == 0
    sims = []
    for i in range(3):
        sim = tmp_path / f"sim{i}"
        assert run_mpseal("sim", "create", "--sim", sim).returncode == 0
        sims += ["--sim", sim]
    secrets = tmp_path / "secrets.toml"
    secrets.write_text('wifi_ssid = "line-3"\nwifi_password = "pw"\n')
    res = run_mpseal(
        "provision", "-C", project, *sims, "--secrets", secrets, "-j", "3", "--json", timeout=300
    )
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["provisioned"] == 3 and out["failed"] == 0
    ids = {d["hardware_id"] for d in out["devices"]}
    assert len(ids) == 3
    # Again: all three are fully provisioned, nothing is re-issued.
    res = run_mpseal("provision", "-C", project, *sims, "--json", timeout=300)
    assert json.loads(res.stdout)["skipped"] == 3
    listed = json.loads(run_mpseal("registry", "list", "-C", project, "--json").stdout)
    assert {d["hardware_id"] for d in listed} == ids
    assert {d["state"] for d in listed} == {"active"}
    victim = sorted(ids)[0]
    res = run_mpseal("registry", "revoke", victim, "-C", project, "--reason", "stolen")
    assert res.returncode == 0 and "the server refuses it" in res.stdout
    listed = json.loads(
        run_mpseal("registry", "list", "-C", project, "--state", "revoked", "--json").stdout
    )
    assert [d["hardware_id"] for d in listed] == [victim]
    # A revoked device is never provisioned again; the others still skip; exit is non-zero.
    res = run_mpseal("provision", "-C", project, *sims, "--json", timeout=300)
    out = json.loads(res.stdout)
    assert res.returncode == 4 and out["failed"] == 1 and out["skipped"] == 2
    assert "is revoked" in next(d["error"] for d in out["devices"] if d["outcome"] == "failed")


def test_provision_bad_input_is_one_line(project: Path, tmp_path: Path) -> None:
    res = run_mpseal("provision", "-C", project, "--sim", tmp_path / "nosim")
    assert res.returncode == 2 and "mpseal ca init" in res.stderr  # no CA yet
    assert run_mpseal("ca", "init", project / "ca").returncode == 0
    bad = tmp_path / "s.toml"
    bad.write_text("wifi = [1, 2]\n")
    res = run_mpseal("provision", "-C", project, "--sim", tmp_path / "x", "--secrets", bad)
    assert res.returncode == 2 and "must be a table of names to strings" in res.stderr
    res = run_mpseal("provision", "-C", project, "--port", "/dev/nonexistent-port", "--json")
    assert res.returncode == 4
    assert json.loads(res.stdout)["devices"][0]["outcome"] == "failed"
