"""The device transport, on real MicroPython over a serial line.

Every test that takes ``serial_board`` runs twice: on the micro:bit firmware
(MicroPython 1.9.2, 16 KB RAM, no binascii/hashlib/os.rename, no raw-paste) in
QEMU, and on the virtual board (the unix port VM with a littlefs flash image)
behind a pty. Both go through the same ``SerialTransport``.
"""

from __future__ import annotations

import os
import random
import socket

import pytest
import serial
from mpremote.transport import TransportError as MpremoteTransportError
from serial_boards import SerialBoard

from mpseal.device.rawrepl import translated
from mpseal.device.serialboard import SerialTransport, helper_execs, helper_path
from mpseal.device.transport import DeviceError, LinkError, Transport, check_path
from mpseal.errors import FormatError, TransportError, UsageError

HOSTILE_PATHS = [
    "../a",
    "a/../b",
    "/a/..",
    "./a",
    ".hidden",
    "a\nb",
    "a'b",
    'a"b',
    "a\\b",
    "a//b",
    "",
    "/",
    "a/",
    "\x00",
    "ö",
    "a b",
    "-rf",
    "x" * 200,
]


def random_bytes(n: int, seed: int = 4) -> bytes:
    return random.Random(seed).randbytes(n)


def all_byte_values(n: int = 3000) -> bytes:
    """Every byte value several times over, then random bytes up to ``n``."""
    head = bytes(range(256)) * 4
    return head + random_bytes(n - len(head))


# -- the same suite on both boards ----------------------------------------------------


def test_is_a_transport(serial_board: SerialBoard) -> None:
    t: Transport = serial_board.connect()  # type-checks against the protocol
    assert isinstance(t, SerialTransport)


