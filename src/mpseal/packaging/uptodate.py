"""A build that changed nothing is not redone: the inputs' fingerprint names the artifact.

The fingerprint covers everything that decides the artifact's bytes: mpseal's
version, mpseal.toml, the compiler binary, every module and data file (by
content), the release key and the trust root. When it matches the record left by
the last build and the artifact in dist/ still has the recorded SHA-256, the
build is up to date and nothing is compiled, packed or signed (so no passphrase
is asked for either).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from mpseal import __version__
from mpseal.errors import StorageError
from mpseal.formats.config import CONFIG_NAME
from mpseal.fsutil import write_atomic
from mpseal.packaging.mpycross import find_compiler
from mpseal.packaging.project import Project
from mpseal.packaging.sources import Sources

RECORD = "last-build.json"


def _file_digest(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return "missing"


def fingerprint(project: Project, sources: Sources) -> str:
    cfg = project.config
    compiler = find_compiler(cfg.mpy_version)
    st = compiler.stat()
    h = hashlib.sha256()
    parts = [
        f"mpseal {__version__}",
        _file_digest(project.root / CONFIG_NAME),
        f"{compiler}:{st.st_size}:{st.st_mtime_ns}",
        f"board {cfg.board.name} {cfg.arch} {cfg.mpy_version}",
        _file_digest(project.path(cfg.release_key)),
        _file_digest(project.path(cfg.trust_root)),
    ]
    parts += [f"m:{m.name}:{m.sha256}" for m in sources.modules]
    parts += [f"d:{n}:{hashlib.sha256(d).hexdigest()}" for n, d in sorted(sources.data.items())]
    for part in parts:
        h.update(part.encode())
        h.update(b"\0")
    return h.hexdigest()


def record_path(project: Project) -> Path:
    """One record per board: building one board never makes another's look stale."""
    return project.cache_dir / RECORD.replace(".json", f"{project.board_suffix}.json")


def record(project: Project, inputs: str, blob: bytes, summary: dict[str, Any]) -> None:
    """Remember this build. A record that cannot be written (disk full) is no error: the
    old record names another artifact hash, so the next build is simply done again."""
    try:
        write_atomic(
            durable=False,
            path=record_path(project),
            data=json.dumps(
                {
                    "inputs": inputs,
                    "artifact_sha256": hashlib.sha256(blob).hexdigest(),
                    "summary": summary,
                },
                sort_keys=True,
            ).encode(),
        )
    except StorageError:
        pass


def check(project: Project, sources: Sources, inputs: str | None = None) -> dict[str, Any] | None:
    """The last build's summary if it is still what a build would produce, else None.

    ``inputs``: the fingerprint of ``sources``, when the caller has it already."""
    try:
        rec = json.loads(record_path(project).read_bytes())
        summary = rec["summary"]
        if rec["inputs"] != (inputs or fingerprint(project, sources)):
            return None
        if Path(summary["artifact"]) != project.artifact_path():
            return None
        if _file_digest(project.artifact_path()) != rec["artifact_sha256"]:
            return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return dict(summary)
