"""``mpseal serve`` run in a project folder as a user runs it: its own process, a free port."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
from conftest import MPSEAL
from server_support import ADMIN_TOKEN, free_port


@contextmanager
def project_server(project: Path, *extra: str) -> Iterator[str]:
    """``mpseal serve`` in ``project`` (its keys, its SQLite file); yields the URL."""
    port = free_port()
    env = {**os.environ, "MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
    env.pop("MPSEAL_PASSPHRASE", None)
    proc = subprocess.Popen(
        [str(MPSEAL), "serve", "--port", str(port), "--cache-seconds", "0", *extra],
        cwd=project,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mpseal serve exited: {proc.stderr.read().decode()[-2000:]}")
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("mpseal serve did not start")
            time.sleep(0.1)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
