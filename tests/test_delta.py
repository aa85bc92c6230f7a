"""Delta files (formats/delta.py on the host, runtime/mpseal_delta.py on the device): the
same bytes give the same answer on both sides, under the same limits; a delta rebuilds a
real release exactly; power lost at every write of a delta apply on the virtual board
leaves a bootable, validly signed image."""

from __future__ import annotations

import hashlib
import re
import zlib
from pathlib import Path

import pytest
from release_support import release

from mpseal.device.powercut import check_update
from mpseal.device.sim import VirtualBoard
from mpseal.device.vm import runtime_dir
from mpseal.errors import BadDataError
from mpseal.formats import delta
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.project import Project

BIG = """\
from mpseal_guard import confirm
TABLE = {table!r}
LIMIT = {limit}
def main():
    print("running {{version}}")
    confirm()
"""


def app(limit: int = 10) -> str:
    return BIG.format(table=[f"entry number {i}" for i in range(200)], limit=limit)


def test_device_limits_are_the_hosts() -> None:
    src = (runtime_dir() / "mpseal_delta.py").read_text()
    consts = dict(re.findall(r"^([A-Z_]+) = ([0-9* +]+)", src, re.M))
    lim = DEFAULT_LIMITS
    assert eval(consts["MAX_OPS"]) == lim.delta_max_ops
    assert eval(consts["MAX_OP"]) == lim.delta_max_op
    assert eval(consts["WBITS_MIN"]) == lim.delta_wbits_min
    assert eval(consts["WBITS_MAX"]) == lim.delta_wbits_max
    assert eval(consts["MAX_ARTIFACT"]) == lim.artifact_max_length
    assert delta.HEADER_LENGTH == int(consts["HEADER_LEN"])


def test_a_delta_rebuilds_the_new_release_exactly(project: Path) -> None:
    v1 = release(project, "1.0.0", 1, app(10))
    v2 = release(project, "1.0.1", 1, app(11))  # one constant changed
    d = delta.make(v1, v2)
    assert delta.apply(v1, d) == v2
    assert len(d) < len(v2) // 4, (len(d), len(v2))
    with pytest.raises(BadDataError, match="another source"):
        delta.apply(v2, d)


def _reheader(d: bytes, **change: int) -> bytes:
    """The delta with header fields changed and its check recomputed."""
    f = list(delta.HEADER.unpack_from(d))
    names = ["magic", "version", "wbits", "reserved", "ops", "lit", "src_len", "new_len"]
    for k, v in change.items():
        f[names.index(k)] = v
    head = bytearray(delta.HEADER.pack(*f))
    head[88:92] = hashlib.sha256(head[:88]).digest()[:4]
    return bytes(head) + d[delta.HEADER_LENGTH :]


def _restream(d: bytes, edit) -> bytes:  # type: ignore[no-untyped-def]
    """The delta with its inflated stream edited (ops and literals), recompressed."""
    head = delta.parse_header(d)
    plain = bytearray(zlib.decompress(d[delta.HEADER_LENGTH :], -head.wbits))
    plain = edit(plain)
    c = zlib.compressobj(9, zlib.DEFLATED, -head.wbits)
    stream = c.compress(bytes(plain)) + c.flush()
    return _reheader(d[: delta.HEADER_LENGTH] + stream, lit=len(stream))


def _first_op(kind: int, a: int, n: int):  # type: ignore[no-untyped-def]
    def edit(plain: bytearray) -> bytearray:
        plain[: delta.OP_LENGTH] = delta.OP.pack(kind, a, n)
        return plain

    return edit


def hostile_deltas(old: bytes, new: bytes) -> dict[str, bytes]:
    d = delta.make(old, new)
    head = delta.parse_header(d)
    plain = zlib.decompress(d[delta.HEADER_LENGTH :], -head.wbits)
    first = delta.OP.unpack_from(plain)
    return {
        "valid": d,
        "wrong magic": b"XPSD" + d[4:],
        "damaged header": d[:20] + bytes([d[20] ^ 1]) + d[21:],
        "window too large": _reheader(d, wbits=15),
        "too many ops": _reheader(d, ops=DEFAULT_LIMITS.delta_max_ops + 1),
        "truncated": d[:-1],
        "bytes after the stream": d + b"\0",
        "copy beyond the source": _restream(d, _first_op(delta.COPY, len(old), 1)),
        "copy before the source": _restream(d, _first_op(delta.COPY, -1, 1)),
        "zero-length op": _restream(d, _first_op(first[0], first[1], 0)),
        "op over the per-op bound": _restream(
            d, _first_op(delta.COPY, 0, DEFAULT_LIMITS.delta_max_op + 1)
        ),
        "unknown op": _restream(d, _first_op(7, 0, first[2])),
        "stream damaged": d[:-40] + bytes(b ^ 0x55 for b in d[-40:]),
        "stream cut inside the ops": _restream(d, lambda p: p[:4]),
        "stream with bytes after the ops": _restream(d, lambda p: p + b"x"),
        "ops longer than the artifact": _reheader(d, new_len=head.new_length - 1),
        "fewer ops than the header says": _reheader(d, ops=head.ops + 1),
        "another source": _reheader(d, src_len=len(old) + 1),
    }


def test_make_ends_on_short_matches_that_reach_back() -> None:
    """Regression: a 16-byte match extended backwards but still too short for a copy must
    not move the scan back (make() looped for ever on real code: benchmarks/delta.py)."""
    x = bytes(range(100, 116))
    old = b"AAAA" + x + bytes(range(200, 256))
    new = b"zzzzzzzzAAAA" + x + b"qqqqqqqqqqqq"
    d = delta.make(old, new)
    assert delta.apply(old, d) == new


