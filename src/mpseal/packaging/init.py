"""``mpseal init``: a new product project with its example app, signing keys and trust root."""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.errors import UsageError
from mpseal.formats import trustroot
from mpseal.formats.boards import get_board
from mpseal.formats.config import CONFIG_NAME
from mpseal.fsutil import all_or_nothing, write_atomic

KEY_MODE = 0o600

CONFIG_TEMPLATE = """\
# mpseal project: see docs/config.md for every key.
[app]
name = "{name}"
version = "1.0.0"
security_counter = 1      # devices refuse a lower counter once a release is committed
entry = "main"            # the device imports this module and calls its main()

[build]
board = "{board}"          # {description}: .mpy {mpy}, -march={arch}
source = "app"
data = ["data/*"]         # copied verbatim into the image, next to the modules
opt = 2                   # mpy-cross -O level (0..3)
source_lines = false      # line numbers in tracebacks also help a reader of the .mpy

[keys]
release = "keys/release.pem"          # signs builds
root = "keys/offline/root.pem"        # signs the trust root: move it off this machine
timestamp = "keys/timestamp.pem"      # the update server signs timestamps (online)
trust_root = "keys/trust-root.mpsr"   # the device carries this; all versions in keys/roots/

[lockdown]
profile = "dev"           # dev | field | sealed
"""


@dataclass(frozen=True)
class InitResult:
    folder: Path
    files: list[Path]
    root_keyid: str
    release_keyid: str
    timestamp_keyid: str


def init_project(
    folder: Path, board_name: str, name: str | None = None, passphrase: bytes | None = None
) -> InitResult:
    board = get_board(board_name)
    folder = Path(folder)
    name = name or _default_name(folder)
    config_path = folder / CONFIG_NAME
    key_paths = [
        folder / "keys/offline/root.pem",
        folder / "keys/release.pem",
        folder / "keys/timestamp.pem",
        folder / "keys/trust-root.mpsr",
        folder / "keys/roots/1.mpsr",
    ]
    for path in [config_path, *key_paths]:
        if path.exists():
            raise UsageError(f"{path} already exists; refusing to overwrite a project or its keys")

    root = PrivateKeySigner.generate()
    release = PrivateKeySigner.generate()
    timestamp = PrivateKeySigner.generate()
    troot = trustroot.build(
        1,
        {
            "root": [root.public_key],
            "release": [release.public_key],
            "timestamp": [timestamp.public_key],
        },
    )
    root_blob = trustroot.sign(troot, [root])

    # A full disk or Ctrl-C half-way leaves nothing behind: init can simply be run again.
    with all_or_nothing(
        folder / "keys/offline", folder / "keys/roots", folder / "app/data"
    ) as written:
        # Keys first, each refusing to replace a file that appeared meanwhile.
        for path, signer in zip(key_paths[:3], (root, release, timestamp), strict=True):
            write_atomic(path, signer.to_pem(passphrase), mode=KEY_MODE, exclusive=True)
            written.append(path)
        for path in key_paths[3:]:
            write_atomic(path, root_blob, exclusive=True)
            written.append(path)
        (folder / "keys/offline").chmod(0o700)

        template = resources.files("mpseal.packaging") / "template"
        _copy_template(template, folder, written)
        write_atomic(
            config_path,
            CONFIG_TEMPLATE.format(
                name=name,
                board=board.name,
                description=board.description,
                mpy=board.mpy,
                arch=board.arch,
            ).encode(),
        )
        written.append(config_path)
        # Private keys, build outputs, virtual boards and the local registry stay out of
        # git; the trust roots (public) are meant to be committed.
        gitignore = folder / ".gitignore"
        if not gitignore.exists():
            written.append(gitignore)
        write_atomic(
            gitignore,
            b"/dist/\n/.mpseal-cache/\n/sim/\n/mpseal.db*\n"
            b"/keys/*.pem\n/keys/offline/\n/keys/retired/\n/ca/offline/\n/ca/*key*\n",
        )
    return InitResult(
        folder, written, root.public_key.keyid, release.public_key.keyid, timestamp.public_key.keyid
    )


def _copy_template(src: resources.abc.Traversable, dest: Path, out: list[Path]) -> None:
    for item in src.iterdir():
        if item.name == "__pycache__":
            continue
        target = dest / item.name
        if item.is_dir():
            _copy_template(item, target, out)
        elif not target.exists():
            write_atomic(target, item.read_bytes())
            out.append(target)


def _default_name(folder: Path) -> str:
    stem = folder.resolve().name
    clean = "".join(c if c.isalnum() or c in "_-." else "-" for c in stem).strip("-.")
    return clean or "app"
