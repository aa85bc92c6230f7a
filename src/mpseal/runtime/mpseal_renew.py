# Certificate renewal on the device (MicroPython): a new key made here, a CSR, the
# server's simplereenroll (POST /v1/device/reenroll, over the round's mutual-TLS
# connection with the CURRENT certificate), then an atomic swap.
#
#   current() -> (cert_path, key_path)      the pair the device's TLS loads now
#   due(now) -> bool                        two thirds of the current certificate's life
#                                           past, by this clock (NTP / the signed
#                                           timestamp's floor, as mpseal_ota keeps it)
#   renew(http, cfg) -> new cert path       one renewal on mpseal_ota.Http `http`
#   maybe_renew(http, cfg, now) -> "renewed" | "recovered" | "not due" | "no key support"
#   expired(now) -> bool                    past notAfter: the device connects with its
#                                           bearer token only and recovers (recover())
#
# The swap, safe against a power cut at any write (littlefs renames are atomic):
#   1. leftovers of an interrupted renewal are removed (never the current pair);
#   2. a new key at /mpseal/id/device-N.key.der (mpseal_csr: temp file, then rename);
#   3. the CSR is posted; the answer is checked (a certificate of our new public key)
#      and written to device-N.der (temp file, then rename);
#   4. PROOF: a new TLS connection with the new pair asks GET /v1/device/certificate and
#      the server must name the new certificate's SHA-256;
#   5. /mpseal/id/identity.json names the new pair (temp file, then rename): the switch;
#   6. the old pair is removed (or, after a cut, at the start of the next round).
# A cut before 5 leaves the old pair current (still valid: the server keeps it until it
# expires); a cut after 5, the new. Nothing the server sends can make the device drop a
# pair that works: only a handshake with the new one does. Threat tier: T1.

import json
import os

import mpseal_meta as meta

ID = "/mpseal/id/"
POINTER = ID + "identity.json"
DEFAULT = ("device.der", "device.key.der")  # what provisioning writes
RENEW_NUM, RENEW_DEN = 2, 3  # renew once two thirds of the lifetime are past
MAX_CERT = 4096
clock_offset = 0  # seconds added to the device's clock (the virtual board's tests move it)


def _pointer():
    try:
        d = json.loads(meta.read_small(POINTER, 256, "identity"))
        if (isinstance(d, dict) and type(d.get("n")) is int and d.get("cert") == "device-%d.der"
                % d["n"] and d.get("key") == "device-%d.key.der" % d["n"]):
            return d
    except Exception:  # why: no pointer (never renewed) or a damaged one: the default
        pass
    return {"cert": DEFAULT[0], "key": DEFAULT[1], "n": 0}


def current():
    p = _pointer()
    return ID + p["cert"], ID + p["key"]


# -- the certificate's validity, read from its DER ----------------------------------------


def _tlv(b, i):
    tag, n = b[i], b[i + 1]
    i += 2
    if n & 0x80:
        k = n & 0x7F
        if k < 1 or k > 2:
            raise ValueError("bad DER length")
        n = int.from_bytes(b[i : i + k], "big")
        i += k
    if i + n > len(b):
        raise ValueError("DER runs past its end")
    return tag, i, i + n  # tag, start of body, end of body