def test_exec_and_eval(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    assert t.exec("print('hello', 6 * 7)").strip() == "hello 42"
    assert t.eval("[1, 'a', b'\\x00\\xff', (2, None), {'k': True}]") == [
        1,
        "a",
        b"\x00\xff",
        (2, None),
        {"k": True},
    ]


def test_device_reply_that_is_not_a_literal_is_format_error(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    with pytest.raises(FormatError):
        t.eval("len")  # prints <function>, which literal_eval refuses (no eval on the host)


def test_device_exception_is_one_line_device_error(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    with pytest.raises(DeviceError) as info:
        t.exec("def f():\n    raise ValueError('boom')\nf()")
    err = info.value
    assert isinstance(err, TransportError)
    assert err.exc_type == "ValueError"
    assert "boom" in str(err) and "\n" not in str(err) and "Traceback" not in str(err)
    assert t.eval("1 + 1") == 2  # the connection is still usable


def test_binary_round_trip_every_byte_value(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    data = all_byte_values()
    t.write_file("blob.bin", data)
    assert t.read_file("blob.bin", limit=len(data)) == data
    names = t.listdir("/")
    assert "blob.bin" in names and "blob.bin.tmp" not in names


def test_text_round_trip_costs_less_than_base64_where_it_can(serial_board: SerialBoard) -> None:
    """Text (with quotes, backslashes, tabs, UTF-8) goes as a literal where that is shorter."""
    t = serial_board.connect()
    t.capabilities()
    text = (helper_path().read_bytes() + "'\"\\\t\r\n ö €\n".encode() * 20)[:3000]
    before = t.wire.tx
    t.write_file("src.py", text)
    ratio = (t.wire.tx - before) / len(text)
    assert t.read_file("src.py", len(text)) == text
    assert ratio <= (1.15 if t.capabilities().raw_paste else 1.4), ratio


def test_overwrite_and_empty_file(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    t.write_file("f.txt", b"first version, longer than the second")
    t.write_file("f.txt", b"second")
    assert t.read_file("f.txt", 100) == b"second"
    t.write_file("empty", b"")
    assert t.read_file("empty", 0) == b""


def test_read_over_the_limit_is_refused_before_transfer(serial_board: SerialBoard) -> None:
    """Endless data: a file larger than the caller's limit is never read."""
    t = serial_board.connect()
    t.write_file("big.bin", random_bytes(600))
    rx = t.wire.rx
    with pytest.raises(FormatError, match="over the 599-byte limit"):
        t.read_file("big.bin", limit=599)
    assert t.wire.rx - rx < 200  # only the size came back


def test_listdir_and_remove(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    t.write_file("a.txt", b"a")
    t.write_file("b.txt", b"b")
    assert {"a.txt", "b.txt"} <= set(t.listdir("/"))
    t.remove("a.txt")
    assert "a.txt" not in t.listdir("/")
    with pytest.raises(DeviceError) as info:
        t.remove("a.txt")
    assert info.value.exc_type == "OSError"


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_paths_never_reach_the_device(serial_board: SerialBoard, path: str) -> None:
    t = serial_board.connect()
    t.capabilities()
    before = t.wire.tx
    for call in (
        lambda: t.write_file(path, b"x"),
        lambda: t.read_file(path, 10),
        lambda: t.remove(path),
    ):
        with pytest.raises(UsageError):
            call()
    assert t.wire.tx == before


def test_write_cut_half_way_keeps_the_old_file(serial_board: SerialBoard) -> None:
    """Torn write: the line (micro:bit) or the power (virtual board) goes half-way through."""
    t = serial_board.connect()
    old = b"the old, good content\n" * 20
    t.write_file("conf.bin", old)
    new = random_bytes(max(3000, 4 * t.chunk_size()), seed=9)
    cut_at: list[int] = []

    def cut_half_way(done: int, total: int) -> None:
        if not cut_at and done >= total // 2:
            cut_at.append(done)
            serial_board.cut(t)

    with pytest.raises(LinkError):
        t.write_file("conf.bin", new, progress=cut_half_way)
    assert cut_at and cut_at[0] < len(new)  # it really stopped before the end

    t2 = serial_board.connect()
    assert t2.read_file("conf.bin", limit=len(old)) == old
    names = t2.listdir("/")
    assert names.count("conf.bin") == 1
    t2.write_file("conf.bin", new)  # and a later write goes through
    assert t2.read_file("conf.bin", limit=len(new)) == new
    assert "conf.bin.tmp" not in t2.listdir("/")


def test_timed_out_exec_then_the_transport_recovers(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    t.exec("import time")
    with pytest.raises(LinkError, match="did not answer in time"):
        t.exec("time.sleep(2)", timeout=0.5)
    assert t.eval("3 * 3", timeout=15) == 9


def test_binary_write_costs_at_most_1_4_wire_bytes_per_byte(serial_board: SerialBoard) -> None:
    """mpremote fs cp sends repr() chunks: ~2.9 bytes per byte of binary data."""
    t = serial_board.connect()
    t.capabilities()  # the helper is sent once per connection, not per file
    data = random_bytes(4096, seed=1)
    before = t.wire.tx
    t.write_file("w.bin", data)
    ratio = (t.wire.tx - before) / len(data)
    assert ratio <= 1.4, ratio
    assert t.read_file("w.bin", len(data)) == data


def test_capabilities_match_the_firmware(serial_board: SerialBoard) -> None:
    caps = serial_board.connect().capabilities()
    if serial_board.name == "microbit":
        assert caps.version[:2] == (1, 9) and caps.platform == "microbit"
        assert not (caps.binascii or caps.hashlib or caps.rename or caps.raw_paste)
        assert not caps.atomic_write
    else:
        assert caps.binascii and caps.hashlib and caps.rename and caps.raw_paste
        assert caps.atomic_write


def test_nested_folders_are_created_where_the_firmware_has_them(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    der = b"\x30\x03\x02\x01\x00"
    if not t.capabilities().mkdir:  # the micro:bit: one flat folder
        with pytest.raises(UsageError, match="no folders"):
            t.write_file("/mpseal/id.der", der)
        t.write_file("/id.der", der)  # a leading '/' is the root, not part of the name
        assert t.read_file("id.der", 5) == der and "id.der" in t.listdir("/")
        return
    t.write_file("/mpseal/keys/id.der", der)
    assert t.listdir("/mpseal/keys") == ["id.der"]
    assert t.read_file("/mpseal/keys/id.der", 5) == der


# -- the edge: foreign exceptions become mpseal's ----------------------------------------


def test_missing_port_is_link_error() -> None:
    with pytest.raises(LinkError):
        SerialTransport("/dev/mpseal-no-such-port")


def test_refused_socket_is_link_error() -> None:
    with socket.socket() as s:  # a port that was free a moment ago: nobody listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(LinkError):
        SerialTransport(f"socket://127.0.0.1:{port}")


def test_bad_url_is_usage_error() -> None:
    with pytest.raises(UsageError):
        SerialTransport("bogus-scheme://x")


@pytest.mark.parametrize(
    "exc",
    [
        MpremoteTransportError("could not enter raw repl"),
        serial.SerialException("device reports readiness to read but returned no data"),
        serial.SerialTimeoutException("write timeout"),
        OSError(5, "Input/output error"),
        BrokenPipeError(32, "Broken pipe"),
    ],
)
def test_foreign_errors_are_translated_at_the_edge(exc: Exception) -> None:
    with pytest.raises(LinkError) as info, translated("talking to the board"):
        raise exc
    assert info.value.__cause__ is None and info.value.__suppress_context__


def test_line_that_dies_mid_session_is_link_error(serial_board: SerialBoard) -> None:
    t = serial_board.connect()
    t.eval("1")
    os.close(t._repl.serial.fileno())  # the file descriptor goes away under pyserial
    with pytest.raises(LinkError):
        t.exec("print(1)")


# -- pure host-side pieces --------------------------------------------------------------


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_check_path_refuses(path: str) -> None:
    with pytest.raises(UsageError):
        check_path(path)


@pytest.mark.parametrize("path", ["a", "/a", "/mpseal/id.der", "lib/x_y-z.1.mpy", "A0"])
def test_check_path_accepts(path: str) -> None:
    assert check_path(path) == path


def test_device_error_parses_the_last_traceback_line() -> None:
    from mpseal.device.transport import device_error

    err = device_error(
        b'Traceback (most recent call last):\r\n  File "<stdin>", line 1\r\n'
        b"OSError: [Errno 2] ENOENT\r\n"
    )
    assert (err.exc_type, err.errno, err.line) == ("OSError", 2, "OSError: [Errno 2] ENOENT")
    hostile = device_error(b"Evil: \x1b[2J" + b"x" * 1000)
    assert "\x1b" not in str(hostile) and len(str(hostile)) < 260


def test_helper_execs_fit_a_small_heap_and_check_their_length() -> None:
    execs = helper_execs(helper_path().read_text())
    assert all(len(e) < 700 for e in execs)
    assert all("raise SyntaxError" in e for e in execs)
    assert not any("#" in e.split("\n")[0] for e in execs)  # comments are not sent


def test_out_of_ram_on_the_board_says_to_soft_reset_it(microbit_pty) -> None:
    """After `audit` the micro:bit's heap was too fragmented for the next command; the
    MemoryError came with no hint (issue 12). Real firmware: the micro:bit in QEMU."""
    from serial_boards import MicrobitBoard

    board = MicrobitBoard(microbit_pty)
    try:
        t = board.connect()
        with pytest.raises(DeviceError) as info:
            t.exec("x = bytearray(64 * 1024)")
        assert info.value.exc_type == "MemoryError"
        assert "soft-reset it (Ctrl-D at its REPL" in str(info.value)
        assert "\n" not in str(info.value)
    finally:
        board.close()
