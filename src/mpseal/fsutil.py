"""Atomic file writes: a temp file in the same folder, fsync, os.replace, clean up on error."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from mpseal.errors import ConfigError, FormatError, StorageError, UsageError


def storage_error(path: Path, e: OSError) -> StorageError:
    """An OSError from writing ``path`` as one line that says what to do."""
    hint = {
        28: "; free some space and run it again",
        30: " (read-only file system)",
        13: "; check the folder's permissions",
    }.get(e.errno or 0, "")
    return StorageError(f"cannot write {path}: {e.strerror or e}{hint}")


def write_atomic(
    path: Path, data: bytes, *, mode: int = 0o644, exclusive: bool = False, durable: bool = True
) -> None:
    """Write ``data`` to ``path`` so that a reader sees the old file or the new one, never half.

    With ``exclusive`` the write refuses to replace an existing file (used for keys).
    ``durable=False`` skips the fsync, for a cache whose loss only costs time.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise storage_error(path.parent, e) from None
    if exclusive and path.exists():
        raise UsageError(f"{path} already exists; refusing to overwrite it (move it away first)")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:
        raise storage_error(path, e) from None
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            if durable:
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
    except OSError as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise storage_error(path, e) from None
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def all_or_nothing(*folders: Path) -> Iterator[list[Path]]:
    """Undo a half-made set of files if the block raises (a full disk, Ctrl-C).

    Each of ``folders`` (and its parents) that does not exist yet is removed with all
    it holds; files the block appends to the yielded list, in folders that existed
    before, are removed one by one. A folder that existed before is never removed.
    """
    new_tops: list[Path] = []
    for folder in folders:
        folder = Path(folder).absolute()
        top = None
        while not folder.exists():
            top, folder = folder, folder.parent
        if top is not None and top not in new_tops:
            new_tops.append(top)
    written: list[Path] = []
    try:
        yield written
    except BaseException:
        for top in new_tops:
            shutil.rmtree(top, ignore_errors=True)
        for path in written:
            with contextlib.suppress(OSError):
                Path(path).unlink()
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


def read_private_key(path: Path, limit: int, what: str) -> bytes:
    """Read a private key file, refusing one that others may read (like ssh does).

    A key at 0644 on a shared build host or in a backup is a key anyone there can copy.
    """
    path = Path(path)
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise UsageError(f"{what} not found: {path}") from None
    except OSError as e:
        raise UsageError(f"{what} {path}: {e.strerror}") from None
    if os.name == "posix" and mode & 0o077:
        raise ConfigError(
            f"{what} {path} is readable by others (mode {mode & 0o777:04o}); run: chmod 600 {path}"
        )
    return read_limited(path, limit, what)
