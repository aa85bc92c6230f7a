# The device's update client (MicroPython): ask the server, verify, download, stage.
#
#   import mpseal_ota
#   mpseal_ota.poll_forever()          # in the app's own loop or thread: back-off + jitter
#   mpseal_ota.check_once()            # one round: "none", "staged", or raises Refused/OSError
#   mpseal_ota.report_boot()           # after confirm(): tell the server how the trial went
#
# One round (docs/updates.md): POST /v1/device/check -> the signed timestamp ->
# newer trust roots if it names one -> the target for this board and app ->
# the artifact streamed into /mpseal/download.part (HTTP Range resumes it) ->
# its manifest checked against the timestamp -> the boot guard's stage(),
# which verifies signature, counter, board and image hash itself -> reset into
# a trial boot. The server only ever suggests; nothing it says can make the
# device install what the guard and the timestamp would not accept on their own.
#
# TLS (mbedTLS): CERT_REQUIRED, server_hostname, the pinned anchor
# /mpseal/id/server-anchor.der, and the device's own certificate for mutual TLS.
# Every read has a limit and every connection a deadline (slow retrieval).
# Threat tier: T1 (network, mirror, CDN), with the guard; see docs/updates.md.

import json
import os
import socket
import time

import mpseal_guard as guard
import mpseal_meta as meta
from mpseal_release import Refused

CONFIG = "/mpseal/config.json"
ID = "/mpseal/id/"
PART = "/mpseal/download.part"
STAGED = "/mpseal/ota-staged"  # version of the last release this client staged
MAX_HEADER_LINE = 1024
MAX_HEADERS = 32
MAX_JSON = 4096
CHUNK = 1024
TIMEOUT = 10  # seconds without progress on a socket
MIN_RATE = 256  # bytes/s averaged over a download: slower is a slow-retrieval attack
BACKOFF = (30, 3600)  # first retry and ceiling, in seconds


def _config():
    with open(CONFIG) as f:
        cfg = json.loads(f.read(MAX_JSON))
    url = cfg["server"]
    tls = url.startswith("https://")
    hostport = url.split("://", 1)[1].split("/", 1)[0]
    host, _, port = hostport.partition(":")
    cfg["_host"] = host
    cfg["_port"] = int(port or (443 if tls else 80))
    cfg["_tls"] = tls
    try:  # the per-device bearer token, sealed with the device's secrets at provisioning
        import mpseal_secrets

        cfg["_token"] = mpseal_secrets.load().get("device_token")
    except Exception:  # noqa: no secrets (or none for this device): no token
        cfg["_token"] = None
    return cfg


def _read(path):
    try:
        with open(path, "rb") as f:
            return f.read(8192)
    except OSError:
        return None


def _connect(cfg):
    ai = socket.getaddrinfo(cfg["_host"], cfg["_port"], 0, socket.SOCK_STREAM)[0]
    s = socket.socket(ai[0], socket.SOCK_STREAM, ai[2])
    s.settimeout(TIMEOUT)
    try:
        s.connect(ai[-1])
        if cfg["_tls"]:
            import ssl

            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.verify_mode = ssl.CERT_REQUIRED
            anchor = _read(ID + "server-anchor.der")
            if anchor is None:
                raise Refused("no server trust anchor on this device")
            ctx.load_verify_locations(cadata=anchor)
            cert, key = _read(ID + "device.der"), _read(ID + "device.key.der")
            if cert and key:
                ctx.load_cert_chain(cert, key)
            s = ctx.wrap_socket(s, server_hostname=cfg["_host"])
        return s
    except BaseException:
        s.close()
        raise


def _line(s):
    buf = b""
    while not buf.endswith(b"\r\n"):
        c = s.read(1)
        if not c:
            raise OSError("connection closed in the response header")
        buf += c
        if len(buf) > MAX_HEADER_LINE:
            raise Refused("server sent an oversized header line")
    return buf[:-2]


