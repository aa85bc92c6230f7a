"""Helpers for the update server tests: keys and a trust root, signed artifacts, a fleet of
registered devices, and the real server (uvicorn on 127.0.0.1, a free port) in a thread.
"""

from __future__ import annotations

import hashlib
import os
import signal
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa
import uvicorn

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.fleet.models import Device
from mpseal.fleet.registry import (
    CertRecord,
    Identity,
    Registry,
    migrations_config,
    token_hash,
)
from mpseal.fleet.rollout import HaltPolicy
from mpseal.formats import artifact, trustroot
from mpseal.formats.manifest import Manifest
from mpseal.server.app import create_app
from mpseal.server.config import ServerConfig, admin_token_hash
from mpseal.server.run import RunOptions, uvicorn_kwargs

HOST = "127.0.0.1"
ADMIN_TOKEN = "admin-" + "s3cret" * 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def worker_pids(pid: int) -> list[int]:
    """uvicorn's worker processes under ``pid`` (not multiprocessing's resource tracker)."""
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        for child in (task / "children").read_text().split():
            try:
                cmd = Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"resource_tracker" not in cmd:
                out.append(int(child))
    return out


def stop_group(proc: subprocess.Popen[Any], seconds: float = 15) -> None:
    """Stop a process started in its own session (``mpseal serve`` and its workers): its
    whole group gets SIGTERM, then SIGKILL if it has not exited within ``seconds``."""
    if proc.poll() is not None:
        return
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(seconds)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def wait_ready(
    proc: subprocess.Popen[Any],
    url: str,
    said: Callable[[], str],
    seconds: float = 30,
    verify: Any = True,
    what: str = "the server",
) -> None:
    """Poll ``url`` until it answers 200. A RuntimeError if ``proc`` exits first (with the
    end of what it ``said``) or after ``seconds``."""
    deadline = time.monotonic() + seconds
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited: {said()[-2000:]}")
        try:
            if httpx.get(url, timeout=1, verify=verify).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start")
        time.sleep(0.1)


@dataclass
class Keys:
    root: PrivateKeySigner
    release: PrivateKeySigner
    timestamp: PrivateKeySigner
    folder: Path

    @property
    def roots_dir(self) -> Path:
        return self.folder / "roots"

    @property
    def trust_root(self) -> trustroot.TrustRoot:
        return trustroot.parse((self.roots_dir / "1.mpsr").read_bytes())


def make_keys(folder: Path) -> Keys:
    keys = Keys(
        PrivateKeySigner.generate(),
        PrivateKeySigner.generate(),
        PrivateKeySigner.generate(),
        folder,
    )
    root = trustroot.build(
        1,
        {
            "root": [keys.root.public_key],
            "release": [keys.release.public_key],
            "timestamp": [keys.timestamp.public_key],
        },
    )
    keys.roots_dir.mkdir(parents=True, exist_ok=True)
    (keys.roots_dir / "1.mpsr").write_bytes(trustroot.sign(root, [keys.root]))
    (folder / "timestamp.pem").write_bytes(keys.timestamp.to_pem())
    (folder / "timestamp.pem").chmod(0o600)  # mpseal refuses a key others may read
    return keys


def make_artifact(
    signer: PrivateKeySigner,
    version: str = "1.0.0",
    counter: int = 1,
    board: str = "esp32",
    app: str = "hello",
    size: int = 4096,
) -> bytes:
    """A signed artifact (the image is random bytes: the server checks signatures and hashes,
    the device mounts the ROMFS)."""
    image = os.urandom(size)
    man = Manifest(
        app=app,
        version=version,
        counter=counter,
        board=board,
        port="esp32",
        mpy_version="6.3",
        arch="xtensawin",
        image_sha256=hashlib.sha256(image).hexdigest(),
        image_size=len(image),
    )
    return artifact.create(man, image, [signer]).encode()


