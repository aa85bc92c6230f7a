"""``mpseal.toml``: the product project's configuration, parsed and checked.

[app]
name = "hello"              # artifact name: dist/<name>-<version>.mpseal
version = "1.0.0"
security_counter = 1        # anti-rollback: devices refuse a lower one once committed
entry = "main"              # module the device imports; its main() is called if present

[build]
board = "esp32"             # sets the port, .mpy version and -march; a list builds several
source = "app"              # folder of .py modules (and data files), relative to the project
data = ["**/*.json"]        # globs (relative to source) copied verbatim into the image
opt = 2                     # mpy-cross -O level 0..3 (2 drops asserts and __debug__ code)
source_lines = false        # keep line numbers in tracebacks (leaks more to a reader)
encrypt = false             # encrypt the image, bound to each device (formats/encrypted.py)
# mpy_version = "6.3"       # override the board's .mpy version
# arch = "xtensawin"        # override the board's native arch
# filesystem_size = "2M"    # the device's filesystem (one size, or a table per board)

[keys]
release = "keys/release.pem"      # online-ish: signs builds
root = "keys/offline/root.pem"    # offline: signs the trust root; keep it off the build host
timestamp = "keys/timestamp.pem"  # online: the update server signs timestamps with it
trust_root = "keys/trust-root.mpsr"   # every version is also kept in keys/roots/<N>.mpsr

[lockdown]
profile = "dev"             # dev | field | sealed
"""

from __future__ import annotations

import difflib
import re
import tomllib
from dataclasses import dataclass, field, replace
from typing import TypeVar

from mpseal.errors import ConfigError, FormatError
from mpseal.formats.boards import MPY_VERSIONS, Board, get_board
from mpseal.formats.manifest import check_app_name, check_version

PROFILES = ("dev", "field", "sealed")
CONFIG_NAME = "mpseal.toml"


# Every key mpseal.toml may hold, with its type in words. Anything else is a mistake
# (a misspelled key would otherwise be ignored and its default used without a word).
SCHEMA: dict[str, dict[str, str]] = {
    "app": {"name": "text", "version": "text", "security_counter": "whole number", "entry": "text"},
    "build": {
        "board": "board name or list of board names",
        "source": "text",
        "data": "list of texts",
        "opt": "whole number",
        "source_lines": "true or false",
        "encrypt": "true or false",
        "mpy_version": "text",
        "arch": "text",
        "filesystem_size": 'size (e.g. "2M") or table of sizes per board',
    },
    "keys": {"release": "text", "root": "text", "timestamp": "text", "trust_root": "text"},
    "lockdown": {"profile": "text"},
}
_WORDS = {
    str: "text in quotes",
    int: "a whole number",
    bool: "true or false",
    list: "a list",
    dict: "a table",
}
_TOML_TYPE = {
    str: "text",
    int: "a whole number",
    float: "a decimal number",
    bool: "true/false",
    list: "a list",
    dict: "a table",
}


@dataclass(frozen=True)
class ProjectConfig:
    name: str
    version: str
    security_counter: int
    board: Board  # the first (main) board
    entry: str = "main"
    source: str = "app"
    data: tuple[str, ...] = ()
    opt: int = 2
    source_lines: bool = False
    mpy_version: str = "6.3"
    arch: str = "x64"
    release_key: str = "keys/release.pem"
    root_key: str = "keys/offline/root.pem"
    timestamp_key: str = "keys/timestamp.pem"
    trust_root: str = "keys/trust-root.mpsr"
    profile: str = "dev"
    boards: tuple[Board, ...] = ()  # every board the product ships on (board first)
    filesystem_size: dict[str, int] = field(default_factory=dict)  # board -> bytes, if set
    arch_set: bool = False  # arch/mpy_version were given: they apply to every board
    mpy_set: bool = False
    encrypt: bool = False  # formats/encrypted.py: the image encrypted, wrapped per device

    def for_board(self, name: str) -> ProjectConfig:
        """The same project built for another board: its port, -march and .mpy version."""
        board = get_board(name)
        return replace(
            self,
            board=board,
            arch=self.arch if self.arch_set else board.arch,
            mpy_version=self.mpy_version if self.mpy_set else board.mpy,
        )


def _suggest(word: str, choices: list[str]) -> str:
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(choices)}"


def _check_keys(doc: dict[str, object]) -> None:
    for name, value in doc.items():
        if name not in SCHEMA:
            raise ConfigError(
                f"{CONFIG_NAME}: unknown table [{name}]" + _suggest(name, list(SCHEMA))
            )
        if not isinstance(value, dict):
            raise ConfigError(
                f"{CONFIG_NAME}: [{name}] must be a table, not "
                f"{_TOML_TYPE.get(type(value), type(value).__name__)}"
            )
        for key in value:
            if key not in SCHEMA[name]:
                raise ConfigError(
                    f"{CONFIG_NAME}: unknown key {key!r} in [{name}]"
                    + _suggest(key, list(SCHEMA[name]))
                )


def _table(doc: dict[str, object], name: str) -> dict[str, object]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{CONFIG_NAME}: [{name}] must be a table")
    return value


