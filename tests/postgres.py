"""A real, throw-away PostgreSQL server for tests: initdb + pg_ctl on 127.0.0.1.

Started once per test session by the `pg_url` fixture (conftest.py). The server
binaries come from Debian's `postgresql` package (scripts/bootstrap.sh installs
it); as root the cluster runs as the `postgres` user, as initdb requires.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError(
            "PostgreSQL server binaries are missing: apt-get install postgresql "
            "(scripts/bootstrap.sh does this)"
        )
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server(options: str = "") -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database on a private server; stop it after.
    ``options``: more ``-c name=value`` settings (``MPSEAL_PG_OPTIONS`` adds its own)."""
    bindir = _bindir()
    folder = Path(tempfile.mkdtemp(prefix="mpseal-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    subprocess.run(
        _as_postgres(
            [str(bindir / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres", "--no-sync"]
        ),
        check=True,
        capture_output=True,
    )
    log = folder / "server.log"
    subprocess.run(
        _as_postgres(
            [
                str(bindir / "pg_ctl"),
                "-D",
                str(data),
                "-l",
                str(log),
                "-w",
                "-o",
                f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off -c max_connections=200 "
                + f" {options} "
                + os.environ.get("MPSEAL_PG_OPTIONS", ""),
                "start",
            ]
        ),
        check=True,
        capture_output=True,
    )
    try:
        for _ in range(50):
            if (
                subprocess.run(
                    _as_postgres(
                        [
                            str(bindir / "createdb"),
                            "-h",
                            "127.0.0.1",
                            "-p",
                            str(port),
                            "-U",
                            "postgres",
                            "mpseal",
                        ]
                    ),
                    capture_output=True,
                ).returncode
                == 0
            ):
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-500:]}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mpseal"
    finally:
        subprocess.run(
            _as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate", "stop"]),
            capture_output=True,
        )
        shutil.rmtree(folder, ignore_errors=True)


class PostgresServer:
    """A private PostgreSQL that a test can stop and start again (same port, same data):
    for the database-outage tests. ``with PostgresServer() as pg: pg.url, pg.stop(), ...``"""

    def __init__(self) -> None:
        self.bindir = _bindir()
        self.folder = Path(tempfile.mkdtemp(prefix="mpseal-pg-"))
        self.data = self.folder / "data"
        if os.geteuid() == 0:
            shutil.chown(self.folder, "postgres", "postgres")
        self.port = _free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/mpseal"

    def __enter__(self) -> Self:
        subprocess.run(
            _as_postgres(
                [
                    str(self.bindir / "initdb"),
                    "-D",
                    str(self.data),
                    "-A",
                    "trust",
                    "-U",
                    "postgres",
                    "--no-sync",
                ]
            ),
            check=True,
            capture_output=True,
        )
        self.start()
        for _ in range(50):
            if (
                subprocess.run(
                    _as_postgres(
                        [
                            str(self.bindir / "createdb"),
                            "-h",
                            "127.0.0.1",
                            "-p",
                            str(self.port),
                            "-U",
                            "postgres",
                            "mpseal",
                        ]
                    ),
                    check=False,
                    capture_output=True,
                ).returncode
                == 0
            ):
                return self
            time.sleep(0.2)
        raise RuntimeError("PostgreSQL did not start")

    def start(self) -> None:
        subprocess.run(
            _as_postgres(
                [
                    str(self.bindir / "pg_ctl"),
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.folder / "server.log"),
                    "-w",
                    "-o",
                    (
                        f"-h 127.0.0.1 -p {self.port} -k {self.folder} "
                        "-c fsync=off -c max_connections=100"
                    ),
                    "start",
                ]
            ),
            check=True,
            capture_output=True,
        )

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(
                [str(self.bindir / "pg_ctl"), "-D", str(self.data), "-m", "immediate", "stop"]
            ),
            check=False,
            capture_output=True,
        )

    def __exit__(self, *exc: object) -> None:
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
