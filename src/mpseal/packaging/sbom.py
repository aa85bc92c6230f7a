"""A CycloneDX SBOM per build: what is inside an artifact, where it came from, how it was made.

Written by ``mpseal build`` beside the artifact (``dist/<app>-<version>.cdx.json``) with
the CycloneDX project's own library (``cyclonedx-python-lib``), JSON, spec 1.6:

- the app as the BOM's subject, with the image's SHA-256, board, port, .mpy version/arch;
- one ``file`` component per module and data file in the image: the SHA-256 of the bytes
  in the image and of the source they came from;
- the packages they came from, where the project says: ``requirements.txt`` pins
  (``name==version``, purl ``pkg:pypi``) and mip ``package.json`` files (the app's
  ``deps``, and ``lib/<name>/package.json`` folders), with the files under
  ``lib/<name>`` attributed to package ``<name>``;
- the tools and inputs: mpseal, mpy-cross (their versions), ``-O`` level, line numbers
  kept or not, and the SHA-256 of ``mpseal.toml``.

Reproducible: the same sources and tools give the same bytes. The serial number is a
UUID derived from the content; the timestamp is ``SOURCE_DATE_EPOCH`` when set and is
left out otherwise. The SBOM's SHA-256 goes into the signed manifest (``build.sbom``),
so a published SBOM can be checked against the release it describes.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from mpseal.errors import ConfigError
from mpseal.fsutil import read_limited

SPEC = "1.6"
MAX_PACKAGE_FILE = 256 * 1024
_PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)\s*==\s*([A-Za-z0-9][A-Za-z0-9.+!_-]*)\s*(#.*)?$")


@dataclass(frozen=True)
class Package:
    name: str
    version: str | None
    source: str  # "pypi" or "mip"
    folder: str | None = None  # files under this image folder belong to the package


@dataclass(frozen=True)
class SbomInput:
    app: str
    version: str
    board: str
    port: str
    mpy_version: str
    arch: str
    image_sha256: str
    opt: int
    source_lines: bool
    config_sha256: str
    tools: dict[str, str]  # name -> version
    files: dict[str, tuple[bytes, bytes | None]]  # image name -> (bytes in image, source)
    packages: tuple[Package, ...] = field(default_factory=tuple)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def find_packages(project_root: Path, source_dir: Path) -> tuple[Package, ...]:
    """The packages a project declares: requirements.txt pins and mip package.json files."""
    found: dict[str, Package] = {}
    req = project_root / "requirements.txt"
    if req.is_file():
        for line in (
            read_limited(req, MAX_PACKAGE_FILE, "requirements.txt")
            .decode("utf-8", "replace")
            .splitlines()
        ):
            m = _PIN.match(line.strip())
            if m:
                found[_norm(m.group(1))] = Package(m.group(1), m.group(2), "pypi")
    manifests = [project_root / "package.json"]
    manifests += sorted(source_dir.glob("lib/*/package.json"))
    for path in manifests:
        if not path.is_file():
            continue
        try:
            doc = json.loads(read_limited(path, MAX_PACKAGE_FILE, "package.json"))
        except ValueError as e:
            raise ConfigError(f"{path} is not valid JSON ({e}); fix it or remove it") from None
        if not isinstance(doc, dict):
            raise ConfigError(f"{path} is not a mip package.json object")
        if path.parent != project_root:
            name = path.parent.name
            version = doc.get("version")
            found[_norm(name)] = Package(
                name, version if isinstance(version, str) else None, "mip", f"lib/{name}"
            )
        for dep in doc.get("deps", []):
            if isinstance(dep, list) and dep and isinstance(dep[0], str):
                version = dep[1] if len(dep) > 1 and isinstance(dep[1], str) else None
                name = dep[0].rsplit("/", 1)[-1]
                found.setdefault(_norm(name), Package(name, version, "mip"))
    return tuple(found[k] for k in sorted(found))


def _owner(name: str, packages: tuple[Package, ...]) -> Package | None:
    parts = name.split("/")
    if len(parts) < 2 or parts[0] != "lib":
        return None
    stem = parts[1][:-4] if parts[1].endswith(".mpy") else parts[1]
    for pkg in packages:
        if _norm(pkg.name) == _norm(stem):
            return pkg
    return None


def make(inp: SbomInput) -> bytes:
    """The SBOM as JSON bytes (sorted keys, no insignificant whitespace).

    Written directly as CycloneDX 1.6 JSON: the library's object model costs about 4 ms
    per file (its dependency graph is quadratic), 1.6 s for a 400-module app, more than
    compiling it. tests/test_sbom.py checks this against the library's own output
    (make_with_library) and its schema validator.
    """

    def sha(hexdigest: str) -> list[dict[str, str]]:
        return [{"alg": "SHA-256", "content": hexdigest}]

    def props(pairs: list[tuple[str, str]]) -> list[dict[str, str]]:
        return [{"name": n, "value": v} for n, v in sorted(pairs)]

    app: dict[str, object] = {
        "bom-ref": "app",
        "type": "firmware",
        "name": inp.app,
        "version": inp.version,
        "hashes": sha(inp.image_sha256),
        "properties": props(
            [
                (f"mpseal:{k}", str(v))
                for k, v in (
                    ("board", inp.board),
                    ("port", inp.port),
                    ("mpy.version", inp.mpy_version),
                    ("mpy.arch", inp.arch),
                    ("build.opt", inp.opt),
                    ("build.source_lines", str(inp.source_lines).lower()),
                    ("build.config_sha256", inp.config_sha256),
                )
            ]
        ),
    }
    metadata: dict[str, object] = {
        "component": app,
        "tools": {
            "components": [
                {"bom-ref": f"tool:{name}", "type": "application", "name": name, "version": version}
                for name, version in sorted(inp.tools.items())
            ]
        },
    }
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    if epoch.isdigit():
        metadata["timestamp"] = dt.datetime.fromtimestamp(int(epoch), dt.UTC).isoformat()
    components: list[dict[str, object]] = []
    depends: dict[str, list[str]] = {"app": []}
    for pkg in sorted(inp.packages, key=lambda p: (p.source, p.name)):
        comp: dict[str, object] = {
            "bom-ref": f"pkg:{pkg.source}:{pkg.name}",
            "type": "library",
            "group": pkg.source,
            "name": pkg.name,
        }
        if pkg.version is not None:
            comp["version"] = pkg.version
        if pkg.source == "pypi":
            comp["purl"] = _purl(pkg.name, pkg.version)
        components.append(comp)
        depends["app"].append(str(comp["bom-ref"]))
        depends[str(comp["bom-ref"])] = []
    for name in sorted(inp.files):
        data, source = inp.files[name]
        ref = f"file:{name}"
        comp = {
            "bom-ref": ref,
            "type": "file",
            "name": name,
            "hashes": sha(hashlib.sha256(data).hexdigest()),
        }
        if source is not None and source != data:
            comp["properties"] = props(
                [("mpseal:sha256.source", hashlib.sha256(source).hexdigest())]
            )
        components.append(comp)
        owner = _owner(name, inp.packages)
        depends[f"pkg:{owner.source}:{owner.name}" if owner else "app"].append(ref)
        depends[ref] = []
    serial = uuid.uuid5(
        uuid.NAMESPACE_URL,
        "mpseal:"
        + "/".join((inp.app, inp.version, inp.board, inp.image_sha256, inp.config_sha256)),
    )
    doc = {
        "$schema": "http://cyclonedx.org/schema/bom-1.6.schema.json",
        "bomFormat": "CycloneDX",
        "specVersion": SPEC,
        "serialNumber": serial.urn,
        "version": 1,
        "metadata": metadata,
        "components": components,
        "dependencies": [
            {"ref": ref, "dependsOn": sorted(deps)} if deps else {"ref": ref}
            for ref, deps in sorted(depends.items())
        ],
    }
    return json.dumps(doc, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def _purl(name: str, version: str | None) -> str:
    """A pkg:pypi package URL (the packageurl spec's quoting for these characters)."""
    from urllib.parse import quote

    purl = f"pkg:pypi/{quote(name.lower().replace('_', '-'), safe='.-')}"
    return purl if version is None else f"{purl}@{quote(version, safe='.+-!')}"


def make_with_library(inp: SbomInput) -> bytes:
    """The same SBOM through cyclonedx-python-lib's object model (the reference, in tests)."""
    from cyclonedx.model import HashAlgorithm, HashType, Property
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6
    from packageurl import PackageURL

    def sha(data: bytes) -> HashType:
        return HashType(alg=HashAlgorithm.SHA_256, content=hashlib.sha256(data).hexdigest())

    app = Component(
        name=inp.app,
        version=inp.version,
        type=ComponentType.FIRMWARE,
        bom_ref="app",
        hashes=[HashType(alg=HashAlgorithm.SHA_256, content=inp.image_sha256)],
        properties=[
            Property(name=f"mpseal:{k}", value=str(v))
            for k, v in (
                ("board", inp.board),
                ("port", inp.port),
                ("mpy.version", inp.mpy_version),
                ("mpy.arch", inp.arch),
                ("build.opt", inp.opt),
                ("build.source_lines", str(inp.source_lines).lower()),
                ("build.config_sha256", inp.config_sha256),
            )
        ],
    )
    bom = Bom(
        serial_number=uuid.uuid5(
            uuid.NAMESPACE_URL,
            "mpseal:"
            + "/".join((inp.app, inp.version, inp.board, inp.image_sha256, inp.config_sha256)),
        )
    )
    bom.metadata.component = app
    epoch = os.environ.get("SOURCE_DATE_EPOCH", "")
    stamp = dt.datetime.fromtimestamp(int(epoch), dt.UTC) if epoch.isdigit() else None
    bom.metadata.timestamp = stamp  # type: ignore[assignment]
    # (cyclonedx types it as datetime; None leaves the time out, as a reproducible build wants)
    for name, version in sorted(inp.tools.items()):
        bom.metadata.tools.components.add(
            Component(
                name=name, version=version, type=ComponentType.APPLICATION, bom_ref=f"tool:{name}"
            )
        )
    packages = {}
    for pkg in inp.packages:
        purl = (
            PackageURL("pypi", name=pkg.name, version=pkg.version) if pkg.source == "pypi" else None
        )
        comp = Component(
            name=pkg.name,
            version=pkg.version,
            type=ComponentType.LIBRARY,
            group=pkg.source,
            purl=purl,
            bom_ref=f"pkg:{pkg.source}:{pkg.name}",
        )
        packages[pkg.name] = comp
        bom.components.add(comp)
    owned: dict[str, list[Component]] = {}
    for name in sorted(inp.files):
        data, source = inp.files[name]
        hashes = [sha(data)]
        props = (
            [Property(name="mpseal:sha256.source", value=hashlib.sha256(source).hexdigest())]
            if source is not None and source != data
            else []
        )
        comp = Component(
            name=name,
            type=ComponentType.FILE,
            hashes=hashes,
            properties=props,
            bom_ref=f"file:{name}",
        )
        bom.components.add(comp)
        owner = _owner(name, inp.packages)
        owned.setdefault(owner.name if owner else "", []).append(comp)
    bom.register_dependency(app, [*packages.values(), *owned.get("", [])])
    for pkg_name, comp in packages.items():
        if owned.get(pkg_name):
            bom.register_dependency(comp, owned[pkg_name])
    text = JsonV1Dot6(bom).output_as_string(indent=None)
    return json.dumps(json.loads(text), sort_keys=True, separators=(",", ":")).encode() + b"\n"
