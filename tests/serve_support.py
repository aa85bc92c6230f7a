"""``mpseal serve`` run as a user runs it: its own process group, a free port."""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from conftest import MPSEAL
from server_support import ADMIN_TOKEN, Keys, free_port, stop_group, wait_ready


@contextmanager
def serving(
    *args: str, port: int, cwd: Path | None = None, log: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """``mpseal serve --port PORT ARGS`` in its own process group, with the admin token
    set; yields its URL and process once /healthz answers (which needs no database), and
    stops the whole group after. Its output goes to ``log`` if given, else to an unnamed
    temporary file (never an unread pipe: a server that logs more than a pipe holds would
    block on its next line)."""
    env = {**os.environ, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("MPSEAL_PASSPHRASE", None)
    out: IO[bytes] = open(log, "w+b") if log else tempfile.TemporaryFile()
    proc = subprocess.Popen(
        [str(MPSEAL), "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=out,
        stderr=out,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"

    def said() -> str:  # read at offsets: the server writes through the same file offset
        fd = out.fileno()
        return os.pread(fd, os.fstat(fd).st_size, 0).decode(errors="replace")

    try:
        wait_ready(proc, f"{url}/healthz", said, what="mpseal serve")
        yield url, proc
    finally:
        stop_group(proc)
        out.close()


def store_args(db_url: str, keys: Keys, artifacts: Path) -> list[str]:
    """The options of a server on ``db_url`` with the test keys and an artifacts folder."""
    return [
        "--db",
        db_url,
        "--roots",
        str(keys.roots_dir),
        "--timestamp-key",
        str(keys.folder / "timestamp.pem"),
        "--artifacts",
        str(artifacts),
    ]


@contextmanager
def project_server(project: Path, *extra: str) -> Iterator[str]:
    """``mpseal serve`` in ``project`` (its keys, its SQLite file); yields the URL."""
    with serving("--cache-seconds", "0", *extra, port=free_port(), cwd=project) as (url, _):
        yield url
