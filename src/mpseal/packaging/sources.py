"""What goes into a build: the app's modules and data files, read from the source folder."""

from __future__ import annotations

import os
from dataclasses import dataclass

from mpseal.errors import ConfigError, FormatError
from mpseal.formats.manifest import check_file_name
from mpseal.packaging.mpycross import Module
from mpseal.packaging.project import Project

SKIP_DIRS = {"__pycache__"}


@dataclass(frozen=True)
class Sources:
    modules: list[Module]
    data: dict[str, bytes]
    dropped: tuple[str, ...] = ()  # files in the source folder that go into no build


def collect(project: Project) -> Sources:
    """Every ``.py`` under the source folder, plus the data files the config's globs name."""
    src = project.source_dir
    if not src.is_dir():
        raise ConfigError(f"source folder {src} does not exist; see [build] source in mpseal.toml")
    modules: list[Module] = []
    data: dict[str, bytes] = {}
    others: list[str] = []
    for rel in _walk(str(src)):
        if rel.endswith(".py"):
            with open(os.path.join(src, rel), "rb") as f:
                modules.append(Module(_checked(rel), f.read()))
        else:
            others.append(rel)
    for pattern in project.config.data:
        matched = [p for p in sorted(src.glob(pattern)) if p.is_file()]
        if not matched:
            raise ConfigError(f"[build] data pattern {pattern!r} matches no file in {src}")
        for path in matched:
            rel = "/".join(path.relative_to(src).parts)
            if path.suffix != ".py":
                data[_checked(rel)] = path.read_bytes()
    if not modules:
        raise ConfigError(f"no .py modules in {src}")
    entry = f"{project.config.entry}.py"
    if entry not in {m.name for m in modules}:
        raise ConfigError(f"entry module {entry} is not in {src}; see [app] entry")
    dropped = tuple(rel for rel in others if rel not in data)
    return Sources(modules, data, dropped)


def _walk(top: str) -> list[str]:
    """Every file under ``top`` as a '/'-separated relative path, in the order of
    ``sorted(Path(top).rglob("*"))`` (by path segments); folders and files whose name
    starts with '.' and __pycache__ are left out, symlinked folders are not followed.
    (os.scandir, not pathlib: a few hundred Path objects and their sorting cost more
    than reading the files.)"""
    out: list[tuple[list[str], str]] = []
    stack = [""]
    while stack:
        rel = stack.pop()
        try:
            entries = list(os.scandir(os.path.join(top, rel) if rel else top))
        except OSError:
            continue
        for e in entries:
            if e.name in SKIP_DIRS or e.name.startswith("."):
                continue
            path = f"{rel}/{e.name}" if rel else e.name
            if e.is_dir(follow_symlinks=False):
                stack.append(path)
            elif e.is_file():
                out.append((path.split("/"), path))
    out.sort()
    return [path for _, path in out]


def _checked(rel: str) -> str:
    try:
        return check_file_name(rel)
    except FormatError as e:
        raise ConfigError(f"cannot package {rel!r}: {e}") from None
