"""The update client's HTTP parsing and deadlines on stock firmware: the virtual Pico
(stock RPI_PICO v1.28.0 in rp2040js) has no network, so it is fed the same hostile
server bytes the unix VM meets behind the mirror (tests/test_ota_attacks.py), through
a socket stand-in, and must give the same verdicts as the unix VM."""

from __future__ import annotations

import ast
import subprocess

import pytest
from pico_exec import pico_with

from mpseal.device import vm
from mpseal.device.guard_install import compiled_guard

pytestmark = pytest.mark.slow  # tests/conftest.py: long files start first

CASES = {
    "json-list": b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n[]",
    "target-list": b'HTTP/1.1 200 OK\r\nContent-Length: 30\r\n\r\n{"update": true, "target": []}',
    "no-space": b"HTTP/1.1200OK\r\nContent-Length: 2\r\n\r\n{}",
    "not-json": b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\n\xff\xfe{",
    "no-length": b"HTTP/1.1 200 OK\r\n\r\n{}",
    "chunked": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n0\r\n\r\n",
    "bad-length": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
    "too-big": b"HTTP/1.1 200 OK\r\nContent-Length: 999999\r\n\r\n",
    "long-line": b"HTTP/1.1 200 OK\r\nX: " + b"a" * 2000 + b"\r\n\r\n",
    "many-headers": b"HTTP/1.1 200 OK\r\n" + b"X: 1\r\n" * 40 + b"\r\n",
    "header-no-colon": b"HTTP/1.1 200 OK\r\nbroken\r\n\r\n",
    "closed-early": b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n{}",
    "busy": b"HTTP/1.1 503 Busy\r\nRetry-After: 7\r\nContent-Length: 4\r\n\r\nbusy",
    "good": b'HTTP/1.1 200 OK\r\nContent-Length: 17\r\n\r\n{"update": false}',
    "drip-headers": None,  # one byte every 0.4 s forever: the 2 s deadline cuts it
}

SCRIPT = """
import time, json
import mpseal_ota
from mpseal_release import Refused

class Sock:
    def __init__(self, data):
        self.data = data
    def write(self, b):
        return len(b)
    def recv(self, n):
        if self.data is None:
            time.sleep_ms(400)
            return b"x" if self.sent else (self.sent_head())
        out, self.data = self.data[:n], self.data[n:]
        return out
    sent = False
    def sent_head(self):
        self.sent = True
        return b"HTTP/1.1 200 OK\\r\\nX: "
    def close(self):
        pass

cfg = {"_host": "h", "deadline": 2, "round_deadline": 30}
out = {}
for name, data in CASES.items():
    http = mpseal_ota.Http(cfg, Sock(data))
    t = time.ticks_ms()
    try:
        status, body = http.request("POST", "/v1/device/check", b"{}")
        offer = json.loads(body)
        if not isinstance(offer, dict) or offer.get("update") not in (True, False, None):
            raise Refused("not an offer")
        v = "ok %d %s retry=%d" % (status, offer.get("update"), http.retry_after)
    except Refused as e:
        v = "refused: " + str(e)[:40]
    except OSError as e:
        v = "oserror"
    except ValueError:
        v = "not json retry=%d" % http.retry_after
    out[name] = (v, time.ticks_diff(time.ticks_ms(), t) // 1000)
print("MPSEAL:" + repr(out))
"""


def script() -> str:
    return "CASES = " + repr(CASES) + "\n" + SCRIPT


def parse(text: str) -> dict:
    line = next(ln for ln in text.splitlines() if ln.startswith("MPSEAL:"))
    return ast.literal_eval(line[len("MPSEAL:") :])


def test_hostile_replies_and_header_deadline_on_stock_rpi_pico(tmp_path) -> None:
    # The unix VM, with the runtime sources (the network test bed's own client).
    runner = tmp_path / "runner.py"
    runner.write_text(f"import sys\nsys.path.insert(0, {str(vm.runtime_dir())!r})\n" + script())
    unix = parse(
        subprocess.run(
            [str(vm.find_micropython()), str(runner)],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        ).stdout
    )
    # The Pico, with the guard's modules compiled for it, as `mpseal provision` installs them.
    files = {k.rsplit("/", 1)[1]: v for k, v in compiled_guard("rp2").items()}
    with pico_with(files) as link:
        pico = parse(link.exec(script(), timeout=240))
    assert {k: v[0] for k, v in pico.items()} == {k: v[0] for k, v in unix.items()}, (pico, unix)
    assert pico["good"][0] == "ok 200 False retry=0"
    assert pico["busy"][0] == "not json retry=7"  # Retry-After read from a 503
    assert pico["drip-headers"][0].startswith("refused: server missed the deadline")
    assert pico["drip-headers"][1] <= 3  # the 2 s deadline, plus the last 0.4 s read
    for name in (
        "json-list",
        "no-space",
        "not-json",
        "no-length",
        "chunked",
        "bad-length",
        "too-big",
        "long-line",
        "many-headers",
        "header-no-colon",
    ):
        assert not pico[name][0].startswith("ok"), (name, pico[name])
