# Verifying mpseal release artifacts ON the device, streaming, in bounded RAM.
#
# Strict: every function raises Refused(reason) on anything wrong and decides
# nothing; the guard (mpseal_guard.py) decides what to do about it.
# Format: docs/formats.md. Threat tier: T1 (network, mirror, CDN), and T0 for a
# user who copies a foreign or altered artifact onto the filesystem.

import hashlib
import json
import struct

import p256

MAGIC = b"\x89MPSEAL\n"
HEADER = "<8sHHIB3sII4s"
HEADER_LEN = 32
ENTRY_LEN = 96
MAX_MANIFEST = 16384
MAX_SIGS = 8
MAX_ROOT = 16384
CHUNK = 512


class Refused(Exception):
    pass


def _hex(b):
    return "".join("%02x" % x for x in b)


def load_root(data):
    """Parse a trust root envelope -> {"keys": {keyid: pub65}, "roles": {...}}.

    The root's own signatures are checked when it is installed or rotated, not
    on every boot (see mpseal_guard.install_root)."""
    if len(data) < 12 or len(data) > MAX_ROOT or data[:4] != b"MPSR":
        raise Refused("trust root is missing or damaged")
    ver, nsig, _, plen = struct.unpack("<BBHI", data[4:12])
    if ver != 1 or 12 + plen + nsig * ENTRY_LEN != len(data):
        raise Refused("trust root is damaged")
    payload = bytes(data[12 : 12 + plen])
    try:
        doc = json.loads(payload)
        keys = {}
        for kid, k in doc["keys"].items():
            pub = bytes.fromhex(k["public"])
            if hashlib.sha256(pub).digest() != bytes.fromhex(kid):
                raise Refused("trust root key id does not match its key")
            keys[kid] = pub
        roles = doc["roles"]
        for name in ("root", "release"):
            if not roles[name]["keyids"] or roles[name]["threshold"] < 1:
                raise Refused("trust root role %s is empty" % name)
    except (ValueError, KeyError, TypeError, AttributeError):
        raise Refused("trust root payload is malformed")
    root = {"version": doc.get("version", 0), "keys": keys, "roles": roles}
    return root, payload, data[12 + plen :], nsig


def check_threshold(root, role, payload, sigblock, nsig, what):
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


def verify_root_update(old_root, data):
    """A new trust root must be signed by a threshold of the OLD root role and of its own."""
    new_root, payload, sigblock, nsig = load_root(data)
    check_threshold(old_root, "root", payload, sigblock, nsig, "new trust root")
    check_threshold(new_root, "root", payload, sigblock, nsig, "new trust root")
    if new_root["version"] <= old_root["version"]:
        raise Refused("trust root version %d is not newer" % new_root["version"])
    return new_root


class Release:
    # What the guard needs to know of a verified artifact (the file list only on request:
    # the verified-files mount needs it, staging does not).
    def __init__(self, man, offset, size, files=False):
        self.app = man["app"]
        self.version = man["version"]
        self.counter = man["counter"]
        self.entry = man["entry"]
        self.sha256 = man["image"]["sha256"]
        self.files = man.get("files") if files else None  # [[path, size, offset, sha256], ...]
        self.offset = offset
        self.size = size


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


def check_manifest(root, head, manifest, sigs, board, min_counter, max_image, files=False):
    nsig, off, ilen = head
    check_threshold(root, "release", manifest, sigs, nsig, "manifest")
    try:
        man = json.loads(manifest)
        ok = (man["type"] == "mpseal-release" and man["spec"] == 1
              and man["image"]["format"] == "romfs" and len(man["image"]["sha256"]) == 64)
        rel = Release(man, off, ilen, files)
        size = man["image"]["size"]
        board_ok = man["board"] == board
    except (ValueError, KeyError, TypeError):
        raise Refused("manifest is malformed")
    man = None
    if not ok:
        raise Refused("manifest is not an mpseal release")
    if size != ilen or ilen > max_image:
        raise Refused("image size %d does not match the manifest or the slot" % ilen)
    if not board_ok:
        raise Refused("artifact is for another board")
    if type(rel.counter) is not int or rel.counter < min_counter:
        raise Refused("security counter %s is below %d: rollback refused" % (rel.counter, min_counter))
    if not isinstance(rel.entry, str) or not rel.entry or "/" in rel.entry or "." in rel.entry:
        raise Refused("manifest entry is not a module name")
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


def verify_file(path, root, board, min_counter, max_image, into=None, files=False):
    """Fully verify the artifact stored at `path`; return its Release.

    With `into` (a buffer at least as large as the image) the image is read into
    it while being hashed: one pass over the flash, and what was checked is what
    sits in RAM."""
    try:
        f = open(path, "rb")
    except OSError:
        raise Refused("slot is empty")
    try:
        head, manifest, sigs = read_head(f)
        rel = check_manifest(root, head, manifest, sigs, board, min_counter, max_image, files)
        manifest = sigs = None
        if into is not None:
            if len(into) < rel.size:
                raise Refused("no RAM reserved for a %d-byte image" % rel.size)
            into = memoryview(into)[: rel.size]
        if hash_stream(f, rel.size, into=into) != rel.sha256:
            raise Refused("image hash does not match the signed manifest")
        if f.read(1):
            raise Refused("artifact has bytes after the image")
        return rel
    finally:
        f.close()


def copy_verified(src, dst_path, root, board, min_counter, max_image):
    """Stream artifact file object `src` to `dst_path`, verifying on the way.

    The signature and manifest are checked before any image byte is written; the
    image hash when the last byte is in. On any refusal `dst_path` is removed."""
    import os

    out = open(dst_path, "wb")
    try:
        head, manifest, sigs = read_head(src)
        rel = check_manifest(root, head, manifest, sigs, board, min_counter, max_image)
        _, off, _ = head
        # Re-create the exact header bytes (with the check) from what was read.
        hdr = bytearray(struct.pack(HEADER, MAGIC, 1, HEADER_LEN, len(manifest),
                                    len(sigs) // ENTRY_LEN, b"\0\0\0", off, rel.size, b""))
        hdr[28:32] = hashlib.sha256(hdr[:28]).digest()[:4]
        out.write(hdr)
        out.write(manifest)
        out.write(sigs)
        out.write(bytes(off - HEADER_LEN - len(manifest) - len(sigs)))
        manifest = sigs = None
        if hash_stream(src, rel.size, out) != rel.sha256:
            raise Refused("image hash does not match the signed manifest")
        if src.read(1):
            raise Refused("artifact has bytes after the image")
        out.close()
        return rel
    except BaseException:
        out.close()
        try:
            os.remove(dst_path)
        except OSError:
            pass
        raise