def test_host_and_device_refuse_the_same_hostile_deltas(project: Path, tmp_path: Path) -> None:
    """Every crafted delta is fed to both parsers; both accept only the valid one, and the
    device's rebuild is byte for byte the new release."""
    old = release(project, "1.0.0", 1, app(10))
    new = release(project, "1.0.1", 1, app(11))
    cases = hostile_deltas(old, new)
    board = VirtualBoard.create(tmp_path / "board")
    board.install_guard(Project.load(project).trust_root(), "dev")
    files = {"/src.mpseal": old}
    files.update({f"/d{i}.mpsd": d for i, d in enumerate(cases.values())})
    board.put_many(files)
    for i, (name, d) in enumerate(cases.items()):
        try:
            host = delta.apply(old, d) == new
        except BadDataError:
            host = False
        res = board.command("delta-apply", f"/d{i}.mpsd", "/src.mpseal", "/out")
        reply = res.replies()[-1]
        assert isinstance(reply, dict), (name, res.stdout, res.stderr)
        device = "ok" in reply
        assert host == device == (name == "valid"), (name, host, reply)
        if device:
            assert board.get("/out") == new


def test_power_cut_at_every_write_of_a_delta_apply(project: Path, tmp_path: Path) -> None:
    """Stage by delta, power lost at every block write of the delta apply (torn writes
    too): the board always boots a validly signed release, old or new, and its security
    counter never drops. The trial and committed boots that follow run uncut: the slot a
    delta stages is byte for byte the full artifact, so their cuts are test_guard's
    test_power_cut_at_every_write_of_an_update_cycle."""
    root = Project.load(project).trust_root()
    v1 = release(project, "1.0.0", 1, app(10))
    v2 = release(project, "1.0.1", 2, app(11))
    board = VirtualBoard.create(tmp_path / "board")
    board.install(v1, root)
    assert board.boot().ran()
    report = check_update(
        board,
        v2,
        {"1.0.0", "1.0.1"},
        1,
        tear=True,
        delta=delta.make(v1, v2),
        cut_steps=("stage",),
    )
    assert report.failures() == []
    assert report.writes_per_step["stage"] > 5, report.writes_per_step
    assert report.tried >= 2 * report.writes_per_step["stage"]
    print(
        f"delta power cut: {report.survived}/{report.tried} survived, "
        f"writes per step {report.writes_per_step}, {report.booted} flashes powered on"
    )
    assert board.boot().ran()[-1][1] == "1.0.1"


def test_the_stock_pico_firmware_rebuilds_a_release_from_a_delta(project: Path) -> None:
    """Stock RPI_PICO v1.28.0 (rp2040js) has deflate.DeflateIO: mpseal_delta rebuilds the
    release byte for byte there, and refuses a damaged delta."""
    from pico_exec import pico_with

    old = release(project, "1.0.0", 1, app(10))
    new = release(project, "1.0.1", 1, app(11))
    d = delta.make(old, new)
    bad = d[:-40] + bytes(b ^ 0x55 for b in d[-40:])
    rt = runtime_dir()
    mods = ("mpseal_delta", "mpseal_release", "mpseal_port", "p256")  # port: Refused
    files = {f"{m}.py": (rt / f"{m}.py").read_bytes() for m in mods}
    with pico_with(files) as link:
        for name, data in (("/src", old), ("/d", d), ("/bad", bad)):
            link.write_file(name, data)
        out = link.exec(
            "import mpseal_delta, hashlib\n"
            "print(mpseal_delta.apply('/d', '/src', '/out'))\n"
            "h = hashlib.sha256()\n"
            "f = open('/out', 'rb')\n"
            "while True:\n"
            "    b = f.read(512)\n"
            "    if not b:\n"
            "        break\n"
            "    h.update(b)\n"
            "print(''.join('%02x' % x for x in h.digest()))\n"
            "try:\n"
            "    mpseal_delta.apply('/bad', '/src', '/out2')\n"
            "except mpseal_delta.Refused as e:\n"
            "    print('refused', e)\n",
            timeout=300,
        )
    lines = out.split()
    assert lines[0] == str(len(new))
    assert lines[1] == hashlib.sha256(new).hexdigest()
    assert "refused" in lines[2:]


@pytest.mark.slow
def test_power_cut_at_every_write_of_a_delta_apply_on_the_virtual_pico(tmp_path: Path) -> None:
    """The same on stock RPI_PICO firmware (rp2040js, its own littlefs): power lost at every
    flash erase and program of the delta apply (rebuild + check + stage), then the trial
    and committed boots run. Cuts in those two boots are test_pico_powercut's: the slot a
    delta stages is byte for byte the full artifact, so they are the same boots."""
    from pico_exec import committed_pico_and_next_release

    from mpseal.device.picoboard import PicoBoard
    from mpseal.device.powercut import check_update_pico

    sim, old, new = committed_pico_and_next_release(tmp_path)

    report = check_update_pico(
        PicoBoard(sim),
        new,
        {"1.0.0", "1.1.0"},
        min_counter=1,
        delta=delta.make(old, new),
        cut_steps=("stage",),
    )

    assert report.writes_per_step["stage"] > 0, report.writes_per_step
    assert report.survived == report.tried, report.failures()[:3]
    assert len(report.confirmed) == 3 and all(p.ok for p in report.confirmed)
    status = PicoBoard(sim).status()
    assert status["state"]["committed"] == "b" and status["state"]["counter"] == 2
    print(
        f"virtual Pico delta power cuts: {report.tried} points tried, {report.survived} "
        f"survived ({report.writes_per_step})"
    )
