# The device's update client (MicroPython): ask the server, verify, download, stage.
#
#   import mpseal_ota
#   mpseal_ota.poll_forever()          # in the app's own loop or thread: hourly, jittered
#   mpseal_ota.check_once()            # one round: "none", "staged", or raises Refused/OSError
#   mpseal_ota.report_boot()           # at start (a trial: "booted") and after confirm()
#
# One round (docs/updates.md), on ONE TLS connection (HTTP/1.1 keep-alive):
# POST /v1/device/check -> the signed timestamp of this device's channel -> newer
# trust roots if it names one -> the target for this board and app -> the artifact
# streamed into /mpseal/download.part (HTTP Range resumes it) -> its manifest
# checked against the timestamp and this device's app -> the boot guard's stage(),
# which verifies signature, counter, board and image hash itself -> the queued
# reports -> reset into a trial boot. The server only ever suggests; nothing it says
# can make the device install what the guard and the timestamp would not accept.
#
# TLS (mbedTLS): CERT_REQUIRED, server_hostname, the pinned anchor (the ones the newest
# verified trust root names, else /mpseal/id/server-anchor.der), and the device's own certificate for mutual TLS (the
# pair mpseal_renew names: renewed at two thirds of its life, before the round).
# Every read has a limit; every request and every round a total deadline (slow
# retrieval, slowloris); every reply is type-checked, and poll_forever survives
# anything a server sends (it logs why). Threat tier: T1 (network, mirror, CDN).

import json
import os
import time

import mpseal_guard as guard
import mpseal_meta as meta
from mpseal_release import Refused

CONFIG = "/mpseal/config.json"
ID = "/mpseal/id/"
PART = "/mpseal/download.part"
DPART = "/mpseal/delta.part"  # a delta being downloaded (resumed like PART)
DNEW = "/mpseal/delta.new"  # the artifact a delta rebuilds (written anew each time)
STAGED = "/mpseal/ota-staged"  # {"version": last release staged, "booted": reported}
QUEUE = "/mpseal/reports.json"  # reports not yet acknowledged by the server
MAX_HEADER_LINE = 1024
MAX_HEADERS = 32
MAX_JSON = 4096
MAX_QUEUE = 8  # reports kept; the oldest is dropped beyond
CHUNK = 1024
TIMEOUT = 10  # seconds without progress on a socket
MIN_RATE = 256  # bytes/s averaged over a download: slower is a slow-retrieval attack
REQUEST_DEADLINE = 30  # seconds for a request's status, headers and JSON body, all told
ROUND_DEADLINE = 120  # seconds for a whole round, plus the artifact's size / MIN_RATE
POLL = 3600  # seconds between rounds (jittered +-25 %); config.json "poll" overrides
BACKOFF = (60, 3600)  # first retry after a failure and ceiling, in seconds
MAX_RETRY_AFTER = 86400

_retry_after = 0  # the server's Retry-After of the last round (seconds), 0 if none


def _ms():
    return time.ticks_ms()


def _config():
    with open(CONFIG) as f:
        cfg = json.loads(f.read(MAX_JSON))
    if not isinstance(cfg, dict) or not isinstance(cfg.get("server"), str):
        raise Refused("config.json names no server")
    url = cfg["server"]
    tls = url.startswith("https://")
    if not tls and not url.startswith("http://"):
        raise Refused("config.json server is not an http(s) URL")
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    cfg["_host"] = host
    cfg["_port"] = int(port or (443 if tls else 80))
    cfg["_tls"] = tls
    # Written by `mpseal provision --channel` (default: stable); the timestamp names it.
    cfg["channel"] = meta.check_channel(cfg.get("channel") or "stable")
    import mpseal_port

    # Read at run time, never stored beside the secrets (docs/provisioning.md).
    cfg["hardware_id"] = mpseal_port.unique_id()
    for k, default in (("deadline", REQUEST_DEADLINE), ("round_deadline", ROUND_DEADLINE),
                       ("poll", POLL)):
        v = cfg.get(k)
        cfg[k] = v if type(v) is int and 0 < v <= 7 * 86400 else default
    try:  # the per-device bearer token, sealed with the device's secrets at provisioning
        import mpseal_secrets

        cfg["_token"] = mpseal_secrets.load().get("device_token")
    except Exception:  # why: no secrets (or none for this device): no token
        cfg["_token"] = None
    return cfg


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(8192)
    except OSError:
        return None