def request(cfg, method, path, body=None, sink=None, offset=0, limit=MAX_JSON):
    """One HTTP/1.1 exchange; returns (status, body bytes, or bytes written to `sink`)."""
    if any(c in path for c in " \r\n") or not path.startswith("/"):
        raise Refused("refusing to request a hostile path")
    s = _connect(cfg)
    try:
        head = "%s %s HTTP/1.1\r\nHost: %s\r\nConnection: close\r\n" % (method, path, cfg["_host"])
        token = cfg.get("_token")
        if token:
            head += "Authorization: Bearer %s\r\n" % token
        if offset:
            head += "Range: bytes=%d-\r\n" % offset
        if body is not None:
            head += "Content-Type: application/json\r\nContent-Length: %d\r\n" % len(body)
        s.write(head.encode() + b"\r\n" + (body or b""))
        status = int(_line(s).split(b" ")[1])
        length = None
        for _ in range(MAX_HEADERS):
            line = _line(s)
            if not line:
                break
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value.strip())
        else:
            raise Refused("server sent too many headers")
        if length is None or length > limit:
            raise Refused("server response of %s bytes is over the %d-byte limit" % (length, limit))
        if sink is None:
            data = s.read(length) if length else b""
            while len(data) < length:
                more = s.read(length - len(data))
                if not more:
                    raise OSError("connection closed in the response body")
                data += more
            return status, data
        start = time.time()
        got = 0
        buf = bytearray(CHUNK)
        while got < length:
            n = s.readinto(memoryview(buf)[: min(CHUNK, length - got)])
            if not n:
                raise OSError("connection closed after %d of %d bytes" % (got, length))
            sink.write(memoryview(buf)[:n])
            got += n
            elapsed = time.time() - start
            if elapsed > 5 and got / elapsed < MIN_RATE:
                raise Refused("server is trickling data (%d bytes in %d s): slow retrieval" %
                              (got, elapsed))
        return status, got
    finally:
        s.close()


def _json(cfg, method, path, obj):
    status, data = request(cfg, method, path, json.dumps(obj).encode())
    if status != 200:
        raise OSError("server answered %d to %s" % (status, path))
    try:
        return json.loads(data)
    except ValueError:
        raise Refused("server reply to %s is not JSON" % path)


def report(cfg, event, version="", reason=""):
    """Tell the server what happened; a failure to report never stops the device."""
    try:
        _json(cfg, "POST", "/v1/device/report", {"hardware_id": cfg["hardware_id"],
              "event": event, "version": version, "reason": reason[:200]})
    except (OSError, Refused, ValueError):
        pass


def _ensure_clock():
    """Before the first TLS handshake: mbedTLS checks certificate dates against the clock,
    which reads 2000 (esp32) or 2021 (rp2) until set. NTP where the port has it; the
    signed timestamp's `issued` raises the clock again after it verifies (_set_clock)."""
    if time.gmtime(meta.unix_time() - meta.EPOCH_OFFSET)[0] >= 2025:
        return
    try:
        import ntptime

        ntptime.settime()
    except Exception:  # noqa: no NTP here: the handshake may fail until the clock is set
        pass


def _set_clock(issued):
    """The clock never goes back, but a device that boots in 2000 learns the time here."""
    if meta.unix_time() >= issued:
        return
    try:
        import machine

        t = time.gmtime(issued - meta.EPOCH_OFFSET)
        machine.RTC().datetime((t[0], t[1], t[2], t[6] + 1, t[3], t[4], t[5], 0))
    except (ImportError, AttributeError, OSError):
        pass


def _running():
    """The guard's state: committed slot, security counter, trial."""
    import mpseal_state

    st, _ = mpseal_state.load(guard.DIR)
    return st.to_dict() if st else {}


def _running_version(st=None):
    """The version the device runs (advisory, for the server's choice; nothing trusts it)."""
    if guard._running:
        return guard._running[1].version
    slot = (st if st is not None else _running()).get("committed")
    if slot:
        try:
            with open(guard.slot_path(slot), "rb") as f:
                head = f.read(32)
                mlen = int.from_bytes(head[12:16], "little")
                if mlen <= 16384:
                    return json.loads(f.read(mlen))["version"]
        except (OSError, ValueError, KeyError):
            pass
    return "0"


def _download(cfg, target):
    size = target["size"]
    try:
        have = os.stat(PART)[6]
    except OSError:
        have = 0
    if have > size:
        os.remove(PART)
        have = 0
    if have < size:
        with open(PART, "ab") as f:
            status, got = request(cfg, "GET", "/v1/" + target["path"], sink=f, offset=have,
                                  limit=size - have)
        if status not in (200, 206) or (status == 200 and have):
            os.remove(PART)  # the server ignored the range: start again next round
            raise OSError("download answered %d" % status)
        have += got
    if have != size:
        raise OSError("download incomplete: %d of %d bytes" % (have, size))


_held = None  # this round: the next trust root, held back until a release fits it


def _fetch_roots(cfg, version):
    """Install trust roots up to `version`, one step at a time, as far as the running
    release still verifies: a root under which it would not (its release key retired,
    a raised threshold) would leave nothing to boot or fall back to. Returns the version
    installed; the device takes the rest after it runs a release signed for them
    (a key rotation in the safe order: docs/updates.md, "Rotating the release key")."""
    root = meta.installed_root()
    have = root["version"]
    if not have < version <= have + 16:
        raise Refused("server names trust root %d; this device has %d" % (version, have))
    global _held
    slot = _running().get("committed")
    files = []
    stopped = None
    for v in range(have + 1, version + 1):
        status, data = request(cfg, "GET", "/v1/roots/%d.mpsr" % v, limit=meta.rel_mod.MAX_ROOT)
        if status != 200:
            raise OSError("trust root %d answered %d" % (v, status))
        new = meta.rel_mod.verify_root_update(root, data)
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


