"""The one-way layers of DESIGN.md, checked on the source: a lower layer never imports a higher."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "mpseal"

HOST_PACKAGES = [
    "formats",
    "crypto",
    "packaging",
    "device",
    "pki",
    "lockdown",
    "fleet",
    "cli",
    "server",
]
# package -> mpseal packages and third-party modules it must never import
FORBIDDEN = {
    "formats": {"packaging", "device", "pki", "lockdown", "fleet", "cli", "server", "runtime"},
    "crypto": {
        "formats",
        "packaging",
        "device",
        "pki",
        "lockdown",
        "fleet",
        "cli",
        "server",
        "runtime",
    },
    "packaging": {"device", "pki", "lockdown", "fleet", "cli", "server"},
    "device": {"cli", "server", "fleet"},
    "pki": {"cli", "server", "fleet"},
    "lockdown": {"cli", "server", "fleet"},
    "fleet": {"cli", "server"},
    "server": {"cli"},
}
UI_MODULES = {"click", "rich", "typer"}
PURE = {"formats", "crypto"}


def imported_modules(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


def files_of(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_lower_layer_never_imports_higher(package: str) -> None:
    bad = []
    for path in files_of(package):
        for mod in imported_modules(path):
            parts = mod.split(".")
            if parts[0] == "mpseal" and len(parts) > 1 and parts[1] in FORBIDDEN[package]:
                bad.append(f"{path.relative_to(SRC)} imports {mod}")
            if package != "cli" and parts[0] in UI_MODULES:
                bad.append(f"{path.relative_to(SRC)} imports UI module {mod}")
    assert not bad, "\n".join(bad)


@pytest.mark.parametrize("package", sorted(PURE))
def test_pure_layers_do_no_io(package: str) -> None:
    """formats/ and crypto/ never print, exit, open files or start processes."""
    bad = []
    for path in files_of(package):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                if node.func.id in {"print", "open", "exit", "input"}:
                    bad.append(f"{path.relative_to(SRC)}:{node.lineno} calls {node.func.id}()")
        for mod in imported_modules(path):
            if mod.split(".")[0] in {"subprocess", "socket", "sys", "os", "shutil"}:
                bad.append(f"{path.relative_to(SRC)} imports {mod}")
    assert not bad, "\n".join(bad)


def test_runtime_imports_nothing_from_the_host() -> None:
    """Device code imports only MicroPython modules and its own siblings."""
    allowed = {
        "vfs",
        "os",
        "sys",
        "struct",
        "json",
        "hashlib",
        "micropython",
        "machine",
        "gc",
        "time",
        "io",
        "errno",
        "binascii",
        "cryptolib",
        "ssl",
        "socket",
        "select",
        "asyncio",
        "random",
        "array",
        "collections",
        "uctypes",
        "network",
        "pyb",
        "esp",
        "esp32",
        "rp2",
        "ntptime",
        "ubinascii",
        "uos",
        "utime",
        "ustruct",
        "uhashlib",
        "ujson",
        "uerrno",
        "uio",
        "usocket",
        "ussl",
        "tls",
        "deflate",
    }
    siblings = {p.stem for p in (SRC / "runtime").glob("*.py")}
    bad = []
    for path in files_of("runtime"):
        for mod in imported_modules(path):
            top = mod.split(".")[0]
            if top not in allowed and top not in siblings:
                bad.append(f"{path.name} imports {mod}")
    assert not bad, "\n".join(bad)


def test_architecture_doc_lists_the_packages_and_their_layers() -> None:
    """docs/architecture.md stays true: one row per package that exists, and each row's
    "may import" column is exactly what FORBIDDEN allows."""
    doc = (SRC.parents[1] / "docs" / "architecture.md").read_text()
    rows = {
        m.group(1): m.group(2)
        for m in re.finditer(r"^\| `([a-z_]+)/` \|[^|]*\| ([^|]*) \|$", doc, re.MULTILINE)
    }
    packages = {p.name for p in SRC.iterdir() if (p / "__init__.py").exists()} | {"runtime"}
    assert set(rows) == packages, "docs/architecture.md: add or remove package rows"
    everyone = set(packages) - {"runtime"}
    for package, column in rows.items():
        if package in ("cli", "runtime", "crypto"):
            continue  # "everything" / "nothing": checked by the tests above
        allowed = everyone - FORBIDDEN.get(package, set()) - {package}
        listed = {name.strip() for name in column.split(",")}
        assert listed == allowed, (
            f"{package}: doc says {sorted(listed)}, layers allow {sorted(allowed)}"
        )
    assert rows["cli"] == "everything" and rows["crypto"] == rows["runtime"] == "nothing"
