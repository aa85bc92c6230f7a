"""The CycloneDX SBOM ``mpseal build`` writes beside each artifact (issue 15, part 3).

Checked with the CycloneDX project's own schema validator; every file of the image is
listed with the SHA-256 of its bytes in the image; packages come from requirements.txt
and mip package.json files; the signed manifest names the SBOM's hash; and the same
sources give the same bytes.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

from conftest import run_mpseal
from cyclonedx.schema import SchemaVersion
from cyclonedx.validation.json import JsonStrictValidator

from mpseal.formats import artifact, romfs
from mpseal.formats.manifest import parse as parse_manifest


def sbom_of(built: Path) -> tuple[bytes, dict]:  # type: ignore[type-arg]
    path = built.with_suffix(".cdx.json")
    data = path.read_bytes()
    return data, json.loads(data)


def test_sbom_is_valid_cyclonedx_and_lists_every_file_of_the_image(built: Path) -> None:
    data, doc = sbom_of(built)
    errors = JsonStrictValidator(SchemaVersion.V1_6).validate_str(data.decode())
    assert errors is None, errors
    art = artifact.decode(built.read_bytes())
    image = {f.path.lstrip("/"): f.data for f in romfs.read(art.image)}
    files = {c["name"]: c for c in doc["components"] if c["type"] == "file"}
    assert set(files) == set(image)
    for name, content in image.items():
        assert files[name]["hashes"] == [
            {"alg": "SHA-256", "content": hashlib.sha256(content).hexdigest()}
        ]
    app = doc["metadata"]["component"]
    manifest = parse_manifest(art.manifest_bytes)
    assert (app["name"], app["version"]) == (manifest.app, manifest.version)
    assert app["hashes"][0]["content"] == manifest.image_sha256
    props = {p["name"]: p["value"] for p in app["properties"]}
    assert props["mpseal:mpy.version"] == manifest.mpy_version
    assert props["mpseal:board"] == manifest.board
    tools = {t["name"]: t["version"] for t in doc["metadata"]["tools"]["components"]}
    assert "mpy-cross emitting mpy v" + manifest.mpy_version in tools["mpy-cross"]
    # The signed manifest names this SBOM: a published SBOM is checked against the release.
    assert manifest.build["sbom"] == hashlib.sha256(data).hexdigest()


def test_same_sources_give_the_same_sbom(project: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "proj"
    shutil.copytree(project, copy)
    for folder in (project, copy):
        assert run_mpseal("build", "-C", folder).returncode == 0
    a = (project / "dist/hello-1.0.0.cdx.json").read_bytes()
    b = (copy / "dist/hello-1.0.0.cdx.json").read_bytes()
    assert a == b
    assert str(tmp_path) not in a.decode()  # no host path leaks into it


def test_packages_from_requirements_and_mip_manifests(project: Path) -> None:
    (project / "requirements.txt").write_text(
        "micropython-ssd1306==0.1.0  # display\n# a comment\nunpinned\n"
    )
    (project / "package.json").write_text(json.dumps({"deps": [["aioble", "0.4.1"]]}))
    lib = project / "app" / "lib" / "sensorkit"
    lib.mkdir(parents=True)
    (lib / "package.json").write_text(json.dumps({"version": "2.3.0", "urls": []}))
    (lib / "__init__.py").write_text("VALUE = 1\n")
    assert run_mpseal("build", "-C", project).returncode == 0
    _, doc = sbom_of(project / "dist/hello-1.0.0.mpseal")
    libs = {c["name"]: c for c in doc["components"] if c["type"] == "library"}
    assert libs["micropython-ssd1306"]["version"] == "0.1.0"
    assert libs["micropython-ssd1306"]["purl"] == "pkg:pypi/micropython-ssd1306@0.1.0"
    assert libs["aioble"]["version"] == "0.4.1"
    assert libs["sensorkit"]["version"] == "2.3.0"
    assert "unpinned" not in libs
    deps = {d["ref"]: d.get("dependsOn", []) for d in doc["dependencies"]}
    assert deps["pkg:mip:sensorkit"] == ["file:lib/sensorkit/__init__.mpy"]


def test_a_broken_package_json_is_one_line(project: Path) -> None:
    (project / "package.json").write_text("{not json")
    res = run_mpseal("build", "-C", project)
    assert res.returncode == 2, res
    assert len(res.stderr.strip().splitlines()) == 1 and "package.json" in res.stderr
    assert not (project / "dist/hello-1.0.0.mpseal").exists()


def _canonical(value: object) -> object:
    if isinstance(value, dict):
        return {k: _canonical(v) for k, v in value.items()}
    if isinstance(value, list):
        return sorted((_canonical(v) for v in value), key=lambda v: json.dumps(v, sort_keys=True))
    return value


def test_direct_sbom_says_what_the_cyclonedx_library_says(monkeypatch) -> None:
    """make() writes the JSON itself (the library took 1.6 s for 400 modules: issue 12,
    start-up and cold build); the library's object model stays the reference."""
    from mpseal.packaging.sbom import Package, SbomInput, make, make_with_library

    files = {f"lib/sensor_kit/m{i}.mpy": (b"M\x06" + bytes([i]), b"x = %d\n" % i) for i in range(5)}
    files |= {"main.mpy": (b"M\x06main", b"print(1)\n"), "data/a.txt": (b"abc", b"abc")}
    inp = SbomInput(
        app="hello",
        version="1.2.3",
        board="esp32",
        port="esp32",
        mpy_version="6.3",
        arch="xtensawin",
        image_sha256="ab" * 32,
        opt=2,
        source_lines=False,
        config_sha256="cd" * 32,
        tools={"mpseal": "0.1.0", "mpy-cross": "MicroPython v1.29.0"},
        files=files,
        packages=(
            Package("micropython-SSD1306_x", "0.1.0", "pypi"),
            Package("unpinned", None, "pypi"),
            Package("sensor_kit", "2.3.0", "mip"),
        ),
    )
    for epoch in (None, "1700000000"):
        if epoch:
            monkeypatch.setenv("SOURCE_DATE_EPOCH", epoch)
        else:
            monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
        ours, reference = make(inp), make_with_library(inp)
        assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(ours.decode()) is None
        assert _canonical(json.loads(ours)) == _canonical(json.loads(reference))


