"""docs/lockdown/ is generated from the interface data: the committed pages must match it."""

from __future__ import annotations

from pathlib import Path

from conftest import run_mpseal

from mpseal.lockdown import docs
from mpseal.lockdown import interfaces as itf

ROOT = Path(__file__).resolve().parents[1]


def test_committed_pages_equal_the_generated_ones() -> None:
    stale = docs.stale_pages(ROOT / "docs" / "lockdown")
    assert not stale, f"regenerate with `mpseal lockdown docs`: {[str(p) for p in stale]}"


def test_one_page_per_port_covering_each_of_its_interfaces() -> None:
    pages = docs.render_all()
    assert set(pages) == {"esp32.md", "rp2.md", "stm32.md", "unix.md", "README.md"}
    for port in docs.PORTS:
        text = pages[f"{port}.md"]
        for board in docs.boards_of(port):
            for i in itf.interfaces_for(board):
                assert f'<a id="{i.id}"></a>' in text, (port, i.id)
    assert "RP2040" in pages["rp2.md"] and "**no**" in pages["rp2.md"]
    assert "**no**" not in pages["esp32.md"]


def test_check_mode_reports_a_stale_page(tmp_path: Path) -> None:
    res = run_mpseal("lockdown", "docs", "--out", tmp_path)
    assert res.returncode == 0, res.stderr
    assert run_mpseal("lockdown", "docs", "--out", tmp_path, "--check").returncode == 0
    (tmp_path / "esp32.md").write_text("edited by hand\n")
    res = run_mpseal("lockdown", "docs", "--out", tmp_path, "--check")
    assert res.returncode == 2 and "out of date" in res.stderr
