"""Power cuts on the virtual Pico: the stock RPI_PICO firmware's own littlefs, cut at
every flash write (each erase and each program) of stage -> trial boot -> committed boot.

Threat tier: T0 (no attacker: the power fails). After every cut the board, powered on
again, boots a validly signed release (the old or the new one) and its security counter
never goes down. Slow (one power-on and one reboot per write), so it runs once.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from pico_exec import committed_pico_and_next_release

from mpseal.device.picoboard import PicoBoard
from mpseal.device.powercut import check_update_pico


@pytest.mark.slow
def test_power_cut_at_every_write_of_an_update_on_the_virtual_pico(tmp_path: Path) -> None:
    sim, _, new = committed_pico_and_next_release(tmp_path)

    report = check_update_pico(PicoBoard(sim), new, {"1.0.0", "1.1.0"}, min_counter=1)

    assert all(n > 0 for n in report.writes_per_step.values()), report.writes_per_step
    assert report.tried == sum(report.writes_per_step.values())
    assert report.survived == report.tried, report.failures()[:3]
    # The update itself went through: the board now runs 1.1.0, committed.
    status = PicoBoard(sim).status()
    assert status["state"]["committed"] == "b" and status["state"]["trial"] is None
    assert status["state"]["counter"] == 2
    print(
        f"virtual Pico power cuts: {report.tried} points tried, {report.survived} survived "
        f"({report.writes_per_step})"
    )