def _anchors():
    """The server's TLS anchors: those the newest verified trust root names (a root
    rotation moves the fleet to a new server anchor), else the provisioned file."""
    try:
        listed = meta.installed_root().get("tls_anchors")
    except Exception:  # why: no readable root: the provisioned anchor
        listed = None
    if listed:
        return listed
    anchor = _read(ID + "server-anchor.der")
    if anchor is None:
        raise Refused("no server trust anchor on this device")
    return [anchor]


_anchor_ok = 0  # index of the anchor the last handshake succeeded with: tried first


def _connect(cfg):
    """A connection to the server; over TLS, each anchor tried in turn (the one that
    worked last first): during a server anchor change the root names old and new."""
    global _anchor_ok
    anchors = _anchors() if cfg["_tls"] else [None]
    first = _anchor_ok if _anchor_ok < len(anchors) else 0
    order = [first] + [i for i in range(len(anchors)) if i != first]
    for n, i in enumerate(order):
        try:
            s = _connect_with(cfg, anchors[i])
            _anchor_ok = i
            return s
        except (OSError, ValueError) as e:
            # a handshake refused (wrong anchor); a refused connection is no anchor's fault
            if n == len(order) - 1 or not _tls_failure(e):
                raise


def _tls_failure(e):
    a = e.args[0] if e.args else 0
    return isinstance(e, ValueError) or (type(a) is int and a < 0) or "MBEDTLS" in str(e)


def _identity():
    """The pair identity.json names (mpseal_renew), else provisioning's; None once its
    certificate expired by this clock (the server's TLS would refuse the handshake: the
    bearer token still works, and mpseal_renew recovers)."""
    try:
        import mpseal_renew
    except ImportError:
        return (ID + "device.der", ID + "device.key.der")
    return None if mpseal_renew.expired() else mpseal_renew.current()


def _connect_with(cfg, anchor):
    import socket  # here: a board without a network can still import this module

    ai = socket.getaddrinfo(cfg["_host"], cfg["_port"], 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    s.settimeout(TIMEOUT)
    try:
        s.connect(ai[-1])
        if cfg["_tls"]:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cadata=anchor)
            ident = cfg.get("_identity") or _identity()
            cert, key = (_read(ident[0]), _read(ident[1])) if ident else (None, None)
            if cert and key:
                ctx.load_cert_chain(cert, key)
            s = ctx.wrap_socket(s, server_hostname=cfg["_host"])
        return s
    except BaseException:
        s.close()
        raise


