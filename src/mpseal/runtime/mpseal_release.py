# Verifying mpseal release artifacts ON the device, streaming, in bounded RAM.
#
# Strict: every function raises Refused(reason) on anything wrong and decides
# nothing; the guard (mpseal_guard.py) decides what to do about it.
# Format: docs/formats.md. Threat tier: T1 (network, mirror, CDN), and T0 for a
# user who copies a foreign or altered artifact onto the filesystem.

import hashlib
import json
import struct

import p256  # the guard sets this to None once the boot's signature is checked (_drop_verifier)

MAGIC = b"\x89MPSEAL\n"
HEADER = "<8sHHIB3sII4s"
HEADER_LEN = 32
ENTRY_LEN = 96
MAX_MANIFEST = 16384  # limits.py: manifest_max_length (tests/test_limits.py)
MAX_IMAGE = 4 * 1024 * 1024  # limits.py: image_max_length
MAX_SIGS = 8  # limits.py: signatures_max_count
MAX_FILES = 4096  # limits.py: files_max_count
MAX_ROOT = 16384
CHUNK = 512
ENCRYPTED = "romfs-aes256cbc"  # formats/encrypted.py
KEY_RECORD_LEN = 40  # the device's key record, kept after the image in its slot


from mpseal_port import Refused  # noqa: E402 - one class, kept by the guard (mpseal_port)


try:
    from binascii import hexlify as _hexlify
except ImportError:  # a firmware without binascii: the same text, ~20x slower
    _hexlify = None


def _hex(b):
    if _hexlify:
        return _hexlify(b).decode()
    return "".join("%02x" % x for x in b)


# Character sets, most common characters first: `in` and str.strip search them from the
# start, one compare per character passed (~0.2 ms a name on a Pico in the old order).
# Written out where used, not made from parts at import: each would be a string on the
# heap and a global name (a qstr) while the boot's signature is checked.
#   name: [a-z_0-9A-Z][a-z._0-9-A-Z]*   version: [0-9a-zA-Z][0-9.a-z+-A-Z]*
#   module (entry): [a-z_A-Z][a-z_0-9A-Z]*
ROLES = ("root", "release", "timestamp")


def envelope(data, magic, what, max_len):
    """The one parser of signed envelopes on the device (trust root MPSR, timestamp MPST,
    unlock token MPSU): -> (payload, signature block, count), memoryviews of `data`.
    Same checks as the host's formats/envelope.py."""
    if len(data) > max_len:
        raise Refused("%s is larger than %d bytes" % (what, max_len))
    if len(data) < 12 or data[:4] != magic:
        raise Refused("not an mpseal %s" % what)
    ver, nsig, res, plen = struct.unpack("<BBHI", data[4:12])
    if ver != 1 or res or nsig > MAX_SIGS or 12 + plen + nsig * ENTRY_LEN != len(data):
        raise Refused("%s is damaged" % what)
    mv = memoryview(data)
    return mv[12 : 12 + plen], mv[12 + plen :], nsig


def _only(v, chars):
    return v.strip(chars) == ""  # allocates nothing when it holds (the guard's heap is small)


def is_hex(v, nbytes):
    """Exactly `nbytes` bytes of lowercase hex (as the host's jsondoc.Fields.hex)."""
    if not isinstance(v, str) or len(v) != 2 * nbytes:
        return False
    try:
        return len(bytes.fromhex(v)) == nbytes and v.lower() == v
    except ValueError:
        return False


def is_name(v, n, first="abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
            rest="abcdefghijklmnopqrstuvwxyz._0123456789-ABCDEFGHIJKLMNOPQRSTUVWXYZ"):
    """As the host's regexes: one of `first`, then up to n-1 of `rest`."""
    return isinstance(v, str) and 0 < len(v) <= n and v[0] in first and _only(v, rest)