@dataclass
class Fleet:
    """Registered, active devices with bearer tokens."""

    tokens: dict[str, str] = field(default_factory=dict)  # hardware id -> token
    fingerprints: dict[str, str] = field(default_factory=dict)  # hardware id -> cert SHA-256

    def headers(self, hw: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[hw]}"}


def schema_at(conn: sa.Connection, revision: str, down: bool = False) -> None:
    """Move the registry schema on ``conn`` to ``revision`` (alembic), as an older mpseal
    left it: a test of an upgrade writes the old rows, then opens the registry."""
    from alembic import command

    (command.downgrade if down else command.upgrade)(migrations_config(conn), revision)


def register(
    url: str,
    n: int,
    prefix: str = "dev",
    groups: dict[str, str] | None = None,
    board: str = "esp32",
    fingerprints: dict[str, str] | None = None,
) -> Fleet:
    """Register ``n`` active devices (hardware ids ``<prefix>-<i>``) in the database at ``url``."""
    reg = Registry.open(url)
    fleet = Fleet()
    idents = []
    for i in range(n):
        hw = f"{prefix}-{i:05d}"
        token = f"tok-{hw}-{os.urandom(8).hex()}"
        fp = (fingerprints or {}).get(hw) or os.urandom(32).hex()
        idents.append(
            Identity(
                hardware_id=hw,
                board=board,
                group=(groups or {}).get(hw, "default"),
                cert=CertRecord(
                    "device",
                    f"CN={hw}",
                    os.urandom(16).hex(),
                    fp,
                    datetime.now(UTC) + timedelta(days=365),
                ),
                token_hash=token_hash(token),
            )
        )
        fleet.tokens[hw] = token
        fleet.fingerprints[hw] = fp
    for start in range(0, len(idents), 2000):
        reg.record_identities(idents[start : start + 2000])
    with reg.engine.begin() as conn:
        conn.execute(
            sa.update(Device)
            .where(Device.hardware_id.in_(list(fleet.tokens)))
            .values(state="active")
        )
    reg.engine.dispose()
    return fleet


def config_for(db_url: str, keys: Keys, tmp: Path, **overrides: object) -> ServerConfig:
    cfg = ServerConfig(
        database_url=db_url,
        artifacts_dir=tmp / "artifacts",
        roots_dir=keys.roots_dir,
        timestamp_signer=keys.timestamp,
        admin_token_hashes=(admin_token_hash(ADMIN_TOKEN),),
        cache_seconds=0.2,
        maintenance_seconds=3600,
        halt_policy=HaltPolicy(min_attempts=5, max_failure_ratio=0.2, trial_window_seconds=3600),
    )
    return replace(cfg, **overrides)  # type: ignore[arg-type]


@dataclass
class Running:
    url: str
    server: uvicorn.Server

    def admin(self, **kw: object) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=30, headers={"Authorization": f"Bearer {ADMIN_TOKEN}"}, **kw
        )  # type: ignore[arg-type]


@contextmanager
def running_server(
    config: ServerConfig,
    options: RunOptions | None = None,
    ssl_setup: Callable[[ssl.SSLContext], None] | None = None,
    **uvicorn_options: Any,
) -> Iterator[Running]:
    """The real server: uvicorn with the production protocol and loop, in a thread.
    ``ssl_setup`` may change uvicorn's TLS context before it serves, ``uvicorn_options``
    uvicorn's own settings (tests only)."""
    port = free_port()
    opts = replace(options or RunOptions(), host=HOST, port=port)
    uconfig = uvicorn.Config(create_app(config), **uvicorn_kwargs(opts), **uvicorn_options)
    if ssl_setup is not None:
        uconfig.load()
        assert uconfig.ssl is not None
        ssl_setup(uconfig.ssl)
    server = uvicorn.Server(uconfig)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.02)
    scheme = "https" if opts.tls_cert else "http"
    try:
        yield Running(f"{scheme}://{HOST}:{port}", server)
    finally:
        server.should_exit = True
        thread.join(15)