T = TypeVar("T")


def _get(table: dict[str, object], section: str, key: str, kind: type[T], default: T | None) -> T:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{CONFIG_NAME}: [{section}] {key} is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        got = _TOML_TYPE.get(type(value), type(value).__name__)
        raise ConfigError(
            f"{CONFIG_NAME}: [{section}] {key} must be {_WORDS[kind]}, not {got} ({value!r})"
        )
    return value


_SIZE = re.compile(r"^\s*(\d+)\s*([KMG]?)i?B?\s*$", re.IGNORECASE)


def parse_size(value: object, where: str) -> int:
    """A size as a whole number of bytes or a text like "1408K", "2M"."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        return value
    m = _SIZE.match(value) if isinstance(value, str) else None
    if m is None or int(m.group(1)) <= 0:
        raise ConfigError(
            f'{CONFIG_NAME}: {where} must be a size such as "2M", "1408K" or '
            f"a whole number of bytes, not {value!r}"
        )
    return int(m.group(1)) * {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}[m.group(2).upper()]


def _boards(build: dict[str, object]) -> tuple[Board, ...]:
    raw = build.get("board")
    if raw is None:
        raise ConfigError(f"{CONFIG_NAME}: [build] board is required")
    names = [raw] if isinstance(raw, str) else raw
    if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
        raise ConfigError(
            f"{CONFIG_NAME}: [build] board must be a board name in quotes or a "
            f"list of them, not {raw!r}"
        )
    if len(set(names)) != len(names):
        raise ConfigError(f"{CONFIG_NAME}: [build] board lists a board twice")
    return tuple(get_board(str(n)) for n in names)


def _filesystem_sizes(build: dict[str, object], boards: tuple[Board, ...]) -> dict[str, int]:
    raw = build.get("filesystem_size")
    if raw is None:
        return {}
    if isinstance(raw, dict):
        out = {}
        for name, value in raw.items():
            get_board(name)
            out[name] = parse_size(value, f"[build] filesystem_size.{name}")
        return out
    size = parse_size(raw, "[build] filesystem_size")
    return {b.name: size for b in boards} | {"*": size}


def parse(text: str) -> ProjectConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{CONFIG_NAME} is not valid TOML: {e}") from None
    _check_keys(doc)
    app, build, keys, lock = (_table(doc, n) for n in ("app", "build", "keys", "lockdown"))
    boards = _boards(build)
    board = boards[0]
    data = _get(build, "build", "data", list, [])
    if not all(isinstance(d, str) for d in data):
        raise ConfigError(
            f'{CONFIG_NAME}: [build] data must be a list of globs in quotes, e.g. ["data/*"]'
        )
    opt = _get(build, "build", "opt", int, 2)
    if not 0 <= opt <= 3:
        raise ConfigError(f"{CONFIG_NAME}: [build] opt must be 0..3")
    mpy_version = _get(build, "build", "mpy_version", str, board.mpy)
    if mpy_version not in MPY_VERSIONS:
        raise ConfigError(
            f"{CONFIG_NAME}: [build] mpy_version {mpy_version!r} is not one of {MPY_VERSIONS}"
        )
    profile = _get(lock, "lockdown", "profile", str, "dev")
    if profile not in PROFILES:
        raise ConfigError(f"{CONFIG_NAME}: [lockdown] profile must be one of {', '.join(PROFILES)}")
    counter = _get(app, "app", "security_counter", int, 0)
    if not 0 <= counter < 2**31:
        raise ConfigError(f"{CONFIG_NAME}: [app] security_counter must be 0..2^31-1")
    try:
        name = check_app_name(str(_get(app, "app", "name", str, None)))
        version = check_version(str(_get(app, "app", "version", str, None)))
    except FormatError as e:
        raise ConfigError(f"{CONFIG_NAME}: {e}") from None
    entry = str(_get(app, "app", "entry", str, "main"))
    if not entry.isidentifier():
        raise ConfigError(f"{CONFIG_NAME}: [app] entry {entry!r} is not a module name")
    return ProjectConfig(
        name=name,
        version=version,
        security_counter=counter,
        board=board,
        entry=entry,
        source=str(_get(build, "build", "source", str, "app")),
        data=tuple(data),
        opt=opt,
        source_lines=bool(_get(build, "build", "source_lines", bool, False)),
        mpy_version=str(mpy_version),
        arch=str(_get(build, "build", "arch", str, board.arch)),
        release_key=str(_get(keys, "keys", "release", str, "keys/release.pem")),
        root_key=str(_get(keys, "keys", "root", str, "keys/offline/root.pem")),
        timestamp_key=str(_get(keys, "keys", "timestamp", str, "keys/timestamp.pem")),
        trust_root=str(_get(keys, "keys", "trust_root", str, "keys/trust-root.mpsr")),
        profile=str(profile),
        boards=boards,
        filesystem_size=_filesystem_sizes(build, boards),
        arch_set="arch" in build,
        mpy_set="mpy_version" in build,
        encrypt=bool(_get(build, "build", "encrypt", bool, False)),
    )
