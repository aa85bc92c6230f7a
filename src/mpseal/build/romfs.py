"""Packing files into a ROMFS image with mpremote's ``VfsRomWriter``, deterministically."""

from __future__ import annotations

from mpremote.romfs import VfsRomWriter

from mpseal.errors import UsageError
from mpseal.formats.manifest import check_file_name


def pack(files: dict[str, bytes]) -> bytes:
    """Build a ROMFS image from ``{"lib/util.mpy": b"...", ...}``.

    Entries are sorted, so the same files always give the same bytes.
    """
    tree: dict[str, object] = {}
    for path in sorted(files):
        check_file_name(path)
        node = tree
        *dirs, leaf = path.split("/")
        for d in dirs:
            sub = node.setdefault(d, {})
            if not isinstance(sub, dict):
                raise UsageError(f"{path}: {d} is both a file and a folder")
            node = sub
        node[leaf] = files[path]
    writer = VfsRomWriter()
    _emit(writer, tree)
    return bytes(writer.finalise())


def _emit(writer: VfsRomWriter, node: dict[str, object]) -> None:
    for name in sorted(node):
        value = node[name]
        if isinstance(value, dict):
            writer.opendir(name)
            _emit(writer, value)
            writer.closedir()
        else:
            writer.mkfile(name, value)