def _days(y, m, d):
    # days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil)
    y -= m <= 2
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    return era * 146097 + (yoe * 365 + yoe // 4 - yoe // 100 + doy) - 719468


def _time(b, i):
    tag, s, e = _tlv(b, i)
    t = bytes(b[s:e]).decode()
    if tag == 0x17 and len(t) == 13:  # UTCTime YYMMDDHHMMSSZ
        y = int(t[:2])
        y += 2000 if y < 50 else 1900
        t = t[2:]
    elif tag == 0x18 and len(t) == 15:  # GeneralizedTime YYYYMMDDHHMMSSZ
        y = int(t[:4])
        t = t[4:]
    else:
        raise ValueError("unsupported certificate time")
    if t[-1] != "Z":
        raise ValueError("certificate time is not UTC")
    secs = int(t[4:6]) * 3600 + int(t[6:8]) * 60 + int(t[8:10])
    return _days(y, int(t[0:2]), int(t[2:4])) * 86400 + secs, e


def validity(der):
    """(notBefore, notAfter) of a DER certificate, in unix seconds."""
    _, s, _ = _tlv(der, 0)  # Certificate
    _, i, _ = _tlv(der, s)  # tbsCertificate
    if der[i] == 0xA0:  # [0] version
        i = _tlv(der, i)[2]
    for _ in range(3):  # serial, signature algorithm, issuer
        i = _tlv(der, i)[2]
    _, v, _ = _tlv(der, i)  # validity
    nb, j = _time(der, v)
    na, _ = _time(der, j)
    return nb, na


def now():
    """The device's clock, never below the newest signed timestamp it verified (a board
    whose RTC was never set still knows roughly when it is)."""
    t = meta.unix_time()
    try:
        t = max(t, meta.load_seen()["issued"])
    except Exception:  # why: no timestamp seen yet
        pass
    return t + clock_offset


def due(at=None):
    cert, _ = current()
    try:
        nb, na = validity(meta.read_small(cert, MAX_CERT, "certificate"))
    except Exception:  # why: no certificate, or one we cannot read: nothing to renew
        return False
    at = now() if at is None else at
    return at >= nb + (na - nb) * RENEW_NUM // RENEW_DEN


# -- the renewal ----------------------------------------------------------------------------


def _remove(path):
    try:
        os.remove(path)
    except OSError:
        pass


def _cleanup(keep):
    """Remove renewal leftovers: every device-*.der / .tmp in /mpseal/id but the pair `keep`."""
    for name in os.listdir(ID[:-1]):
        if ID + name in keep or name == "identity.json":
            continue
        if name.startswith("device"):  # an old pair's key too: it must not outlive its use
            _remove(ID + name)


def _hex(b):
    import binascii

    return binascii.hexlify(b).decode()


def expired(at=None):
    """Has the current certificate expired by this clock? (Then the server's TLS refuses
    it: the device connects with its bearer token only, and recovers.)"""
    cert, _ = current()
    try:
        na = validity(meta.read_small(cert, MAX_CERT, "certificate"))[1]
    except Exception:  # why: no certificate: nothing expired
        return False
    return (now() if at is None else at) >= na


def _next():
    ptr = _pointer()
    old = (ID + ptr["cert"], ID + ptr["key"])
    _cleanup(old)
    n = ptr["n"] + 1
    return old, n, ID + "device-%d.der" % n, ID + "device-%d.key.der" % n


def renew(http, cfg):
    import mpseal_csr

    old, n, cert_path, key_path = _next()
    pub = mpseal_csr.create_key(key_path)
    body = mpseal_csr.csr([("CN", cfg["hardware_id"])], key_path)
    status, der = http.request("POST", "/v1/device/reenroll", body, limit=MAX_CERT,
                               ctype="application/pkcs10")
    if status != 200:
        raise OSError("renewal answered %d" % status)
    return _install(cfg, old, n, pub, der)


def recover(http, cfg):
    """A certificate that expired (the device was off too long): the bearer token AND a
    signature of a fresh server challenge by the expired certificate's key get a new one
    (POST /v1/device/recover; docs/certificates.md). Only for keys born on the device."""
    import hashlib

    import mpseal_csr

    if not cfg.get("_token"):
        raise OSError("the certificate expired and this device has no bearer token to recover")
    old, n, cert_path, key_path = _next()
    status, data = http.request("POST", "/v1/device/recover/challenge", b"{}")
    try:
        challenge = json.loads(data)["challenge"] if status == 200 else None
    except (ValueError, KeyError, TypeError):
        challenge = None
    if not isinstance(challenge, str) or not 0 < len(challenge) <= 200:
        raise OSError("recovery challenge answered %d" % status)
    pub = mpseal_csr.create_key(key_path)
    csr = mpseal_csr.csr([("CN", cfg["hardware_id"])], key_path)
    sig = mpseal_csr.sign(hashlib.sha256(challenge.encode() + csr).digest(), old[1])
    body = json.dumps({"certificate": _hex(meta.read_small(old[0], MAX_CERT, "certificate")),
                       "csr": _hex(csr), "challenge": challenge, "signature": _hex(sig)})
    status, der = http.request("POST", "/v1/device/recover", body.encode(), limit=MAX_CERT)
    if status != 200:
        raise OSError("recovery answered %d" % status)
    return _install(cfg, old, n, pub, der)


def _install(cfg, old, n, pub, der):
    import hashlib

    import mpseal_ota

    cert_path, key_path = ID + "device-%d.der" % n, ID + "device-%d.key.der" % n
    if pub not in der:
        raise meta.Refused("the server's certificate is not for the key made here")
    validity(der)  # it parses as a certificate
    meta.write_atomic(cert_path, der)
    fp = _hex(hashlib.sha256(der).digest())
    # Proof: a handshake with the new pair, and the server names the new certificate.
    proof = dict(cfg)
    proof["_identity"] = (cert_path, key_path)
    proof["_token"] = None
    h = mpseal_ota.Http(proof)
    try:
        status, data = h.request("GET", "/v1/device/certificate")
    finally:
        h.close()
    try:
        seen = json.loads(data).get("fingerprint") if status == 200 else None
    except (ValueError, AttributeError):
        seen = None
    if seen != fp:
        raise OSError("the new certificate did not prove itself (answer %d)" % status)
    meta.write_atomic(POINTER, json.dumps({"cert": "device-%d.der" % n,
                                           "key": "device-%d.key.der" % n, "n": n}))
    for p in old:
        _remove(p)
    return cert_path


def maybe_renew(http, cfg, at=None):
    try:  # what a renewal cut short left behind (after the switch: the old pair)
        _cleanup(current())
    except OSError:
        pass
    gone = expired(at)
    if not gone and not due(at):
        return "not due"
    try:
        import mpseal_csr  # noqa: F401 - on boards provisioned with --keygen device
    except ImportError:
        return "no key support"
    if gone:
        recover(http, cfg)
        return "recovered"
    renew(http, cfg)
    return "renewed"
