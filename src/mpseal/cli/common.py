"""What every command shares: error reporting, exit codes, JSON output, progress, passphrases."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import click

from mpseal.errors import (
    BadDataError,
    ConfigError,
    MpsealError,
    TransportError,
)

# Exit codes: scripts can tell the causes apart without reading text.
EXIT_BAD_DATA = 3  # the artifact/device/server data is bad or refused
EXIT_TRANSPORT = 4  # a device, server or tool could not be reached or failed
EXIT_USAGE = 2  # the request or the configuration is wrong

PIPE_WIDTH = 1000  # columns for output that goes to a pipe or a file


class _LazyConsole:
    """A rich Console made on first use: commands that print JSON never import rich."""

    def __init__(self, **options: Any) -> None:
        self._options = options
        self._console: Any = None

    def real(self) -> Any:
        """The rich Console itself, for rich objects that need one (Progress, Live)."""
        if self._console is None:
            from rich.console import Console

            options = dict(self._options)
            stream = sys.stderr if options.get("stderr") else sys.stdout
            if not stream.isatty() and "COLUMNS" not in os.environ:
                # A pipe or a file has no width: rich would cut tables at 80 columns.
                options["width"] = PIPE_WIDTH
            self._console = Console(**options)
        return self._console

    def __getattr__(self, name: str) -> Any:
        return getattr(self.real(), name)


err_console = _LazyConsole(stderr=True, highlight=False, soft_wrap=True)
out_console = _LazyConsole(highlight=False, soft_wrap=True)


def exit_code_for(exc: MpsealError) -> int:
    if isinstance(exc, BadDataError):
        return EXIT_BAD_DATA
    if isinstance(exc, TransportError):
        return EXIT_TRANSPORT
    return EXIT_USAGE


def run_command(cli: click.Group) -> None:
    """Run the CLI; every error becomes one line on stderr and a non-zero exit.

    With ``--json`` a failure also prints a JSON object on stdout (unless the command
    already printed its JSON): ``{"error": ..., "kind": ..., "exit_code": ...}``.
    """
    try:
        cli.main(standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", "aborted", 130)
    except click.exceptions.Exit as e:
        sys.exit(e.exit_code)
    except click.exceptions.NoArgsIsHelpError as e:  # `mpseal sim`: its help, not an error
        click.echo(e.ctx.get_help() if e.ctx is not None else e.format_message())
        sys.exit(0)
    except click.ClickException as e:
        # Click's own "Usage: ... Try ... Error: ..." is three lines; the promise is one.
        hint = ""
        ctx = getattr(e, "ctx", None)
        if isinstance(e, click.UsageError) and ctx is not None:
            hint = f" (see '{ctx.command_path} --help')"
        _fail("usage error", f"{e.format_message()}{hint}", e.exit_code or EXIT_USAGE)
    except MpsealError as e:
        _fail(_kind(e), str(e), exit_code_for(e))
    except KeyboardInterrupt:
        _fail("interrupted", "interrupted", 130)
    except BrokenPipeError:
        # `mpseal ... | head`: the reader left; say nothing more (and nothing at exit).
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    except OSError as e:
        # The net under every command: a full disk, a read-only folder or a vanished
        # file is still one line and exit 4, never a traceback.
        where = f"{e.filename}: " if e.filename else ""
        _fail("failed", f"{where}{e.strerror or e}", EXIT_TRANSPORT)


def _fail(kind: str, message: str, code: int) -> None:
    line = " ".join(message.split())  # one line, whatever the message held
    if kind in ("aborted", "interrupted"):
        err_console.print(f"mpseal: {kind}", markup=False)
    else:
        err_console.print(f"mpseal: {kind}: {line}", markup=False, soft_wrap=True)
    if _json_requested() and not _json_emitted:
        click.echo(
            json.dumps({"error": line, "kind": kind, "exit_code": code}, indent=2, sort_keys=True)
        )
    sys.exit(code)


def _json_requested() -> bool:
    args = sys.argv[1:]
    if "--" in args:
        args = args[: args.index("--")]
    return "--json" in args


def _kind(e: MpsealError) -> str:
    if isinstance(e, ConfigError):
        return "config error"
    if isinstance(e, BadDataError):
        return "refused"
    if isinstance(e, TransportError):
        return "failed"
    return "error"


_json_emitted = False  # a command printed its JSON: a later failure adds no second document


def emit_json(obj: Any) -> None:
    global _json_emitted
    click.echo(json.dumps(obj, indent=2, sort_keys=True))
    _json_emitted = True


def passphrase_from_env_or_prompt(role: str) -> bytes | None:
    """Passphrase for an encrypted key: $MPSEAL_PASSPHRASE, else a prompt on a TTY."""
    env = os.environ.get("MPSEAL_PASSPHRASE")
    if env is not None:
        return env.encode()
    if sys.stdin.isatty():
        return click.prompt(f"Passphrase for the {role} key", hide_input=True).encode()
    raise ConfigError(
        f"the {role} key is passphrase-protected; set MPSEAL_PASSPHRASE (no TTY to prompt on)"
    )


@contextmanager
def progress_bar(label: str, enabled: bool) -> Iterator[Any]:
    """A rich Progress on a TTY (stderr), None otherwise or when ``enabled`` is false."""
    if not enabled or not sys.stderr.isatty():
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
    )

    with Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console.real(),
        transient=True,
    ) as bar:
        yield bar


_F = TypeVar("_F", bound=Callable[..., Any])


def project_option(help: str | None = None) -> Callable[[_F], _F]:
    """``-C/--project``: the project folder a command works in, as ``project_dir``
    (default: here)."""
    return click.option(
        "-C",
        "--project",
        "project_dir",
        type=click.Path(file_okay=False, path_type=Path),
        default=".",
        help=help,
    )