def test_release_publish_stores_the_sbom_and_the_admin_api_serves_it(
    project: Path, tmp_path: Path
) -> None:
    """`release publish` uploads dist/<app>-<version>.cdx.json with the artifact; the server
    keeps only the SBOM whose SHA-256 the signed manifest names, and serves it back."""
    from ota_support import ota_world
    from release_support import release
    from server_support import ADMIN_TOKEN

    from mpseal.server.client import AdminClient

    with ota_world(tmp_path, f"sqlite:///{tmp_path / 'fleet.db'}", project) as world:
        release(project, "1.0.0", 1)
        art = project / "dist" / "hello-1.0.0.mpseal"
        sbom = art.with_suffix(".cdx.json")
        assert sbom.is_file()
        with AdminClient(world.server_url, ADMIN_TOKEN, ca=world.ca_dir / "root.pem") as client:
            rel = client.publish(art, "stable")
            assert rel["sbom"] is True
            assert client.sbom(rel["id"]) == sbom.read_bytes()
        with world.admin() as admin:  # an SBOM the release key did not vouch for: refused
            edited = sbom.read_bytes().replace(b"hello", b"hellx", 1)
            r = admin.put(f"/v1/admin/releases/{rel['id']}/sbom", content=edited)
            assert r.status_code == 400 and "build.sbom" in r.json()["error"]
            assert admin.get(f"/v1/admin/releases/{rel['id']}/sbom").content == sbom.read_bytes()
