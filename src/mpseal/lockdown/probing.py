"""Running small probes on a live device through the :class:`Transport`, for audit and warranty.

Two kinds of probe reach the device:

- an expression from the interface model (``probes.py``, ``levers.py``), evaluated as it stands;
- a function of ``runtime/mpseal_audit.py`` (device code shipped as a file, never pasted
  here): its source is sent length-checked, like the transfer helper, then called.

Every answer becomes an :class:`Outcome`: the value (a literal, parsed on the host), or
the name of the exception it raised on the device, or a host-side failure (the link, a
reply that is not a literal). Nothing raises out of here for a single probe: an audit
reports what it could and could not see. After :data:`MAX_LINK_FAILURES` failures of
the line in a row the device is taken as gone and later probes are not sent.
"""

from __future__ import annotations

import ast
import functools
from collections.abc import Callable
from dataclasses import dataclass

from mpseal.device import vm
from mpseal.device.serialboard import helper_execs
from mpseal.device.transport import DeviceError, LinkError, Transport
from mpseal.errors import FormatError, UsageError

HELPER = "mpseal_audit.py"
MAX_LINK_FAILURES = 2
LOST_BYTES = frozenset({"SyntaxError", "IndentationError"})  # a definition damaged on the line
SMALL_HEAP = 32 * 1024  # below this much free heap, helpers are deleted after each use
# Frees what mpseal's own helpers (the transfer helper mpx_*, these probes mpa_*) left in
# the REPL's globals on this boot: on a micro:bit they hold most of its 8 KB of heap.
# Nothing else is touched; the transport loads its helper again when it needs it.
FREE_OWN_HELPERS = (
    "for _k in [k for k in globals() if k[:4] in ('mpx_', 'mpa_')]:\n"
    " del globals()[_k]\n"
    "__import__('gc').collect()"
)
TEXT_MAX = 240


def clean(text: str, limit: int = TEXT_MAX) -> str:
    """Untrusted device text made safe to show: printable characters only, bounded."""
    out = "".join(c if c.isprintable() else "?" for c in text)
    return out if len(out) <= limit else out[:limit] + "..."


@dataclass(frozen=True)
class Outcome:
    """What one probe gave: a value, an exception on the device, or a host-side failure."""

    value: object = None
    raised: str | None = None  # the exception's name on the device
    failed: str | None = None  # the probe could not run or its reply was unusable

    @property
    def ok(self) -> bool:
        return self.raised is None and self.failed is None

    @property
    def token(self) -> str:
        """``repr(value)`` or ``"raises <Name>"``: what interface probes' verdicts name."""
        if self.failed is not None:
            return "failed"
        if self.raised is not None:
            return f"raises {self.raised}"
        return repr(self.value)

    def text(self) -> str:
        if self.failed is not None:
            return clean(f"not run: {self.failed}")
        return clean(self.token)


@functools.cache
def helper_source(name: str) -> str:
    """The source of one top-level function of ``runtime/mpseal_audit.py``."""
    path = vm.runtime_dir() / HELPER
    source = path.read_text()
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef) and node.name == name:
            segment = ast.get_source_segment(source, node)
            if segment:
                return segment
    raise UsageError(f"{HELPER} has no function {name!r}")


class DeviceProbes:
    """Probes on one connected device; :meth:`close` deletes the helpers it defined."""

    def __init__(self, transport: Transport, *, timeout: float = 10.0) -> None:
        self.transport = transport
        self.timeout = timeout
        self.small_heap = True  # until the device said otherwise (set_heap)
        self._defined: set[str] = set()
        self._link_failures = 0
        self.gone: str | None = None  # why the device stopped answering

    def prepare(self) -> Outcome:
        """Free the heap mpseal's own helpers hold (see FREE_OWN_HELPERS)."""
        return self.output(FREE_OWN_HELPERS)

    def set_heap(self, mem_free: object) -> None:
        self.small_heap = not (isinstance(mem_free, int) and mem_free >= SMALL_HEAP)

    # -- running --------------------------------------------------------------------

    def value(self, expr: str, timeout: float | None = None) -> Outcome:
        """Evaluate a MicroPython expression on the device."""
        return self._attempt(lambda: self.transport.eval(expr, timeout or self.timeout))

    def call(self, helper: str, expr: str, timeout: float | None = None) -> Outcome:
        """Define ``helper`` (a function of mpseal_audit.py) if needed, then evaluate ``expr``."""
        defined = self._define(helper)
        if defined is not None:
            return defined
        try:
            return self.value(expr, timeout)
        finally:
            if self.small_heap:
                self._forget(helper)

    def lines(
        self, helper: str, statement: str, *, max_lines: int, timeout: float | None = None
    ) -> Outcome:
        """Run ``statement`` (which prints one literal per line); the value is their list."""
        defined = self._define(helper)
        if defined is not None:
            return defined
        try:
            out = self._attempt(lambda: self.transport.exec(statement, timeout or self.timeout))
            if not out.ok:
                return out
            assert isinstance(out.value, str)
            rows = [ln.strip() for ln in out.value.splitlines() if ln.strip()]
            if len(rows) > max_lines:
                return Outcome(failed=f"the device sent {len(rows)} lines, over {max_lines}")
            values = []
            for row in rows:
                try:
                    values.append(ast.literal_eval(row))
                except (ValueError, SyntaxError, MemoryError, RecursionError, TypeError):
                    return Outcome(failed=f"a reply line is not a literal: {clean(row, 60)!r}")
            return Outcome(values)
        finally:
            if self.small_heap:
                self._forget(helper)

    def output(self, statement: str, timeout: float | None = None) -> Outcome:
        """Run a statement; the value is the text it printed."""
        return self._attempt(lambda: self.transport.exec(statement, timeout or self.timeout))

    def close(self) -> None:
        for name in sorted(self._defined):
            self._forget(name)

    # -- internals ------------------------------------------------------------------

    def _attempt(self, run: Callable[[], object]) -> Outcome:
        if self.gone is not None:
            return Outcome(failed=f"the device no longer answers ({self.gone})")
        try:
            value = run()
        except DeviceError as e:
            self._link_failures = 0
            return Outcome(raised=e.exc_type[:40] or "Exception")
        except FormatError as e:
            self._link_failures = 0
            return Outcome(failed=str(e))
        except LinkError as e:
            self._link_failures += 1
            if self._link_failures >= MAX_LINK_FAILURES:
                self.gone = str(e)
            return Outcome(failed=str(e))
        self._link_failures = 0
        return Outcome(value)

    def _define(self, helper: str) -> Outcome | None:
        """None once ``helper`` is defined on the device; else why it could not be."""
        if helper in self._defined:
            return None
        for code in helper_execs(helper_source(helper)):
            for _ in range(3):  # a definition that lost bytes on the line fails to compile
                out = self.output(code)
                if out.raised not in LOST_BYTES:
                    break
            if not out.ok:
                return Outcome(raised=out.raised, failed=out.failed)
        self._defined.add(helper)
        return None

    def _forget(self, helper: str) -> None:
        if helper in self._defined:
            self._defined.discard(helper)
            self.output(f"try:\n del {helper}\nexcept NameError:\n pass")
