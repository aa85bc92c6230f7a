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
import time

import mpseal_release as rel_mod
from mpseal_release import Refused

DIR = "/mpseal"
TRUST = DIR + "/trust-root.mpsr"
# {"version": highest timestamp version seen, "issued": the clock floor, "role": the
# timestamp role they were seen under}; a new timestamp role (key rotation) starts afresh.
META = DIR + "/meta.json"
# Limits: each equals a field of the host's mpseal/limits.py (tests/test_limits.py).
MAX_TS = 8192  # timestamp_max_length
MAX_TARGETS = 64  # timestamp_max_targets
MAX_PATH = 128  # target_path_max_length
MAX_META = 256
MAX_SIZE = 4 * 1024 * 1024 + 64 * 1024  # artifact_max_length: an artifact file
MAX_SKEW = 86400  # a timestamp issued more than this ahead of a set clock is refused
MAX_CLOCK_STEP = 366 * 86400  # the most one timestamp may move the clock floor
CLOCK_SANE = 1735689600  # 2025-01-01: a clock below this was never set
# Ports whose clock counts from 2000-01-01 (time.gmtime(0) is in 2000) add this.
_gmtime = getattr(time, "gmtime", None) or time.localtime
EPOCH_OFFSET = 946684800 if _gmtime(0)[0] == 2000 else 0
_PATH_CHARS = "abcdefghijklmnopqrstuvwxyz0123456789._-"


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


def role_id(root):
    """Names the trust root's timestamp role (its keys and threshold)."""
    r = root["roles"].get("timestamp") or {}
    try:
        text = "%s:%s" % (r.get("threshold"), ",".join(sorted(r.get("keyids") or ())))
    except TypeError:
        text = "?"
    return rel_mod._hex(hashlib.sha256(text.encode()).digest()[:8])


def load_seen(root=None):
    """The newest timestamp accepted so far under the installed trust root's timestamp role;
    a missing or damaged record, or one kept under other timestamp keys, counts as none.

    As TUF does on a timestamp key rotation: a version (or clock floor) that a stolen,
    now retired, key pushed up is forgotten once a new trust root replaces that key."""
    seen = {"version": 0, "issued": 0}
    try:
        d = json.loads(read_small(META, MAX_META, "meta"))
        if d.get("role") != role_id(root or installed_root()):
            return seen
        for k in seen:
            if type(d[k]) is int and d[k] > 0:
                seen[k] = d[k]
    except (Refused, OSError, ValueError, KeyError, TypeError, AttributeError):
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


_int = rel_mod._int
_LOWER = "abcdefghijklmnopqrstuvwxyz0123456789"
_CHANNEL_REST = _LOWER + "_-"


def check_channel(c):
    if not rel_mod.is_name(c, 32, _LOWER, _CHANNEL_REST):
        raise Refused("channel is not 1-32 of a-z 0-9 _ -")
    return c


def _check_target(t):
    if not isinstance(t, dict):
        raise Refused("timestamp target is not an object")
    ok = (rel_mod.is_name(t.get("app"), 64) and rel_mod.is_name(t.get("board"), 32)
          and rel_mod.is_version(t.get("version"))
          and _int(t.get("counter"), 0, 0x7FFFFFFF) and _int(t.get("size"), 1, MAX_SIZE)
          and rel_mod.is_hex(t.get("manifest_sha256"), 32))
    if not ok:
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


def verify_timestamp(data, root, now=None, seen=None, channel=None, held_back=0):
    """Check a timestamp envelope (bytes); return its payload as a dict. Stores nothing.

    `channel`: the device's own; a timestamp signed for another channel is refused.
    `held_back`: the newest root this device refused to take because its running release
    would not verify under it; a timestamp naming up to that root is judged by the root
    installed (signed by its timestamp role), as if the newer root did not exist yet."""
    payload, sigs, nsig = rel_mod.envelope(data, b"MPST", "timestamp", MAX_TS)
    _check_role(root, "timestamp")
    rel_mod.check_threshold(root, "timestamp", payload, sigs, nsig, "timestamp")
    try:
        ts = json.loads(payload)
    except ValueError:
        raise Refused("timestamp payload is not JSON")
    payload = sigs = None
    if not isinstance(ts, dict) or ts.get("type") != "mpseal-timestamp" or not _int(
            ts.get("spec"), 1, 1):
        raise Refused("timestamp payload is not an mpseal timestamp")
    for k, lo, hi in (("version", 1, (1 << 53) - 1), ("issued", 0, 1 << 40),
                      ("expires", 0, 1 << 40), ("root_version", 1, 1 << 31)):
        if not _int(ts.get(k), lo, hi):
            raise Refused("timestamp field %s is malformed" % k)
    targets = ts.get("targets")
    if not isinstance(targets, list) or len(targets) > MAX_TARGETS:
        raise Refused("timestamp targets are malformed or more than %d" % MAX_TARGETS)
    if ts["expires"] < ts["issued"]:
        raise Refused("timestamp expires before it was issued")
    check_channel(ts.get("channel"))
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
    if channel is not None and ts["channel"] != channel:
        raise Refused("timestamp is for channel %s; this device follows %s"
                      % (ts["channel"], channel))
    seen = seen or {"version": 0, "issued": 0}
    clock = unix_time() if now is None else now
    if clock >= CLOCK_SANE and ts["issued"] > clock + MAX_SKEW:
        raise Refused("timestamp version %d is issued %d s in the future: refused"
                      % (ts["version"], ts["issued"] - clock))
    # A clock that was never set reads 2000 or so: the newest `issued` seen is a floor.
    now = max(clock, seen["issued"])
    if ts["expires"] < now:
        raise Refused("timestamp version %d expired: a frozen or stale server" % ts["version"])
    if ts["version"] < seen["version"]:
        raise Refused("timestamp version %d is older than %d already seen: replay refused"
                      % (ts["version"], seen["version"]))
    return ts


def clock_floor(issued, seen_issued, clock):
    """The clock floor after accepting a timestamp issued at `issued`: it never goes
    back, and one timestamp moves it at most MAX_CLOCK_STEP past what the device knew."""
    base = max(clock, seen_issued, CLOCK_SANE)
    return max(seen_issued, min(issued, base + MAX_CLOCK_STEP))


def accept_timestamp(data, now=None, channel=None, held_back=0):
    """Verify `data` against the installed trust root; remember it as the newest seen."""
    root = installed_root()
    seen = load_seen(root)
    ts = verify_timestamp(data, root, now, seen, channel, held_back)
    floor = clock_floor(ts["issued"], seen["issued"], unix_time() if now is None else now)
    if ts["version"] > seen["version"] or floor > seen["issued"] or seen["version"] == 0:
        seen = {"version": max(ts["version"], seen["version"]), "issued": floor,
                "role": role_id(root)}
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
            import mpseal_stage

            new = mpseal_stage.verify_root_update(root, data)
            step = new["version"] == root["version"] + 1
        except (KeyError, TypeError, ValueError):
            raise Refused("new trust root is malformed")
        if not step:
            raise Refused("trust root %s does not follow %d" % (new["version"], root["version"]))
        write_atomic(TRUST, data)
        root = new
        current = data
    return root
