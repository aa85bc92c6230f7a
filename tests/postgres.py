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


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
    if not found:
        raise RuntimeError("PostgreSQL server binaries are missing: apt-get install postgresql "
                           "(scripts/bootstrap.sh does this)")
    return Path(found[-1]).parent


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _as_postgres(cmd: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@contextmanager
def postgres_server() -> Iterator[str]:
    """Yield a SQLAlchemy URL of a fresh database on a private server; stop it after."""
    bindir = _bindir()
    folder = Path(tempfile.mkdtemp(prefix="mpseal-pg-"))
    data = folder / "data"
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    port = _free_port()
    subprocess.run(_as_postgres([str(bindir / "initdb"), "-D", str(data), "-A", "trust",
                                 "-U", "postgres", "--no-sync"]),
                   check=True, capture_output=True)
    log = folder / "server.log"
    subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-l", str(log), "-w",
                                 "-o", f"-h 127.0.0.1 -p {port} -k {folder} -c fsync=off "
                                       "-c max_connections=200", "start"]),
                   check=True, capture_output=True)
    try:
        for _ in range(50):
            if subprocess.run(_as_postgres([str(bindir / "createdb"), "-h", "127.0.0.1", "-p",
                                            str(port), "-U", "postgres", "mpseal"]),
                              capture_output=True).returncode == 0:
                break
            time.sleep(0.2)
        else:
            raise RuntimeError(f"PostgreSQL did not start: {log.read_text()[-500:]}")
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/mpseal"
    finally:
        subprocess.run(_as_postgres([str(bindir / "pg_ctl"), "-D", str(data), "-m", "immediate",
                                     "stop"]), capture_output=True)
        shutil.rmtree(folder, ignore_errors=True)