def check_once(now=None):
    """One update round. Returns "none" or "staged" (then reset into the trial)."""
    global _held
    _held = None
    cfg = _config()
    _ensure_clock()
    board, app = guard.config()["board"], cfg.get("app", "")
    seen = meta.load_seen()
    st = _running()
    ask = {"hardware_id": cfg["hardware_id"], "board": board, "app": app,
           "version": _running_version(st), "counter": st.get("counter", 0),
           "timestamp_version": seen.get("version", 0)}
    if cfg.get("channel"):  # written by `mpseal provision --channel` (default: stable)
        ask["channel"] = cfg["channel"]
    offer = _json(cfg, "POST", "/v1/device/check", ask)
    if not offer.get("update"):
        return "none"
    # Newer trust roots first (TUF order): they verify themselves, each step signed by
    # the old and the new root keys, so asking for them is safe whatever the server says.
    want = offer.get("root_version", 0)
    if isinstance(want, int) and want > meta.installed_root()["version"]:
        _fetch_roots(cfg, want)
    status, data = request(cfg, "GET", "/v1/" + meta.safe_path(offer["timestamp"]),
                           limit=meta.MAX_TS)
    if status != 200:
        raise OSError("timestamp answered %d" % status)
    try:
        ts = meta.accept_timestamp(data, now)
    except meta.NeedRoots as e:
        # Roots this device cannot take yet (its running release would not verify under
        # them) are held back: the timestamp is judged by the root it has, and the update
        # it offers must verify under that root too (the guard checks it).
        held = e.version if _fetch_roots(cfg, e.version) < e.version else 0
        ts = meta.accept_timestamp(data, now, held)
    _set_clock(ts["issued"])
    target = meta.pick_target(ts, board, app)
    if target is None:
        raise Refused("the signed timestamp offers no release for this board")
    if offer.get("target", {}).get("manifest_sha256") != target["manifest_sha256"]:
        raise Refused("the server offered a release the signed timestamp does not name")
    if target["counter"] < st.get("counter", 0):
        raise Refused("the offered release is older than the running one: rollback refused")
    _download(cfg, target)
    with open(PART, "rb") as f:
        head = f.read(32)
        mlen = int.from_bytes(head[12:16], "little")
        if mlen > 16384 or not meta.manifest_matches(target, f.read(mlen)):
            os.remove(PART)
            raise Refused("downloaded manifest is not the one the timestamp names (mix-and-match)")
    if _held is not None:
        # A held-back root (see _fetch_roots): take only a release that runs under it as
        # well, so that the next round can install that root. Never a way around it.
        try:
            meta.rel_mod.verify_file(PART, _held, board, 0, guard.config()["max_image"])
        except Refused as e:
            os.remove(PART)
            raise Refused("the offered release would not run under trust root %d, which this "
                          "device takes next (%s)" % (_held["version"], e))
    try:
        r = guard.stage(PART)
    finally:
        try:
            os.remove(PART)
        except OSError:
            pass
    meta.write_atomic(STAGED, r.version.encode())
    report(cfg, "staged", r.version)
    return "staged"


def report_boot():
    """Call after confirm(): the server learns whether the last staged release was committed
    or rolled back (the guard reverted it and this is the older release running)."""
    cfg = _config()
    try:
        with open(STAGED) as f:
            staged = f.read(40)
    except OSError:
        return
    running = _running_version()
    if staged == running:
        report(cfg, "confirmed", running)
    else:
        report(cfg, "rolled_back", staged, "running %s after its trial" % running)
    try:
        os.remove(STAGED)
    except OSError:
        pass


def poll_forever(reset=True, backoff=BACKOFF):
    """Check periodically; on a staged update reset into its trial boot."""
    import random

    delay = backoff[0]
    while True:
        try:
            if check_once() == "staged":
                guard.log("update staged: resetting into its trial boot")
                if reset:
                    import mpseal_port

                    mpseal_port.reset()
                return
            delay = backoff[0]
        except Refused as e:
            guard.log("update refused: %s" % e)
            report(_config(), "refused", reason=str(e))
            delay = min(delay * 2, backoff[1])
        except (OSError, ValueError, KeyError) as e:
            guard.log("update check failed: %s" % e)
            delay = min(delay * 2, backoff[1])
        time.sleep(delay // 2 + random.getrandbits(16) % (delay // 2 + 1))