class Http:
    """HTTP/1.1 over one connection kept alive for a whole round, with deadlines.

    `sock` (for tests): an object with write() and recv(n) standing in for the socket."""

    def __init__(self, cfg, sock=None):
        self.cfg = cfg
        self.s = sock
        self.buf = b""
        self.connects = 0
        self.retry_after = 0
        self.round_end = time.ticks_add(_ms(), cfg.get("round_deadline", ROUND_DEADLINE) * 1000)

    def close(self):
        if self.s is not None:
            try:
                self.s.close()
            except Exception:  # why: closing a broken socket
                pass
        self.s = None
        self.buf = b""

    def extend(self, seconds):
        """More time for this round (the artifact download: its size at MIN_RATE)."""
        self.round_end = time.ticks_add(self.round_end, int(seconds * 1000))

    def _check(self, until):
        if time.ticks_diff(until, _ms()) <= 0 or time.ticks_diff(self.round_end, _ms()) <= 0:
            raise Refused("server missed the deadline (%d s per request, %d s per round): "
                          "slow retrieval" % (self.cfg.get("deadline", REQUEST_DEADLINE),
                                              self.cfg.get("round_deadline", ROUND_DEADLINE)))

    def _more(self, until, n=512):
        self._check(until)
        recv = getattr(self.s, "recv", None)
        data = recv(n) if recv else self.s.read(1)
        if not data:
            raise OSError("connection closed by the server")
        return data

    def _line(self, until):
        while True:
            i = self.buf.find(b"\r\n")
            if 0 <= i <= MAX_HEADER_LINE:
                line = self.buf[:i]
                self.buf = self.buf[i + 2 :]
                return line
            if i > MAX_HEADER_LINE or len(self.buf) > MAX_HEADER_LINE:
                raise Refused("server sent an oversized header line")
            self.buf += self._more(until)

    def _head(self, until, limit):
        """Status line and headers -> (status, length, close, retry_after)."""
        parts = self._line(until).split(b" ")
        if (len(parts) < 2 or parts[0] not in (b"HTTP/1.1", b"HTTP/1.0") or len(parts[1]) != 3
                or not parts[1].isdigit()):
            raise Refused("server sent a malformed status line")
        status = int(parts[1])
        length = None
        close = parts[0] == b"HTTP/1.0"
        retry = 0
        for _ in range(MAX_HEADERS):
            line = self._line(until)
            if not line:
                break
            name, sep, value = line.partition(b":")
            if not sep:
                raise Refused("server sent a malformed header line")
            name, value = name.strip().lower(), value.strip()
            if name == b"content-length":
                if length is not None or not value.isdigit() or len(value) > 10:
                    raise Refused("server sent a malformed Content-Length")
                length = int(value)
            elif name == b"transfer-encoding":
                raise Refused("server sent a body without a Content-Length")
            elif name == b"connection":
                close = close or value.lower() == b"close"
            elif name == b"retry-after" and value.isdigit() and len(value) <= 8:
                retry = min(int(value), MAX_RETRY_AFTER)
        else:
            raise Refused("server sent too many headers")
        if length is None or length > limit:
            raise Refused("server response of %s bytes is over the %d-byte limit" % (length, limit))
        return status, length, close, retry

    def _body(self, until, length):
        data = self.buf[:length]
        self.buf = self.buf[length:]
        while len(data) < length:
            data += self._more(until, min(512, length - len(data)))
        return data

    def _stream(self, until, length, sink):
        start = _ms()
        got = min(len(self.buf), length)
        if got:
            sink.write(self.buf[:got])
            self.buf = self.buf[got:]
        while got < length:
            data = self._more(until, min(CHUNK, length - got))
            sink.write(data)
            got += len(data)
            elapsed = time.ticks_diff(_ms(), start) / 1000
            if elapsed > 5 and got / elapsed < MIN_RATE:
                raise Refused("server is trickling data (%d bytes in %d s): slow retrieval" %
                              (got, elapsed))
        return got

    def request(self, method, path, body=None, sink=None, offset=0, limit=MAX_JSON,
                seconds=None, ctype="application/json"):
        """One exchange; returns (status, body bytes, or bytes written to `sink`)."""
        if any(c in path for c in " \r\n") or not path.startswith("/"):
            raise Refused("refusing to request a hostile path")
        seconds = seconds or self.cfg.get("deadline", REQUEST_DEADLINE)
        until = time.ticks_add(_ms(), int(seconds * 1000))
        head = "%s %s HTTP/1.1\r\nHost: %s\r\n" % (method, path, self.cfg["_host"])
        token = self.cfg.get("_token")
        if token:
            head += "Authorization: Bearer %s\r\n" % token
        if offset:
            head += "Range: bytes=%d-\r\n" % offset
        if body is not None:
            head += "Content-Type: %s\r\nContent-Length: %d\r\n" % (ctype, len(body))
        msg = head.encode() + b"\r\n" + (body or b"")
        for attempt in (0, 1):
            reused = self.s is not None
            try:
                if not reused:
                    self._check(until)
                    self.s = _connect(self.cfg)
                    self.connects += 1
                self.s.write(msg)
                status, length, close, retry = self._head(until, limit)
                break
            except BaseException as e:
                self.close()
                # A kept-alive connection the server closed meanwhile: once more, anew.
                if not (isinstance(e, OSError) and reused and not attempt):
                    raise
        try:
            self.retry_after = retry if status in (429, 503) else 0
            if sink is None:
                out = self._body(until, length)
            else:
                out = self._stream(until, length, sink)
        except BaseException:
            self.close()
            raise
        if close:
            self.close()
        return status, out


def request(cfg, method, path, body=None, sink=None, offset=0, limit=MAX_JSON):
    """One exchange on a connection of its own."""
    http = Http(cfg)
    try:
        return http.request(method, path, body, sink, offset, limit)
    finally:
        http.close()


