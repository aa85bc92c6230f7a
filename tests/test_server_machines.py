"""Several machines, no shared disk (issue 11, point 6): two ``mpseal serve`` processes with
separate artifact and trust-root folders against one real PostgreSQL. What one publishes the
other serves (from the database, with immutable cache headers for a CDN), and a trust root
only one of them has on disk is adopted by the other (it chains from its own), so both name
the same root and neither re-signs the other's timestamps."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import httpx
import sqlalchemy as sa
from server_support import ADMIN_TOKEN, make_artifact, make_keys, register
from test_server_survival import serve

from mpseal.formats import trustroot
from mpseal.formats.updatemeta import parse_timestamp


def test_two_servers_with_separate_folders_against_one_postgresql(
    pg_url: str, tmp_path: Path
) -> None:
    engine = sa.create_engine(pg_url)
    with engine.begin() as conn:
        conn.execute(sa.text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
    engine.dispose()
    keys = make_keys(tmp_path / "keys")
    root1 = keys.trust_root
    root2 = trustroot.build(
        2,
        {
            "root": [keys.root.public_key],
            "release": [keys.release.public_key],
            "timestamp": [keys.timestamp.public_key],
        },
    )
    (keys.roots_dir / "2.mpsr").write_bytes(trustroot.sign_update(root1, root2, [keys.root]))
    only_one = tmp_path / "b-roots"  # machine B was never given root 2
    only_one.mkdir()
    shutil.copy(keys.roots_dir / "1.mpsr", only_one / "1.mpsr")
    a_dir, b_dir = tmp_path / "a", tmp_path / "b"
    a_dir.mkdir()
    b_dir.mkdir()
    fleet = register(pg_url, 5)
    h = fleet.headers("dev-00001")
    admin = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
    with serve(pg_url, keys, a_dir) as (a, _):
        with serve(pg_url, _with_roots(keys, only_one), b_dir) as (b, _):
            blob = make_artifact(keys.release, "1.1.0", 2, size=20_000)
            rid = httpx.post(f"{a}/v1/admin/releases", content=blob, headers=admin).json()[
                "release"
            ]["id"]
            assert (
                httpx.post(
                    f"{a}/v1/admin/releases/{rid}/promote", json={"percent": 100}, headers=admin
                ).status_code
                == 200
            )
            answer = httpx.post(
                f"{b}/v1/device/check",
                headers=h,
                json={
                    "hardware_id": "dev-00001",
                    "board": "esp32",
                    "app": "hello",
                    "version": "1.0.0",
                    "counter": 1,
                    "timestamp_version": 0,
                },
            ).json()
            assert answer["update"] is True and answer["root_version"] == 2
            got = httpx.get(f"{b}/v1/{answer['target']['path']}", headers=h)
            assert got.status_code == 200 and got.content == blob  # never on B's disk
            assert "immutable" in got.headers["cache-control"]
            r = httpx.get(f"{b}/v1/roots/2.mpsr", headers=h)  # B serves the root it adopted
            assert r.status_code == 200 and r.content == (keys.roots_dir / "2.mpsr").read_bytes()
            assert "immutable" in r.headers["cache-control"]
            assert not list((b_dir / "artifacts").glob("*.part"))

            # Both name root 2 and agree: the timestamp version does not climb while both
            # serve and refresh it (they used to re-sign each other's every half second).
            def version(url: str) -> int:
                raw = httpx.get(f"{url}/v1/timestamp/stable.mpst", headers=h).content
                return parse_timestamp(
                    raw, trustroot.parse((keys.roots_dir / "2.mpsr").read_bytes())
                ).version

            first = {version(a), version(b)}
            assert len(first) == 1
            time.sleep(3)
            assert {version(a), version(b)} == first


def _with_roots(keys, roots: Path):  # type: ignore[no-untyped-def]
    """The same keys, serving another roots folder (``serve`` reads keys.roots_dir)."""

    class K(type(keys)):  # type: ignore[misc]
        @property
        def roots_dir(self) -> Path:
            return roots

    return K(keys.root, keys.release, keys.timestamp, keys.folder)
