"""``mpseal.toml``: the product project's configuration, parsed and checked.

    [app]
    name = "hello"              # artifact name: dist/<name>-<version>.mpseal
    version = "1.0.0"
    security_counter = 1        # anti-rollback: devices refuse a lower one once committed
    entry = "main"              # module the device imports; its main() is called if present

    [build]
    board = "esp32"             # sets the port, .mpy version and -march
    source = "app"              # folder of .py modules (and data files), relative to the project
    data = ["**/*.json"]        # globs (relative to source) copied verbatim into the image
    opt = 2                     # mpy-cross -O level 0..3 (2 drops asserts and __debug__ code)
    source_lines = false        # keep line numbers in tracebacks (leaks more to a reader)
    # mpy_version = "6.3"       # override the board's .mpy version
    # arch = "xtensawin"        # override the board's native arch

    [keys]
    release = "keys/release.pem"      # online-ish: signs builds
    root = "keys/offline/root.pem"    # offline: signs the trust root; keep it off the build host
    timestamp = "keys/timestamp.pem"  # online: the update server signs timestamps with it
    trust_root = "keys/trust-root.mpsr"   # every version is also kept in keys/roots/<N>.mpsr

    [lockdown]
    profile = "dev"             # dev | field | sealed
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field

from mpseal.errors import ConfigError, FormatError
from mpseal.formats.boards import MPY_VERSIONS, Board, get_board
from mpseal.formats.manifest import check_app_name, check_version

PROFILES = ("dev", "field", "sealed")
CONFIG_NAME = "mpseal.toml"


@dataclass(frozen=True)
class ProjectConfig:
    name: str
    version: str
    security_counter: int
    board: Board
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
    extra: dict[str, object] = field(default_factory=dict)


def _table(doc: dict[str, object], name: str) -> dict[str, object]:
    value = doc.get(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{CONFIG_NAME}: [{name}] must be a table")
    return value


def _get(table: dict[str, object], section: str, key: str, kind: type, default: object) -> object:
    value = table.get(key, default)
    if value is None:
        raise ConfigError(f"{CONFIG_NAME}: [{section}] {key} is required")
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise ConfigError(f"{CONFIG_NAME}: [{section}] {key} must be a {kind.__name__}")
    return value


def parse(text: str) -> ProjectConfig:
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{CONFIG_NAME} is not valid TOML: {e}") from None
    app, build, keys, lock = (_table(doc, n) for n in ("app", "build", "keys", "lockdown"))
    board = get_board(str(_get(build, "build", "board", str, None)))
    data = _get(build, "build", "data", list, [])
    if not all(isinstance(d, str) for d in data):  # type: ignore[union-attr]
        raise ConfigError(f"{CONFIG_NAME}: [build] data must be a list of glob strings")
    opt = _get(build, "build", "opt", int, 2)
    if not 0 <= opt <= 3:  # type: ignore[operator]
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
    if not 0 <= counter < 2**31:  # type: ignore[operator]
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
        security_counter=counter,  # type: ignore[arg-type]
        board=board,
        entry=entry,
        source=str(_get(build, "build", "source", str, "app")),
        data=tuple(data),  # type: ignore[arg-type]
        opt=opt,  # type: ignore[arg-type]
        source_lines=bool(_get(build, "build", "source_lines", bool, False)),
        mpy_version=str(mpy_version),
        arch=str(_get(build, "build", "arch", str, board.arch)),
        release_key=str(_get(keys, "keys", "release", str, "keys/release.pem")),
        root_key=str(_get(keys, "keys", "root", str, "keys/offline/root.pem")),
        timestamp_key=str(_get(keys, "keys", "timestamp", str, "keys/timestamp.pem")),
        trust_root=str(_get(keys, "keys", "trust_root", str, "keys/trust-root.mpsr")),
        profile=str(profile),
        extra={k: v for k, v in doc.items() if k not in ("app", "build", "keys", "lockdown")},
    )