def _json(http, method, path, obj):
    status, data = http.request(method, path, json.dumps(obj).encode())
    if status != 200:
        raise OSError("server answered %d to %s" % (status, path))
    try:
        return json.loads(data)
    except ValueError:
        raise Refused("server reply to %s is not JSON" % path)


# -- reports: queued on the flash, removed only once the server acknowledged them --------


def _load_queue():
    try:
        q = json.loads(meta.read_small(QUEUE, MAX_QUEUE * 512, "report queue"))
        if isinstance(q, list):
            return [r for r in q if isinstance(r, dict)][-MAX_QUEUE:]
    except (Refused, OSError, ValueError):
        pass
    return []


def _save_queue(q):
    if q:
        meta.write_atomic(QUEUE, json.dumps(q[-MAX_QUEUE:]))
    else:
        try:
            os.remove(QUEUE)
        except OSError:
            pass


def queue(cfg, event, version="", reason=""):
    """Remember a report until the server acknowledges it (bounded: the oldest goes first)."""
    q = _load_queue()
    q.append({"event": event, "version": version, "reason": reason[:200],
              "app": cfg.get("app", ""), "board": guard.config()["board"],
              "channel": cfg["channel"]})
    try:
        _save_queue(q)
    except OSError:
        pass  # a full flash: the report is lost, the device carries on


def flush(http):
    """Send the queued reports in order on `http`; keep those not acknowledged."""
    q = _load_queue()
    sent = 0
    for r in q:
        body = dict(r)
        body["hardware_id"] = http.cfg["hardware_id"]
        try:
            status, data = http.request("POST", "/v1/device/report", json.dumps(body).encode())
            ack = status == 200 and isinstance(json.loads(data), dict) and json.loads(data).get(
                "recorded") is True
        except (OSError, Refused, ValueError):
            break
        if not ack and (status in (401, 403, 408, 429) or status >= 500 or status == 200):
            break  # the server may take it later: keep it and the rest
        sent += 1  # acknowledged, or refused for good (4xx): either way not sent again
        if not ack:
            guard.log("report %s dropped: server answered %d" % (r.get("event"), status))
    if sent:
        try:
            _save_queue(q[sent:])
        except OSError:
            pass
    return sent


def report(cfg, event, version="", reason=""):
    """Queue a report and try to deliver the queue; a failure never stops the device."""
    queue(cfg, event, version, reason)
    http = Http(cfg)
    try:
        flush(http)
    finally:
        http.close()


def _ensure_clock():
    """Before the first TLS handshake: mbedTLS checks certificate dates against the clock,
    which reads 2000 (esp32) or 2021 (rp2) until set. NTP where the port has it; the
    signed timestamp raises the clock floor (bounded) after it verifies (_set_clock)."""
    if meta.unix_time() >= meta.CLOCK_SANE:
        return
    try:
        import ntptime

        ntptime.settime()
    except Exception:  # why: no NTP here: the handshake may fail until the clock is set
        pass


def _set_clock(floor):
    """The clock never goes back, but a device that boots in 2000 learns the time here
    (the floor mpseal_meta keeps: one timestamp moves it at most MAX_CLOCK_STEP)."""
    if meta.unix_time() >= floor:
        return
    try:
        import machine

        t = time.gmtime(floor - meta.EPOCH_OFFSET)
        machine.RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0))
    except (ImportError, AttributeError, OSError):
        pass


def _running():
    """The guard's state: committed slot, security counter, trial."""
    import mpseal_state

    st, _ = mpseal_state.load(guard.DIR)
    return st.to_dict() if st else {}


def _manifest_of(f):
    head = f.read(32)
    mlen = int.from_bytes(head[12:16], "little")
    if len(head) != 32 or mlen > meta.rel_mod.MAX_MANIFEST:
        return None
    return f.read(mlen)


def _running_version(st=None):
    """The version the device runs (advisory, for the server's choice; nothing trusts it)."""
    if guard._running:
        return guard._running[1].version
    slot = (st if st is not None else _running()).get("committed")
    if slot:
        try:
            with open(guard.slot_path(slot), "rb") as f:
                v = json.loads(_manifest_of(f))["version"]
                if meta.rel_mod.is_version(v):
                    return v
        except (OSError, ValueError, KeyError, TypeError):
            pass
    return "0"


