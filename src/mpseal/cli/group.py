"""The ``mpseal`` click group: each command's module is imported only when it runs."""

from __future__ import annotations

import importlib

import click

from mpseal import __version__

# Command name -> the module that defines it (in its COMMANDS list). A module is
# imported only when one of its commands runs, so `mpseal build` stays quick.
LAZY_COMMANDS = {
    "init": "mpseal.cli.project_cmds",
    "build": "mpseal.cli.project_cmds",
    "inspect": "mpseal.cli.project_cmds",
    "verify": "mpseal.cli.project_cmds",
    "unlock-token": "mpseal.cli.project_cmds",
    "sim": "mpseal.cli.sim_cmds",
    "ca": "mpseal.cli.pki_cmds",
    "cert": "mpseal.cli.pki_cmds",
    "lockdown": "mpseal.cli.lockdown_cmds",
    "keys": "mpseal.cli.keys_cmds",
    "audit": "mpseal.cli.audit_cmds",
    "inspect-device": "mpseal.cli.audit_cmds",
    "probe": "mpseal.cli.device_cmds",
    "install": "mpseal.cli.device_cmds",
    "serve": "mpseal.cli.server_cmds",
    "release": "mpseal.cli.server_cmds",
    "device": "mpseal.cli.server_cmds",
    "inventory": "mpseal.cli.server_cmds",
    "provision": "mpseal.cli.fleet_cmds",
    "registry": "mpseal.cli.fleet_cmds",
    "audit-log": "mpseal.cli.auditlog_cmds",
}
# Every module with commands. One not named above is imported to look a name up.
COMMAND_MODULES = [
    "mpseal.cli.project_cmds",
    "mpseal.cli.sim_cmds",
    "mpseal.cli.pki_cmds",
    "mpseal.cli.lockdown_cmds",
    "mpseal.cli.server_cmds",
    "mpseal.cli.keys_cmds",
    "mpseal.cli.fleet_cmds",
    "mpseal.cli.audit_cmds",
    "mpseal.cli.device_cmds",
    "mpseal.cli.auditlog_cmds",
]


def _commands_of(module: str) -> dict[str, click.Command]:
    return {c.name: c for c in importlib.import_module(module).COMMANDS if c.name}


class LazyGroup(click.Group):
    """Commands named in LAZY_COMMANDS import only their module. A command missing from
    that table still works (every module is searched), only slower to find."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        names = set(LAZY_COMMANDS)
        for module in COMMAND_MODULES:
            names |= set(_commands_of(module))
        return sorted(names)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        module = LAZY_COMMANDS.get(cmd_name)
        if module is not None:
            found = _commands_of(module).get(cmd_name)
            if found is not None:
                return found
        for module in COMMAND_MODULES:
            found = _commands_of(module).get(cmd_name)
            if found is not None:
                return found
        return None


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="mpseal")
def cli() -> None:
    """Package, sign, lock down, provision and update MicroPython products.

    Every protection names the threat tier it stops (see docs/threats.md);
    nothing here protects against an attacker with a lab (T4).
    """
