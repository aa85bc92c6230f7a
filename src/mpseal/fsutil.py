"""Atomic file writes: a temp file in the same folder, fsync, os.replace, clean up on error."""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path

from mpseal.errors import FormatError, UsageError


def write_atomic(path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    With ``exclusive`` the write refuses to replace an existing file (used for keys).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if exclusive and path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite it (move it away first)")
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if exclusive:
            # link() fails if the target appeared meanwhile: no race can overwrite a key.
            try:
                os.link(tmp, path)
            except FileExistsError:
                raise UsageError(
                    f"{path} already exists; refusing to overwrite it (move it away first)"
                ) from None
            os.unlink(tmp)
        else:
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def read_limited(path: Path, limit: int, what: str) -> bytes:
    """Read a file of unknown origin, refusing one larger than ``limit`` bytes."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except IsADirectoryError:
        raise UsageError(f"{what} is a directory, not a file: {path}") from None
    if len(data) > limit:
        raise FormatError(f"{what} {path} is larger than the {limit}-byte limit")
    return data
