"""The ``mpseal`` command: parse, call the layer below, print. Nothing else lives here."""

from __future__ import annotations

import importlib

import click

from mpseal import __version__
from mpseal.cli.common import run_command

# Each module listed here defines click commands/groups in COMMANDS = [...].
COMMAND_MODULES = [
    "mpseal.cli.project_cmds",
    "mpseal.cli.sim_cmds",
    "mpseal.cli.lockdown_cmds",
]


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpseal")
def cli() -> None:
    """Package, sign, lock down, provision and update MicroPython products.

    Every protection names the threat tier it stops (see docs/threats.md);
    nothing here protects against an attacker with a lab (T4).
    """


for _name in COMMAND_MODULES:
    for _cmd in importlib.import_module(_name).COMMANDS:
        cli.add_command(_cmd)


def main() -> None:
    run_command(cli)
