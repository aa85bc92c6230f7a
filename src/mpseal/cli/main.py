"""The ``mpseal`` command's entry point.

``mpseal --help`` and ``--version`` are answered from text kept in
``help_text.py`` without importing click or any command: start-up a person does not
notice (tests/test_cli_startup.py checks the text is exactly what click renders and
the time against ``mpremote --help``). Everything else goes through click.
"""

from __future__ import annotations

import sys


def main() -> None:
    args = sys.argv[1:]
    if args in ([], ["--help"], ["-h"]):
        from mpseal.cli.help_text import HELP

        sys.stdout.write(HELP)
        return
    if args == ["--version"]:
        from mpseal import __version__

        sys.stdout.write(f"mpseal, version {__version__}\n")
        return
    from mpseal.cli.common import run_command
    from mpseal.cli.group import cli

    run_command(cli)


def render_help() -> str:
    """What click prints for ``mpseal --help`` (80 columns): the source of help_text.py."""
    import os

    from mpseal.cli.group import cli

    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "80"  # click caps its width at 80 columns anyway
    try:
        with cli.make_context("mpseal", ["x"], resilient_parsing=True) as ctx:
            return cli.get_help(ctx) + "\n"
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


if __name__ == "__main__":
    if sys.argv[1:] == ["--write-help"]:  # python -m mpseal.cli.main --write-help
        from pathlib import Path

        lines = "".join(f"    {line!r}\n" for line in render_help().splitlines(keepends=True))
        Path(__file__).with_name("help_text.py").write_text(
            '"""``mpseal --help``, kept as text (python -m mpseal.cli.main --write-help)."""\n\n'
            f"HELP = (\n{lines})\n"
        )
    else:
        main()