def is_version(v):
    return is_name(v, 32, "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ",
                   "0123456789.abcdefghijklmnopqrstuvwxyz+-ABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _int(v, lo, hi):
    return type(v) is int and lo <= v <= hi


def load_root(data):
    """Parse a trust root envelope -> {"keys": {keyid: pub65}, "roles": {...}}.

    The root's own signatures are checked when it is installed or rotated, not
    on every boot (see mpseal_guard.install_root); the structure is checked as
    strictly as the host does (formats/trustroot.py)."""
    payload, sigblock, nsig = envelope(data, b"MPSR", "trust root", MAX_ROOT)
    try:  # (json.loads reads the memoryview in place: no copy of the payload at each boot)
        doc = json.loads(payload)
        ok = (doc["type"] == "mpseal-root" and doc["spec"] == 1 and type(doc["spec"]) is int
              and _int(doc["version"], 1, 1 << 31))
        keys = {}
        for kid, k in doc["keys"].items():
            if k["keytype"] != "ecdsa-p256" or not is_hex(k["public"], 65) or not is_hex(kid, 32):
                raise Refused("trust root key %s is malformed" % kid[:16])
            pub = bytes.fromhex(k["public"])
            if hashlib.sha256(pub).digest() != bytes.fromhex(kid):
                raise Refused("trust root key id does not match its key")
            keys[kid] = pub
        roles = doc["roles"]
        for name, r in roles.items():
            ids = r["keyids"]
            if (name not in ROLES or type(ids) is not list or not 1 <= len(ids) <= MAX_SIGS
                    or not _int(r["threshold"], 1, len(ids))):
                raise Refused("trust root role %s is malformed" % name)
            for k in ids:
                if not isinstance(k, str) or k not in keys:
                    raise Refused("trust root role %s names keys it does not define" % name)
        for name in ("root", "release"):
            if name not in roles:
                raise Refused("trust root role %s is empty" % name)
        anchors = _anchors(doc)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise Refused("trust root payload is malformed")
    if not ok:
        raise Refused("trust root payload is not an mpseal root")
    root = {"version": doc["version"], "keys": keys, "roles": roles, "tls_anchors": anchors}
    return root, payload, sigblock, nsig


def _anchors(doc):
    # The update server's TLS anchors (DER certificates, tried in order), as strictly as
    # the host's formats/trustroot.py: at most 4, lowercase hex, one DER SEQUENCE each.
    if "tls_anchors" not in doc:
        return []
    listed = doc["tls_anchors"]
    if type(listed) is not list or not 1 <= len(listed) <= 4:
        raise Refused("trust root tls_anchors is malformed")
    out = []
    for a in listed:
        if (not isinstance(a, str) or not a or len(a) % 2 or len(a) > 4096
                or not _only(a, "0123456789abcdef")):
            raise Refused("trust root tls_anchors entry is not lowercase hex DER")
        der = bytes.fromhex(a)
        n, i = der[1] if len(der) > 1 else 0, 2
        if n & 0x80:
            k = n & 0x7F
            if k not in (1, 2) or len(der) < 2 + k:
                raise Refused("trust root tls_anchors entry is not one DER certificate")
            n, i = int.from_bytes(der[2 : 2 + k], "big"), 2 + k
        if der[0] != 0x30 or i + n != len(der):
            raise Refused("trust root tls_anchors entry is not one DER certificate")
        out.append(der)
    return out


def check_threshold(root, role, payload, sigblock, nsig, what):
    global p256
    if p256 is None:  # dropped after the boot's check: an update needs it again
        import p256

    r = root["roles"][role]
    keyids = r["keyids"]
    digest = hashlib.sha256(payload).digest()
    good = []
    unknown = 0
    for i in range(nsig):
        entry = sigblock[i * ENTRY_LEN : (i + 1) * ENTRY_LEN]
        kid = _hex(entry[:32])
        if kid not in keyids:
            unknown += 1
            continue
        if kid in good:
            continue
        if not p256.verify(root["keys"][kid], digest, bytes(entry[32:])):
            raise Refused("%s signature by %s key %s does not verify" % (what, role, kid[:16]))
        good.append(kid)
    if len(good) >= r["threshold"]:
        return good
    if unknown and not good:
        raise Refused("%s is signed by an unknown key" % what)
    raise Refused("%s has %d of %d %s signatures" % (what, len(good), r["threshold"], role))


class Release:
    # What the guard needs to know of a verified artifact (the file list only on request:
    # the verified-files mount needs it, staging does not).
    def __init__(self, man, offset, size, files=False):
        self.app = man["app"]
        self.version = man["version"]
        self.counter = man["counter"]
        self.entry = man["entry"]
        self.sha256 = man["image"]["sha256"]
        # Where the file index is: the manifest's {count, offset, size, sha256}
        self.files = man["files"] if files else None
        # The loosest lockdown profile this release allows (signed: the build's profile);
        # an unsigned device.json may only make it stricter (mpseal_guard).
        p = man["build"].get("profile")
        self.profile = p if p in ("dev", "field", "sealed") else "field"
        self.offset = offset
        self.size = size
        # An encrypted release (formats/encrypted.py): (table sha256, table size, ROMFS size);
        # mpseal_encfs.open_release fills `key` and `files` on the device it was wrapped for.
        enc = man.get("encrypted") if man["image"]["format"] == ENCRYPTED else None
        self.enc = (enc["table"]["sha256"], enc["table"]["size"], enc["romfs_size"]) if enc else None
        self.key = None
        self.key_record = None
        self.slot_file = None  # verify_file(keep=True): the slot, still open


def read_head(f):
    """Read header, manifest and signatures from file-like `f` -> (fields, manifest, sigs)."""
    head = f.read(HEADER_LEN)
    if not head or len(head) != HEADER_LEN:
        raise Refused("artifact is truncated")
    magic, ver, hlen, mlen, nsig, res, off, ilen, check = struct.unpack(HEADER, head)
    if magic != MAGIC:
        raise Refused("not an mpseal artifact (wrong magic)")
    if ver != 1 or hlen != HEADER_LEN:
        raise Refused("artifact format version is not supported")
    if hashlib.sha256(head[:28]).digest()[:4] != check:
        raise Refused("artifact header is damaged")
    if mlen > MAX_MANIFEST or not 1 <= nsig <= MAX_SIGS or res != b"\0\0\0":
        raise Refused("artifact header field out of range")
    end = HEADER_LEN + mlen + nsig * ENTRY_LEN
    if off != (end + 63) // 64 * 64:
        raise Refused("artifact image offset is wrong")
    manifest = f.read(mlen)
    sigs = f.read(nsig * ENTRY_LEN)
    if len(manifest) != mlen or len(sigs) != nsig * ENTRY_LEN:
        raise Refused("artifact is truncated")
    pad = f.read(off - end)
    if len(pad) != off - end or pad.count(b"\0") != len(pad):
        raise Refused("artifact padding is damaged")
    return (nsig, off, ilen), manifest, sigs


def _index_ref_ok(ref, image_size):
    # `files`: null, or the file index that ends the image (formats/manifest.py
    # parse_index_ref); the index itself is read and checked by mpseal_appfs.load_index.
    if ref is None:
        return True
    return (type(ref) is dict and len(ref) == 4 and _int(ref["count"], 1, MAX_FILES)
            and _int(ref["offset"], 1, image_size) and _int(ref["size"], 8, image_size)
            and ref["offset"] + ref["size"] == image_size and is_hex(ref["sha256"], 32))


def parse_manifest(manifest, max_image=MAX_IMAGE):
    """The signed manifest bytes -> dict, as strictly as the host's formats/manifest.py."""
    try:
        man = json.loads(manifest)
        mpy, image = man["mpy"], man["image"]
        ok = (man["type"] == "mpseal-release" and _int(man["spec"], 1, 1)
              and is_name(man["app"], 64) and is_version(man["version"])
              and _int(man["counter"], 0, 0x7FFFFFFF)
              and isinstance(man["board"], str) and len(man["board"]) <= 32
              and isinstance(man["port"], str) and len(man["port"]) <= 32
              and isinstance(mpy["version"], str) and len(mpy["version"]) <= 8
              and isinstance(mpy["arch"], str) and len(mpy["arch"]) <= 16
              and image["format"] in ("romfs", ENCRYPTED) and is_hex(image["sha256"], 32)
              and _int(image["size"], 0, max_image)
              and is_name(man["entry"], 64, "abcdefghijklmnopqrstuvwxyz_ABCDEFGHIJKLMNOPQRSTUVWXYZ",
                          "abcdefghijklmnopqrstuvwxyz_0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
              and _index_ref_ok(man["files"], image["size"])
              and type(man["build"]) is dict)
        if ok and image["format"] == ENCRYPTED:
            ok = _encryption_ok(man["encrypted"], image["size"], max_image) and man["files"] is None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError):
        raise Refused("manifest is malformed")
    if not ok:
        raise Refused("manifest is not an mpseal release")
    return man


def _pad16(n):
    return (n + 15) // 16 * 16


def _encryption_ok(enc, image_size, max_image):
    # As the host's formats/manifest.py parse_encryption (formats/encrypted.py: the format).
    table = enc["table"]
    return (enc["alg"] == "aes-256-cbc" and is_hex(table["sha256"], 32)
            and _int(table["size"], 8, max_image) and _int(enc["romfs_size"], 0, max_image)
            and 16 + _pad16(table["size"]) + _pad16(enc["romfs_size"]) == image_size)


def check_manifest(root, head, manifest, sigs, board, min_counter, max_image, files=False,
                   app=None):
    nsig, off, ilen = head
    check_threshold(root, "release", manifest, sigs, nsig, "manifest")
    man = parse_manifest(manifest)
    rel = Release(man, off, ilen, files)
    size = man["image"]["size"]
    board_ok = man["board"] == board
    man = None
    if size != ilen or ilen > max_image:
        raise Refused("image size %d does not match the manifest or the slot" % ilen)
    if not board_ok:
        raise Refused("artifact is for another board")
    if app and rel.app != app:
        raise Refused("artifact is release %s of app %s; this device runs %s: another product "
                      "refused" % (rel.version, rel.app, app))
    if rel.counter < min_counter:
        raise Refused("security counter %s is below %d: rollback refused" % (rel.counter, min_counter))
    return rel


def hash_stream(f, size, out=None, into=None):
    """SHA-256 of the next `size` bytes of `f`.

    The bytes are copied to file `out`, or read straight into memoryview `into`
    (which then holds exactly the bytes that were hashed), or just hashed."""
    h = hashlib.sha256()
    mv = into if into is not None else memoryview(bytearray(CHUNK))
    pos = 0
    while pos < size:
        n = min(size - pos, CHUNK)
        chunk = mv[pos : pos + n] if into is not None else mv[:n]
        got = f.readinto(chunk)
        if not got:
            raise Refused("artifact image is truncated")
        chunk = chunk[:got]
        h.update(chunk)
        if out is not None:
            out.write(chunk)
        pos += got
    return _hex(h.digest())


def verify_file(path, root, board, min_counter, max_image, into=None, files=False, app=None,
                image=True, keep=False):
    """Fully verify the artifact stored at `path`; return its Release.

    With `into` (a buffer at least as large as the image) the image is read into
    it while being hashed: one pass over the flash, and what was checked is what
    sits in RAM. image=False stops after the signed manifest (which names the file
    index): only for the verified-files mount, which checks the index against the
    manifest's hash and every file against the index's when it is read (mpseal_appfs),
    so the image hash would read it all twice. keep=True (with image=False): the slot file
    stays open as rel.slot_file, for the mount (each open is a littlefs lookup). With neither
    image nor keep the file is closed before the signature check: its cache (1 KB on a
    Pico, in one piece) is not held while the verifier needs the heap."""
    try:
        f = open(path, "rb")
    except OSError:
        raise Refused("slot is empty")
    try:
        head, manifest, sigs = read_head(f)
        if not image and not keep:
            f.close()
            f = None
        rel = check_manifest(root, head, manifest, sigs, board, min_counter, max_image, files,
                             app)
        manifest = sigs = None
        unhashed = not image and files and rel.files and not rel.enc  # (encrypted: never)
        if f is None and not unhashed:
            f = open(path, "rb")  # closed for the check, but the image must be hashed
            f.seek(rel.offset)
        if into is not None:
            if len(into) < rel.size:
                raise Refused("no RAM reserved for a %d-byte image" % rel.size)
            into = memoryview(into)[: rel.size]
        if unhashed:
            if keep:
                rel.slot_file = f
                f = None
            return rel
        if hash_stream(f, rel.size, into=into) != rel.sha256:
            raise Refused("image hash does not match the signed manifest")
        rest = f.read(KEY_RECORD_LEN + 1)
        if rest and rel.enc and len(rest) == KEY_RECORD_LEN:
            rel.key_record = rest  # a slot: the key this device was given (opened by the guard)
        elif rest:
            raise Refused("artifact has bytes after the image")
        return rel
    finally:
        if f is not None:
            f.close()