def _vkey(v):
    """Order of versions: dotted numbers compare as numbers; 1.0-rc1 < 1.0; else text."""
    core, _, pre = v.partition("+")[0].partition("-")
    key = []
    for p in core.split("."):
        key.append((0, int(p), "") if p.isdigit() else (1, 0, p))
    return key, (1 if not pre else 0), pre


def newer(a, b):
    """Is version `a` newer than `b`?"""
    return _vkey(a) > _vkey(b)


def _download(http, target, part=PART):
    size = target["size"]
    try:
        have = os.stat(part)[6]
    except OSError:
        have = 0
    if have > size:
        os.remove(part)
        have = 0
    if have < size:
        allowance = (size - have) // MIN_RATE + 30
        http.extend(allowance)
        with open(part, "ab") as f:
            status, got = http.request("GET", "/v1/" + target["path"], sink=f, offset=have,
                                       limit=size - have, seconds=allowance)
        if status not in (200, 206) or (status == 200 and have):
            os.remove(part)  # the server ignored the range: start again next round
            raise OSError("download answered %d" % status)
        have += got
    if have != size:
        raise OSError("download incomplete: %d of %d bytes" % (have, size))


_held = None  # this round: the next trust root, held back until a release fits it


def _fetch_roots(http, version):
    """Install trust roots up to `version`, one step at a time, as far as the running
    release still verifies: a root under which it would not (its release key retired,
    a raised threshold) would leave nothing to boot or fall back to. Returns the version
    installed; the device takes the rest after it runs a release signed for them
    (a key rotation in the safe order: docs/updates.md, "Rotating the release key")."""
    global _held
    root = meta.installed_root()
    have = root["version"]
    if not have < version <= have + 16:
        raise Refused("server names trust root %d; this device has %d" % (version, have))
    slot = _running().get("committed")
    files = []
    stopped = None
    for v in range(have + 1, version + 1):
        status, data = http.request("GET", "/v1/roots/%d.mpsr" % v, limit=meta.rel_mod.MAX_ROOT)
        if status != 200:
            raise OSError("trust root %d answered %d" % (v, status))
        import mpseal_stage

        new = mpseal_stage.verify_root_update(root, data)
        if slot:
            try:
                guard._verify(slot, new, 0)
            except Refused as e:
                stopped = "trust root %d would not accept the running release (%s)" % (v, e)
                _held = new  # an update must verify under it too: the way onto it
                break
        root = new
        files.append(data)
    if files:
        meta.apply_root_chain(files)
    if stopped:
        guard.log("staying on trust root %d: %s" % (have + len(files), stopped))
    return have + len(files)


