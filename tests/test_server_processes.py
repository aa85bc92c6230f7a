"""``mpseal serve`` as real processes and the admin CLI against them.

Two server processes on one database (SQLite file and PostgreSQL) agree: what one
changes the other serves, and timestamp versions strictly increase across both, also
when both re-sign at the same time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from itertools import pairwise
from pathlib import Path

import httpx
import pytest
from conftest import run_mpseal
from serve_support import serving, store_args
from server_support import ADMIN_TOKEN, Keys, free_port, make_artifact, make_keys, register

from mpseal.formats.updatemeta import parse_timestamp


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return make_keys(tmp_path / "keys")


@contextmanager
def serve(db_url: str, keys: Keys, artifacts: Path, *extra: str) -> Iterator[str]:
    """``mpseal serve`` in its own process; yields its URL, stops it after."""
    args = (*store_args(db_url, keys, artifacts), *(extra or ("--cache-seconds", "0")))
    with serving(*args, port=free_port()) as (url, _):
        yield url


def cli(*args: str) -> dict | list:
    res = run_mpseal(*args, "--json", env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN})
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout)


def test_two_server_processes_on_one_database_agree(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 20)
    h = fleet.headers("dev-00000")
    auth = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with ExitStack() as stack:
        a = stack.enter_context(serve(db_url, keys, tmp_path / "artifacts"))
        b = stack.enter_context(serve(db_url, keys, tmp_path / "artifacts"))

        def version(url: str) -> int:
            raw = httpx.get(f"{url}/v1/timestamp/stable.mpst", headers=h).content
            return parse_timestamp(raw, keys.trust_root).version

        seen = [version(a)]
        assert version(b) == seen[0]
        # Publish through one, promote through the other, in turn: each change of what the
        # timestamp names is a new timestamp that both serve, above every earlier version.
        for i in range(4):
            file = tmp_path / f"v{i}.mpseal"
            file.write_bytes(make_artifact(keys.release, f"1.{i + 1}.0", 2))
            pub, prom = (a, b) if i % 2 == 0 else (b, a)
            cli("release", "publish", str(file), "--server", pub)
            cli("release", "promote", f"1.{i + 1}.0", "--percent", "10", "--server", prom)
            now_a, now_b = version(a), version(b)
            assert now_a == now_b > seen[-1]
            seen.append(now_a)
        listed = cli("release", "list", "--server", b)
        assert [r["version"] for r in listed] == ["1.1.0", "1.2.0", "1.3.0", "1.4.0"]

        # Both processes re-signing at the same time (new apps appear in the timestamp):
        # every change gets its own version, and each reader sees versions only go up.
        def hammer(args: tuple[str, int]) -> list[int]:
            url, n = args
            out = []
            for i in range(5):
                blob = make_artifact(keys.release, "1.0.0", 1, app=f"app{n}x{i}")
                r = httpx.post(f"{url}/v1/admin/releases", content=blob, headers=auth, timeout=30)
                assert r.status_code == 201, r.text
                r = httpx.post(
                    f"{url}/v1/admin/releases/{r.json()['release']['id']}/promote",
                    json={"percent": 100},
                    headers=auth,
                    timeout=30,
                )
                assert r.status_code == 200, r.text
                out.append(version(url))
            return out

        with ThreadPoolExecutor(4) as pool:
            runs = list(pool.map(hammer, [(a, 0), (b, 1), (a, 2), (b, 3)]))
        for run in runs:
            assert all(x < y for x, y in pairwise(run)) and run[0] > seen[-1]
        final = version(a)
        assert final == version(b) >= max(max(r) for r in runs)
        raw = httpx.get(f"{a}/v1/timestamp/stable.mpst", headers=h).content
        assert len(parse_timestamp(raw, keys.trust_root).targets) == 21  # hello + 20 apps


def test_revocation_reaches_every_server_process_within_the_cache_time(
    db_url: str, keys: Keys, tmp_path: Path
) -> None:
    fleet = register(db_url, 2)
    check = {
        "hardware_id": "dev-00000",
        "board": "esp32",
        "app": "hello",
        "version": "1.0.0",
        "counter": 1,
        "timestamp_version": 0,
    }
    h = fleet.headers("dev-00000")
    with ExitStack() as stack:
        a, b = (
            stack.enter_context(serve(db_url, keys, tmp_path / "artifacts", "--cache-seconds", "1"))
            for _ in range(2)
        )
        for url in (a, b):  # both have the device cached as allowed
            assert httpx.post(f"{url}/v1/device/check", json=check, headers=h).status_code == 200
        cli("device", "revoke", "dev-00000", "--server", a)
        revoked_at = time.monotonic()
        assert httpx.post(f"{a}/v1/device/check", json=check, headers=h).status_code == 403
        while httpx.post(f"{b}/v1/device/check", json=check, headers=h).status_code == 200:
            assert time.monotonic() - revoked_at < 2.0, "B still accepts a revoked device"
            time.sleep(0.05)


def test_admin_cli_round_trip(keys: Keys, tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path / 'db.sqlite'}"
    fleet = register(db, 3)
    v1 = tmp_path / "v1.mpseal"
    v1.write_bytes(make_artifact(keys.release, "1.1.0", 2))
    tampered = tmp_path / "bad.mpseal"
    tampered.write_bytes(v1.read_bytes()[:-1] + b"\0")
    with serve(db, keys, tmp_path / "artifacts") as url:
        res = run_mpseal(
            "release", "publish", tampered, "--server", url, env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        )
        assert res.returncode == 3 and res.stderr.count("\n") == 1
        assert "refused" in res.stderr and "altered" in res.stderr
        res = run_mpseal("release", "list", "--server", url, env={"MPSEAL_ADMIN_TOKEN": "wrong"})
        assert res.returncode == 2 and "admin token" in res.stderr
        res = run_mpseal(
            "release",
            "list",
            "--server",
            "http://127.0.0.1:1",
            env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        assert res.returncode == 4 and "cannot reach" in res.stderr

        rel = cli("release", "publish", str(v1), "--channel", "stable", "--server", url)
        assert (rel["version"], rel["state"], rel["percent"]) == ("1.1.0", "active", 0.0)
        assert cli("release", "promote", "1.1.0", "--group", "default", "--server", url)[
            "groups"
        ] == ["default"]
        assert cli("release", "promote", "1.1.0", "--pin", "dev-00001", "--server", url)[
            "pins"
        ] == ["dev-00001"]
        assert cli("release", "pause", "1.1.0", "--server", url)["state"] == "paused"
        assert cli("release", "resume", "1.1.0", "--server", url)["state"] == "active"
        res = run_mpseal(
            "release",
            "promote",
            "9.9.9",
            "--percent",
            "5",
            "--server",
            url,
            env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN},
        )
        assert res.returncode == 2 and "no release 9.9.9" in res.stderr

        check = {
            "hardware_id": "dev-00002",
            "board": "esp32",
            "app": "hello",
            "version": "1.0.0",
            "counter": 1,
            "timestamp_version": 0,
        }
        h = fleet.headers("dev-00002")
        assert httpx.post(f"{url}/v1/device/check", json=check, headers=h).json()["update"]
        httpx.post(
            f"{url}/v1/device/report",
            headers=h,
            json={"hardware_id": "dev-00002", "event": "confirmed", "version": "1.1.0"},
        )
        (row,) = cli("release", "list", "--server", url)
        assert row["counts"]["updated"] == 1
        revoked = cli("device", "revoke", "dev-00002", "--reason", "stolen", "--server", url)
        assert revoked == {
            "hardware_id": "dev-00002",
            "state": "revoked",
            "certificates_revoked": 1,
        }
        assert httpx.post(f"{url}/v1/device/check", json=check, headers=h).status_code == 403

        table = run_mpseal(
            "release", "list", "--server", url, env={"MPSEAL_ADMIN_TOKEN": ADMIN_TOKEN}
        )
        assert table.returncode == 0 and "1.1.0" in table.stdout and "default" in table.stdout


def test_serve_refuses_a_timestamp_key_devices_would_not_accept(keys: Keys, tmp_path: Path) -> None:
    from mpseal.crypto.keys import PrivateKeySigner

    stray = tmp_path / "stray.pem"
    stray.write_bytes(PrivateKeySigner.generate().to_pem())
    stray.chmod(0o600)
    res = run_mpseal(
        "serve",
        "--db",
        f"sqlite:///{tmp_path / 'db.sqlite'}",
        "--port",
        str(free_port()),
        "--workers",
        "2",
        "--roots",
        keys.roots_dir,
        "--timestamp-key",
        stray,
        "--artifacts",
        tmp_path / "a",
        timeout=60,
    )
    assert res.returncode == 2
    assert "not in the timestamp role of trust root 1" in res.stderr
    assert "Traceback" not in res.stderr
