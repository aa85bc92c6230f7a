# Update metadata on the device: the signed timestamp, and trust root rotations.
#
# Strict, like mpseal_release: every function raises Refused(reason) on anything
# wrong and decides nothing; the update client decides what to do about it.
# Formats and roles: docs/updates.md.
#
#   accept_timestamp(data, now=None) -> dict   verify against the installed trust
#                          root and remember its version (power-loss safe)
#   verify_timestamp(data, root, now, seen)    the same checks, nothing stored
#   pick_target(ts, board, app) -> dict|None   the release offered to this device
#   manifest_matches(target, manifest) -> bool an artifact's manifest is the one named
#   apply_root_chain(files) -> root            step through roots N+1, N+2, ..., install each
#   safe_path(p) -> p                          a plain relative path, or Refused
#   unix_time() -> int                         the clock in unix seconds, on any port
#
# Threat tiers: T1 -- the expiry stops a freeze (a network holding back news of
# updates), the highest version seen stops a replay of an old timestamp, the
# manifest hash per board stops mix-and-match. T2 -- the timestamp key is online;
# a thief of it can freeze devices only until `expires`, and a new trust root
# needs a threshold of the old root keys and of its own.

import hashlib
import json
import os
import struct
import time

import mpseal_release as rel_mod
from mpseal_release import Refused

DIR = "/mpseal"
TRUST = DIR + "/trust-root.mpsr"
META = DIR + "/meta.json"  # {"version": highest timestamp version seen, "issued": its issued}
MAX_TS = 8192
MAX_TARGETS = 64
MAX_PATH = 128
MAX_META = 256
MAX_SIZE = 16 * 1024 * 1024 + 128 * 1024  # an artifact file
# Ports whose clock counts from 2000-01-01 (time.gmtime(0) is in 2000) add this.
_gmtime = getattr(time, "gmtime", None) or time.localtime
EPOCH_OFFSET = 946684800 if _gmtime(0)[0] == 2000 else 0
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-"
_HEX = "0123456789abcdef"


class NeedRoots(Refused):
    # The timestamp names a newer trust root: fetch roots/<N+1>.mpsr... up to .version first.
    version = 0


def unix_time():
    return int(time.time()) + EPOCH_OFFSET


def read_small(path, limit, what):
    """A whole file of at most `limit` bytes; the size is checked before reading."""
    try:
        size = os.stat(path)[6]
    except OSError:
        raise Refused("%s is missing" % what)
    if size > limit:
        raise Refused("%s is larger than %d bytes" % (what, limit))
    with open(path, "rb") as f:
        data = f.read(size)
        if len(data) != size or f.read(1):
            raise Refused("%s changed while it was read" % what)
    return data


def write_atomic(path, data):
    # littlefs: a rename over the old file is atomic, so a power cut leaves old or new.
    with open(path + ".tmp", "wb") as f:
        f.write(data)
    os.rename(path + ".tmp", path)


def installed_root():
    return rel_mod.load_root(read_small(TRUST, rel_mod.MAX_ROOT, "trust root"))[0]


def load_seen():
    """The newest timestamp accepted so far; a missing or damaged record counts as none."""
    seen = {"version": 0, "issued": 0}
    try:
        d = json.loads(read_small(META, MAX_META, "meta"))
        for k in seen:
            if type(d[k]) is int and d[k] > 0:
                seen[k] = d[k]
    except (Refused, OSError, ValueError, KeyError, TypeError):
        pass
    return seen


def safe_path(p, what="path"):
    """Return `p` if it is relative, '/'-separated, [a-z0-9._-] segments, no '.' or '..'
    (safe in a URL and a file name); raise Refused otherwise."""
    ok = isinstance(p, str) and 0 < len(p) <= MAX_PATH
    if ok:
        for seg in p.split("/"):
            if seg in ("", ".", "..") or [c for c in seg if c not in _PATH_CHARS]:
                ok = False
                break
    if not ok:
        raise Refused("%s is not a plain relative path" % what)
    return p


def _int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def _text(v, n):
    return isinstance(v, str) and 0 < len(v) <= n


def _check_target(t):
    if not isinstance(t, dict):
        raise Refused("timestamp target is not an object")
    h = t.get("manifest_sha256")
    ok = (_text(t.get("app"), 64) and _text(t.get("board"), 32) and _text(t.get("version"), 32)
          and _int(t.get("counter"), 0, 0x7FFFFFFF) and _int(t.get("size"), 1, MAX_SIZE)
          and isinstance(h, str) and len(h) == 64)
    if not ok or [c for c in h if c not in _HEX]:
        raise Refused("timestamp target is malformed")
    safe_path(t.get("path"), "timestamp target path")


def _check_role(root, role):
    r = root["roles"].get(role)
    try:
        ok = (r["keyids"] and _int(r["threshold"], 1, len(r["keyids"]))
              and not [k for k in r["keyids"] if k not in root["keys"]])
    except (KeyError, TypeError):
        ok = False
    if not ok:
        raise Refused("trust root has no usable %s role" % role)