def _round(http, cfg, now):
    board, app, channel = guard.config()["board"], cfg.get("app", ""), cfg["channel"]
    root = meta.installed_root()
    seen = meta.load_seen(root)
    st = _running()
    running = _running_version(st)
    counter = st.get("counter", 0)
    offer = _json(http, "POST", "/v1/device/check", {
        "hardware_id": cfg["hardware_id"], "board": board, "app": app, "channel": channel,
        "version": running, "counter": counter, "timestamp_version": seen["version"]})
    if not isinstance(offer, dict) or offer.get("update") not in (True, False, None):
        raise Refused("server's check reply is not an update offer")
    # Newer trust roots first (TUF order): they verify themselves, each step signed by
    # the old and the new root keys, so asking for them is safe whatever the server says.
    # Taken with or without an update: a root may move the server's TLS anchor.
    want = offer.get("root_version", 0)
    if type(want) is not int:
        raise Refused("server's check reply names a malformed trust root version")
    if want > root["version"]:
        _fetch_roots(http, want)
    if not offer.get("update"):
        return "none"
    # The device reads its own channel's timestamp; the timestamp is signed for it.
    path = "timestamp/%s.mpst" % channel
    if meta.safe_path(offer.get("timestamp", path), "timestamp path") != path:
        raise Refused("server offers timestamp %s; this device follows channel %s"
                      % (offer.get("timestamp"), channel))
    status, data = http.request("GET", "/v1/" + path, limit=meta.MAX_TS)
    if status != 200:
        raise OSError("timestamp answered %d" % status)
    try:
        ts = meta.accept_timestamp(data, now, channel)
    except meta.NeedRoots as e:
        # Roots this device cannot take yet (its running release would not verify under
        # them) are held back: the timestamp is judged by the root it has, and the update
        # it offers must verify under that root too (the guard checks it).
        held = e.version if _fetch_roots(http, e.version) < e.version else 0
        ts = meta.accept_timestamp(data, now, channel, held)
    data = None
    _set_clock(meta.load_seen()["issued"])
    target = meta.pick_target(ts, board, app)
    if target is None:
        raise Refused("the signed timestamp offers no release for this board")
    t_off = offer.get("target")
    if not isinstance(t_off, dict) or t_off.get("manifest_sha256") != target["manifest_sha256"]:
        raise Refused("the server offered a release the signed timestamp does not name")
    if target["counter"] < counter:
        raise Refused("the offered release is older than the running one: rollback refused")
    if target["counter"] == counter and not newer(target["version"], running):
        raise Refused("release %s has the running release's security counter and is not newer "
                      "than %s: downgrade refused" % (target["version"], running))
    r = None
    if offer.get("delta") is not None:
        try:
            r = _via_delta(http, target, offer["delta"], app, st)
        except (Refused, OSError, ValueError, TypeError, KeyError) as e:
            # A damaged, tampered or mismatched delta: the full artifact, in this round.
            # Logged, not reported as a refusal: that would count against the release.
            guard.log("delta refused, fetching the full release: %s" % e)
        finally:
            _remove(DPART, DNEW)
    if r is None:
        key = offer.get("key")  # an encrypted release: its key, wrapped for this device
        if key is not None and not meta.rel_mod.is_hex(key, meta.rel_mod.KEY_RECORD_LEN):
            raise Refused("server's key for the release is malformed")
        _download(http, target)
        r = _stage_file(PART, target, app, board, key=bytes.fromhex(key) if key else None)
    meta.write_atomic(STAGED, json.dumps({"version": r.version, "booted": False}))
    queue(cfg, "staged", r.version)
    return "staged"


def _remove(*paths):
    for p in paths:
        try:
            os.remove(p)
        except OSError:
            pass


def _stage_file(path, target, app, board, per_file=False, key=None):
    """Check the artifact at `path` against the timestamp's target and this device's app,
    then have the guard verify and stage it (`key`: an encrypted release's key record for
    this device); `path` is removed in every case."""
    try:
        with open(path, "rb") as f:
            man = _manifest_of(f)
        if man is None or not meta.manifest_matches(target, man):
            raise Refused("downloaded manifest is not the one the timestamp names (mix-and-match)")
        try:
            other = meta.rel_mod.parse_manifest(man)["app"]
        except Refused:
            other = None
        man = None
        if other != app:
            raise Refused("the release is for app %s; this device runs %s: another product "
                          "refused" % (other, app))
        if _held is not None:
            # A held-back root (see _fetch_roots): take only a release that runs under it
            # as well, so that the next round can install that root. Never a way around it.
            try:
                meta.rel_mod.verify_file(path, _held, board, 0, guard.config()["max_image"])
            except Refused as e:
                raise Refused("the offered release would not run under trust root %d, which "
                              "this device takes next (%s)" % (_held["version"], e))
        if per_file:
            import mpseal_delta

            mpseal_delta.check_files(path)
        return guard.stage(path, key)
    finally:
        _remove(path)


def _via_delta(http, target, d, app, st):
    """The release rebuilt from the slot this device runs and the delta the server offers
    (docs/updates.md, "Delta updates"). None if no delta applies here; Refused if the
    delta is damaged or does not rebuild exactly the signed release."""
    if (not isinstance(d, dict) or type(d.get("size")) is not int
            or not 0 < d["size"] <= target["size"] + 4096):
        raise Refused("server's delta offer is malformed")
    path = meta.safe_path(d.get("path"), "delta path")
    if not path.startswith("deltas/"):
        raise Refused("server's delta offer names a path outside deltas/")
    src = guard._running[0] if guard._running else st.get("committed")
    committed = st.get("committed")
    dest = ("b" if committed == "a" else "a") if committed else "a"
    if not src or src == dest:
        return None  # the slot to write is the one to read: the full artifact
    _remove(PART, DNEW)  # room on the flash: a stale full download is not needed
    _download(http, {"size": d["size"], "path": path}, DPART)
    import mpseal_delta

    mpseal_delta.apply(DPART, guard.slot_path(src), DNEW)
    _remove(DPART)
    r = _stage_file(DNEW, target, app, guard.config()["board"], per_file=True)
    guard.log("release %s rebuilt from a %d-byte delta" % (r.version, d["size"]))
    return r


