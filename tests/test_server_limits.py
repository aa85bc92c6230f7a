"""Limits against abusive clients (issue 11, point 7), on the real ``mpseal serve`` process:
endless headers and half-open connections leave its memory bounded and other clients served.

Threat tier T1 (docs/threats.md: the network): anyone who can reach the server's port,
no credentials needed. Availability only; nothing here is about what a device installs.
"""

from __future__ import annotations

import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from server_support import Keys, config_for, make_keys, register, running_server
from test_server_survival import serve

from mpseal.server.run import ConnectionLimits, RunOptions


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def test_attack_endless_headers_memory_stays_bounded(keys: Keys, tmp_path: Path) -> None:
    """8 connections send header lines without end, reconnecting when cut off: each is cut
    at the header size limit with a 431, the server's memory stays flat, others are served."""
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db, 1)
    with serve(db, keys, tmp_path, "--max-header-bytes", "16384") as (url, proc):
        port = port_of(url)
        httpx.get(f"{url}/healthz")
        before = rss_kib(proc.pid)
        stop = threading.Event()
        sent = [0]
        answers: list[bytes] = []

        def attacker() -> None:
            line = b"X-Filler: " + b"a" * 1000 + b"\r\n"
            while not stop.is_set():
                with socket.create_connection(("127.0.0.1", port)) as s:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    try:
                        while not stop.is_set():
                            s.sendall(line * 8)
                            sent[0] += len(line) * 8
                    except OSError:
                        try:
                            answers.append(s.recv(200))
                        except OSError:
                            pass

        threads = [threading.Thread(target=attacker) for _ in range(8)]
        for t in threads:
            t.start()
        try:
            time.sleep(4)
            assert httpx.get(f"{url}/healthz", timeout=5).status_code == 200
            peak = rss_kib(proc.pid)
        finally:
            stop.set()
            for t in threads:
                t.join()
        assert sent[0] > 20 * 1024 * 1024  # the attack did send (tens of MB of headers)
        assert any(a.startswith(b"HTTP/1.1 431") for a in answers)
        assert peak - before < 40 * 1024, (before, peak)  # KiB: under 40 MB of growth


def test_attack_half_open_connections_do_not_lock_out_clients(keys: Keys, tmp_path: Path) -> None:
    """1,100 connections that never send a byte: past the connection limit the oldest idle
    ones are closed to make room, the rest after the header timeout; a real client is
    served throughout and memory stays bounded."""
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    register(db, 1)
    with serve(db, keys, tmp_path, "--max-connections", "300", "--header-timeout", "3") as (
        url,
        proc,
    ):
        port = port_of(url)
        before = rss_kib(proc.pid)
        idle = []
        for _ in range(1100):
            s = socket.create_connection(("127.0.0.1", port))
            idle.append(s)
        try:
            t0 = time.monotonic()
            r = httpx.get(f"{url}/healthz", timeout=5)
            assert r.status_code == 200 and time.monotonic() - t0 < 5
            peak = rss_kib(proc.pid)
            # After the header timeout every idle connection was closed by the server.
            time.sleep(4)
            closed = 0
            for s in idle:
                s.settimeout(2)
                try:
                    closed += s.recv(1) == b""
                except OSError:
                    closed += 1
            assert closed == len(idle)
        finally:
            for s in idle:
                s.close()
        assert peak - before < 40 * 1024, (before, peak)


def test_too_many_headers_and_slow_heads_are_refused(tmp_path: Path) -> None:
    keys = make_keys(tmp_path / "keys")
    db = f"sqlite:///{tmp_path / 'mpseal.db'}"
    opts = RunOptions(limits=ConnectionLimits(headers_max=20, header_timeout=1.0))
    with running_server(config_for(db, keys, tmp_path), opts) as srv:
        port = port_of(srv.url)
        ok = {f"X-H{i}": "v" for i in range(15)}
        assert httpx.get(f"{srv.url}/healthz", headers=ok).status_code == 200
        many = {f"X-H{i}": "v" for i in range(30)}
        r = httpx.get(f"{srv.url}/healthz", headers=many)
        assert r.status_code == 431
        with socket.create_connection(("127.0.0.1", port)) as s:  # a slow head
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
            s.settimeout(5)
            t0 = time.monotonic()
            assert s.recv(100).startswith(b"HTTP/1.1 408")
            assert 0.5 < time.monotonic() - t0 < 4
        # Keep-alive still works for a client that behaves: many requests, one connection.
        with httpx.Client(base_url=srv.url) as c:
            for _ in range(20):
                assert c.get("/healthz").status_code == 200
