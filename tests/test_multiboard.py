"""Silent mistakes made loud, and one product on several boards (issue 12).

A misspelled key in mpseal.toml built counter 0; files neither .py nor data were
dropped without a word; a key at 0644 was used; each board's build overwrote the last
in dist/; a 5 MB image built for esp32 and failed on the device as OSError 28.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import run_mpseal

from mpseal.errors import ConfigError
from mpseal.formats import artifact, config


def _edit(project: Path, old: str, new: str) -> None:
    path = project / "mpseal.toml"
    text = path.read_text()
    assert old in text
    path.write_text(text.replace(old, new, 1))


def test_misspelled_key_is_an_error_with_a_suggestion(project: Path) -> None:
    _edit(project, "security_counter = 1", "securty_counter = 5")
    res = run_mpseal("build", cwd=project)
    assert res.returncode == 2
    assert res.stderr.strip() == (
        "mpseal: config error: mpseal.toml: unknown key "
        "'securty_counter' in [app]; did you mean "
        "'security_counter'?"
    )
    assert not (project / "dist").exists()


def test_unknown_table_and_wrong_types_are_named_in_plain_words() -> None:
    base = '[app]\nname = "a"\nversion = "1.0.0"\n[build]\nboard = "esp32"\n'
    with pytest.raises(ConfigError, match=r"unknown table \[buld\]; did you mean 'build'"):
        config.parse(base + "[buld]\n")
    with pytest.raises(ConfigError, match="security_counter must be a whole number, not text"):
        config.parse(base.replace('version = "1.0.0"', 'version = "1.0.0"\nsecurity_counter = "5"'))
    with pytest.raises(ConfigError, match="source_lines must be true or false"):
        config.parse(base + "source_lines = 1\n")
    with pytest.raises(ConfigError, match="filesystem_size must be a size"):
        config.parse(base + 'filesystem_size = "lots"\n')
    cfg = config.parse(base + 'filesystem_size = { esp32 = "4M" }\n')
    assert cfg.filesystem_size == {"esp32": 4 << 20}


def test_files_that_go_into_no_build_are_named(project: Path) -> None:
    (project / "app" / "notes.txt").write_text("not data")
    (project / "app" / "prebuilt.mpy").write_bytes(b"M\x06")
    res = run_mpseal("build", cwd=project)
    assert res.returncode == 0, res.stderr
    assert "2 file(s) in app/ are not packaged" in res.stderr
    assert "notes.txt" in res.stderr and "prebuilt.mpy" in res.stderr
    res = run_mpseal("build", "--json", "--board", "unix", cwd=project)
    assert json.loads(res.stdout)["builds"][0]["dropped"] == ["notes.txt", "prebuilt.mpy"]


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604])
def test_a_key_file_others_can_read_is_refused(project: Path, mode: int) -> None:
    (project / "keys" / "release.pem").chmod(mode)
    res = run_mpseal("build", cwd=project)
    assert res.returncode == 2
    assert f"readable by others (mode {mode:04o})" in res.stderr
    assert "chmod 600" in res.stderr and not (project / "dist").exists()


def test_several_boards_at_once_each_its_own_artifact(project: Path) -> None:
    _edit(project, 'board = "unix"', 'board = ["unix", "esp32", "rp2"]')
    res = run_mpseal("build", cwd=project)
    assert res.returncode == 0, res.stderr
    dist = project / "dist"
    names = sorted(p.name for p in dist.glob("*.mpseal"))
    assert names == [
        "hello-1.0.0-esp32.mpseal",
        "hello-1.0.0-rp2.mpseal",
        "hello-1.0.0-unix.mpseal",
    ]
    for name, board, arch in [
        ("esp32", "esp32", "xtensawin"),
        ("rp2", "rp2", "armv6m"),
        ("unix", "unix", "x64"),
    ]:
        m = artifact.decode((dist / f"hello-1.0.0-{name}.mpseal").read_bytes()).manifest
        assert (m.board, m.arch) == (board, arch)
    # A second run rebuilds nothing: each board has its own up-to-date record.
    res = run_mpseal("build", cwd=project)
    assert res.stdout.count("Up to date") == 3, res.stdout
    # --board picks some of them; the verifier accepts each for its own board only.
    res = run_mpseal("build", "--board", "rp2", "--json", cwd=project)
    assert [b["board"] for b in json.loads(res.stdout)["builds"]] == ["rp2"]
    res = run_mpseal("verify", dist / "hello-1.0.0-rp2.mpseal", "--board", "esp32", cwd=project)
    assert res.returncode == 3


def test_one_board_project_keeps_its_plain_artifact_name(project: Path) -> None:
    res = run_mpseal("build", "--board", "unix,esp32", cwd=project)
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (project / "dist").glob("*.mpseal")) == [
        "hello-1.0.0-esp32.mpseal",
        "hello-1.0.0.mpseal",
    ]


def test_an_image_too_big_for_the_board_is_refused_at_build_time(project: Path) -> None:
    """5 MB built for esp32 and failed on the device as OSError 28."""
    _edit(project, 'board = "unix"', 'board = "esp32"')
    (project / "app" / "data" / "big.bin").write_bytes(bytes(range(256)) * 2400)  # 600 KiB
    res = run_mpseal("build", cwd=project)
    assert res.returncode == 2
    assert re.search(
        r"esp32 build \(\d+ KiB\) does not fit: an update needs 4 copies", res.stderr
    ), res.stderr
    assert not list((project / "dist").glob("*.mpseal")) if (project / "dist").exists() else True
    # The same app fits a device whose filesystem is declared larger.
    _edit(project, 'board = "esp32"', 'board = "esp32"\nfilesystem_size = { esp32 = "6M" }')
    res = run_mpseal("build", "--json", cwd=project)
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["budget"]["filesystem"] == 6 << 20


def test_release_publish_of_a_set_and_promote_of_the_set(project: Path) -> None:
    from serve_support import project_server
    from server_support import ADMIN_TOKEN

    _edit(project, 'board = "unix"', 'board = ["unix", "esp32"]')
    assert run_mpseal("build", cwd=project).returncode == 0
    files = sorted((project / "dist").glob("*.mpseal"))
    with project_server(project) as url:
        env = {"MPSEAL_SERVER": url, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        res = run_mpseal("release", "publish", *files, "--json", cwd=project, env=env)
        assert res.returncode == 0, res.stderr
        assert sorted(r["board"] for r in json.loads(res.stdout)["releases"]) == ["esp32", "unix"]
        res = run_mpseal("release", "promote", "1.0.0", "--percent", "100", cwd=project, env=env)
        assert res.returncode == 0, res.stderr
        assert res.stdout.count("Promoted") == 2
        listed = json.loads(run_mpseal("release", "list", "--json", cwd=project, env=env).stdout)
        assert {(r["board"], r["percent"]) for r in listed} == {("esp32", 100), ("unix", 100)}
        # In a pipe (no COLUMNS, stdout not a TTY) no column is cut to fit 80 characters.
        import os
        import subprocess

        from conftest import MPSEAL

        pipe_env = {k: v for k, v in os.environ.items() if k != "COLUMNS"} | env
        out = subprocess.run(
            [str(MPSEAL), "release", "list"],
            cwd=project,
            env=pipe_env,
            capture_output=True,
            text=True,
            check=False,
        ).stdout
        assert "in progress" in out and "…" not in out, out
    # A set is one app and version: a stray file is refused before anything is sent.
    other = project / "dist" / "other.mpseal"
    _edit(project, 'version = "1.0.0"', 'version = "1.1.0"')
    assert run_mpseal("build", "--board", "unix", cwd=project).returncode == 0
    (project / "dist" / "hello-1.1.0-unix.mpseal").rename(other)
    res = run_mpseal(
        "release", "publish", files[0], other, "--server", "http://127.0.0.1:9", cwd=project
    )
    assert res.returncode == 2 and "a set is one app and version" in res.stderr