def verify_timestamp(data, root, now=None, seen=None, held_back=0):
    """Check a timestamp envelope (bytes); return its payload as a dict. Stores nothing.

    `held_back`: the newest root this device refused to take because its running release
    would not verify under it; a timestamp naming up to that root is judged by the root
    installed (signed by its timestamp role), as if the newer root did not exist yet."""
    if len(data) > MAX_TS:
        raise Refused("timestamp is larger than %d bytes" % MAX_TS)
    if len(data) < 12 or data[:4] != b"MPST":
        raise Refused("not an mpseal timestamp")
    ver, nsig, res, plen = struct.unpack("<BBHI", data[4:12])
    if ver != 1 or res or nsig > rel_mod.MAX_SIGS or 12 + plen + nsig * rel_mod.ENTRY_LEN != len(data):
        raise Refused("timestamp is damaged")
    mv = memoryview(data)  # slices of it copy nothing
    _check_role(root, "timestamp")
    rel_mod.check_threshold(root, "timestamp", mv[12 : 12 + plen], mv[12 + plen :], nsig,
                            "timestamp")
    try:
        ts = json.loads(mv[12 : 12 + plen])
    except ValueError:
        raise Refused("timestamp payload is not JSON")
    mv = None
    if not isinstance(ts, dict) or ts.get("type") != "mpseal-timestamp" or ts.get("spec") != 1:
        raise Refused("timestamp payload is not an mpseal timestamp")
    for k, lo, hi in (("version", 1, (1 << 53) - 1), ("issued", 0, 1 << 40),
                      ("expires", 0, 1 << 40), ("root_version", 1, 1 << 31)):
        if not _int(ts.get(k), lo, hi):
            raise Refused("timestamp field %s is malformed" % k)
    targets = ts.get("targets")
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise Refused("timestamp targets are malformed or more than %d" % MAX_TARGETS)
    names = []
    for t in targets:
        _check_target(t)
        name = t["app"] + "/" + t["board"]
        if name in names:
            raise Refused("timestamp names %s twice" % name)
        names.append(name)
    if ts["root_version"] > max(root["version"], held_back):
        e = NeedRoots("timestamp needs trust root %d, this device has %d: fetch the new roots"
                      % (ts["root_version"], root["version"]))
        e.version = ts["root_version"]
        raise e
    seen = seen or {"version": 0, "issued": 0}
    # A clock that was never set reads 2000 or so: the newest `issued` seen is a floor.
    now = max(unix_time() if now is None else now, seen["issued"])
    if ts["expires"] < now:
        raise Refused("timestamp version %d expired: a frozen or stale server" % ts["version"])
    if ts["version"] < seen["version"]:
        raise Refused("timestamp version %d is older than %d already seen: replay refused"
                      % (ts["version"], seen["version"]))
    return ts


def accept_timestamp(data, now=None, held_back=0):
    """Verify `data` against the installed trust root; remember it as the newest seen."""
    seen = load_seen()
    ts = verify_timestamp(data, installed_root(), now, seen, held_back)
    if ts["version"] > seen["version"] or ts["issued"] > seen["issued"]:
        seen = {"version": max(ts["version"], seen["version"]),
                "issued": max(ts["issued"], seen["issued"])}
        write_atomic(META, json.dumps(seen))
    return ts


def pick_target(ts, board, app):
    for t in ts["targets"]:
        if t["board"] == board and t["app"] == app:
            return t
    return None


def manifest_matches(target, manifest):
    digest = hashlib.sha256(manifest).digest()
    return rel_mod._hex(digest) == target["manifest_sha256"]


def apply_root_chain(files):
    """Install trust roots N+1, N+2, ... (paths or bytes), each verified against the one before.

    Each must be signed by a threshold of the previous root keys and of its own,
    and be exactly one version newer. Each is installed as soon as it verifies,
    atomically, so a power cut or a bad later file leaves a valid root; the root
    installed now is skipped, so a retry after a power cut works. Returns the newest."""
    current = read_small(TRUST, rel_mod.MAX_ROOT, "trust root")
    root = rel_mod.load_root(current)[0]
    for f in files:
        data = f if isinstance(f, (bytes, bytearray)) else read_small(f, rel_mod.MAX_ROOT,
                                                                       "new trust root")
        if data == current:
            continue  # installed already (a retry after a power cut)
        try:
            new = rel_mod.verify_root_update(root, data)
            step = new["version"] == root["version"] + 1
        except (KeyError, TypeError, ValueError):
            raise Refused("new trust root is malformed")
        if not step:
            raise Refused("trust root %s does not follow %d" % (new["version"], root["version"]))
        write_atomic(TRUST, data)
        root = new
        current = data
    return root
