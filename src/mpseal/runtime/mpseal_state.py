# The guard's boot state, stored power-loss safe on littlefs.
#
# Two copies, /mpseal/state.a and /mpseal/state.b, each "JSON\nSHA256HEX" with a
# sequence number. A save writes the copy NOT holding the newest state (as a
# .tmp file, then rename over it: atomic on littlefs), so at every instant at
# least one intact copy holds either the old or the new state. Load takes the
# intact copy with the highest sequence number; a copy full of garbage is ignored.

import hashlib
import json
import os

from micropython import const

FIELDS = ("seq", "committed", "trial", "tries", "counter", "unlocks", "fails")
_MAX_STATE = const(1024)


class State:
    def __init__(self, seq=0, committed=None, trial=None, tries=0, counter=0, unlocks=0, fails=0):
        self.seq = seq
        self.committed = committed  # "a", "b" or None
        self.trial = trial  # slot on trial, or None
        self.tries = tries  # boots of the trial so far
        self.counter = counter  # security counter of the last committed image
        self.unlocks = unlocks  # service unlock tokens used (each token names the next number)
        self.fails = fails  # boots in a row in which the committed image failed quickly

    def to_dict(self):
        return {k: getattr(self, k) for k in FIELDS}


try:
    from binascii import hexlify as _hexlify
except ImportError:  # a firmware without binascii: the same text, ~20x slower
    _hexlify = None


def _hex(b):
    if _hexlify:
        return _hexlify(b).decode()
    return "".join("%02x" % x for x in b)


def _read(path):
    try:
        with open(path, "rb") as f:
            raw = f.read(_MAX_STATE + 1)
    except OSError:
        return None
    try:
        body, digest = raw.split(b"\n")
        if len(raw) > _MAX_STATE or _hex(hashlib.sha256(body).digest()).encode() != digest:
            return None
        d = json.loads(body)
        st = State(d["seq"], d["committed"], d["trial"], d["tries"], d["counter"], d["unlocks"],
                   d.get("fails", 0))
    except (ValueError, KeyError, TypeError):
        return None
    for slot in (st.committed, st.trial):
        if slot not in (None, "a", "b"):
            return None
    for n in (st.seq, st.tries, st.counter, st.unlocks, st.fails):
        if type(n) is not int or n < 0:
            return None
    return st


def load(folder):
    """Return (newest intact State or None, number of damaged copies found)."""
    best = None
    damaged = 0
    for name in ("state.a", "state.b"):
        path = folder + "/" + name
        st = _read(path)
        if st is None:
            try:
                os.stat(path)
                damaged += 1
            except OSError:
                pass
            continue
        if best is None or st.seq > best.seq:
            best = st
    return best, damaged


def save(folder, st):
    st.seq += 1
    body = json.dumps(st.to_dict()).encode()
    path = folder + ("/state.a" if st.seq % 2 else "/state.b")
    with open(path + ".tmp", "wb") as f:
        f.write(body + b"\n" + _hex(hashlib.sha256(body).digest()).encode())
    os.rename(path + ".tmp", path)


def check_config(cfg, mounts):
    """device.json's values over the guard's defaults (mpseal_guard.config); ValueError
    says which is wrong. (Here, in the boot pack, to keep mpseal_guard's own file small.)"""
    for key, lo in (("max_tries", 1), ("max_image", 1), ("max_fails", 1)):
        if type(cfg[key]) is not int or cfg[key] < lo:
            raise ValueError("%s is not a whole number >= %d" % (key, lo))
    if not isinstance(cfg["board"], str):
        raise ValueError("board is not a string")
    if cfg["profile"] not in ("dev", "field", "sealed"):
        raise ValueError("profile %r is not dev, field or sealed" % (cfg["profile"],))
    if cfg["mount"] not in mounts:
        raise ValueError("mount %r is not one of %s" % (cfg["mount"], ", ".join(mounts)))