def _renew(http, cfg):
    """Renew the device's certificate first if two thirds of its life are past
    (mpseal_renew). A failure is logged and never stops the update round: the current
    certificate works until it expires."""
    if not cfg["_tls"]:
        return
    try:
        import mpseal_renew

        done = mpseal_renew.maybe_renew(http, cfg)
        if done in ("renewed", "recovered"):
            guard.log("certificate %s: %s" % (done, mpseal_renew.current()[0]))
    except Exception as e:  # why: whatever the server sent
        guard.log("certificate renewal failed: %s: %s" % (type(e).__name__, e))


def check_once(now=None):
    """One update round on one connection. Returns "none" or "staged" (then reset into
    the trial); raises Refused (queued as a `refused` report) or OSError."""
    global _retry_after, _held
    _held = None
    cfg = _config()
    _ensure_clock()
    http = Http(cfg)
    try:
        _renew(http, cfg)
        try:
            result = _round(http, cfg, now)
        except Refused as e:
            queue(cfg, "refused", reason=str(e))
            raise
        finally:
            _retry_after = http.retry_after
            try:
                flush(http)
                import mpseal_logs  # the guard's and the app's log lines, bounded batches

                mpseal_logs.flush(http)
            except Exception:  # why: reports and logs wait for the next round
                pass
        return result
    finally:
        http.close()


def _staged():
    try:
        with open(STAGED) as f:
            text = f.read(200)
    except OSError:
        return None
    try:
        d = json.loads(text)
        if isinstance(d, dict) and isinstance(d.get("version"), str):
            return d
    except ValueError:
        pass
    return {"version": text.strip(), "booted": False}  # written by an older client


def report_boot():
    """Tell the server how the trial went. On a trial boot (before confirm()): `booted`.
    After confirm(), or on the older release the guard fell back to: `confirmed` or
    `rolled_back`. Reports are queued and sent now or in a later round."""
    cfg = _config()
    staged = _staged()
    if staged is None:
        return
    version = staged["version"]
    st = guard._state
    on_trial = st is not None and guard._running is not None and st.trial == guard._running[0]
    if not staged.get("booted"):
        queue(cfg, "booted", version)
        staged["booted"] = True
        meta.write_atomic(STAGED, json.dumps(staged))
    if not on_trial:
        running = _running_version()
        if version == running:
            queue(cfg, "confirmed", running)
        else:
            queue(cfg, "rolled_back", version, "running %s after its trial" % running)
        try:
            os.remove(STAGED)
        except OSError:
            pass
    http = Http(cfg)
    try:
        flush(http)
    except Exception:  # why: the queue waits for the next round
        pass
    finally:
        http.close()


def _jitter(lo, hi):
    """A whole number of seconds, uniform in [lo, hi]."""
    import random

    return lo + random.getrandbits(20) % (hi - lo + 1)


def poll_forever(reset=True, backoff=BACKOFF, interval=None):
    """Check every `interval` seconds (config "poll", default an hour, +-25 % jitter); after
    a failure back off (doubling, jittered); a server's Retry-After is honoured. Nothing a
    server sends ends this loop: every failure is logged. On a staged update: reset."""
    delay = backoff[0]
    while True:
        wait = None
        try:
            every = interval or _config()["poll"]
            if check_once() == "staged":
                guard.log("update staged: resetting into its trial boot")
                if reset:
                    import mpseal_port

                    mpseal_port.reset()
                return
            delay = backoff[0]
            wait = _jitter(every * 3 // 4, every * 5 // 4)
        except Refused as e:
            guard.log("update refused: %s" % e)
        except Exception as e:  # why: whatever a server sends, the loop goes on
            guard.log("update check failed: %s: %s" % (type(e).__name__, e))
        if wait is None:
            delay = min(delay * 2, backoff[1])
            wait = _jitter(delay // 2, delay)
        if _retry_after:
            wait = max(wait, _retry_after)
        time.sleep(wait)
