# Delta updates on the device (MicroPython): rebuild a new release artifact from the
# slot the device runs and a delta file (docs/formats.md, "Delta"), in bounded RAM.
#
#   mpseal_delta.apply(delta_path, source_path, out_path)   -> the rebuilt file, or Refused
#   mpseal_delta.check_files(path)                          -> per-file hashes vs the manifest
#
# RAM: one 9-byte op at a time, a CHUNK buffer, and the inflater's 2**wbits window (at
# most 4 KiB). Nothing in a delta is trusted: the rebuilt artifact must match the hash in
# the delta header, then the update client checks it against the signed timestamp and
# the manifest's per-file hashes, and the guard's stage() verifies signature, counter,
# board and image hash. A delta that fails anything is refused and the client falls
# back to the full artifact. The limits are those of src/mpseal/limits.py (a test
# compares them). Threat tier: T1 (network, mirror, CDN).

import hashlib
import os
import struct

from mpseal_release import Refused, parse_manifest, read_head

MAGIC = b"MPSD"
HEADER = "<4sBBHIIII32s32s4s"
HEADER_LEN = 92
OP = "<BiI"  # a COPY's offset is relative to where the previous COPY ended
OP_LEN = 9
COPY = 0
LITERAL = 1
MAX_OPS = 65536  # limits.py: delta_max_ops
MAX_OP = 1024 * 1024  # limits.py: delta_max_op
WBITS_MIN = 9  # limits.py: delta_wbits_min
WBITS_MAX = 12  # limits.py: delta_wbits_max
MAX_ARTIFACT = 4 * 1024 * 1024 + 64 * 1024  # limits.py: artifact_max_length
CHUNK = 1024


def _size(path):
    try:
        return os.stat(path)[6]
    except OSError:
        raise Refused("delta source slot is empty")


def _sha_file(f, size, buf):
    h = hashlib.sha256()
    left = size
    while left:
        n = f.readinto(buf) if left >= len(buf) else f.readinto(memoryview(buf)[:left])
        if not n:
            break
        h.update(memoryview(buf)[:n])
        left -= n
    return h.digest()


def parse_header(head, delta_size):
    """The 92 header bytes -> (wbits, ops, lit, src_len, new_len, src_sha, new_sha)."""
    if len(head) != HEADER_LEN:
        raise Refused("delta is truncated")
    magic, ver, wbits, res, ops, lit, src_len, new_len, src_sha, new_sha, check = struct.unpack(
        HEADER, head)
    if magic != MAGIC:
        raise Refused("not an mpseal delta (wrong magic)")
    if ver != 1:
        raise Refused("delta format version is not supported")
    if hashlib.sha256(head[:88]).digest()[:4] != check:
        raise Refused("delta header is damaged")
    if (res or not WBITS_MIN <= wbits <= WBITS_MAX or not 1 <= ops <= MAX_OPS
            or src_len > MAX_ARTIFACT or new_len > MAX_ARTIFACT or not new_len):
        raise Refused("delta header field out of range")
    if delta_size != HEADER_LEN + lit:
        raise Refused("delta length does not match its header")
    return wbits, ops, lit, src_len, new_len, src_sha, new_sha


def _read_full(src, mv):
    got = 0
    while got < len(mv):
        k = src.readinto(mv[got:])
        if not k:
            break
        got += k
    return got


def apply(delta_path, source_path, out_path):
    """Rebuild the artifact `delta_path` describes from `source_path` into `out_path`.

    Raises Refused (and removes `out_path`) on anything wrong; returns its length."""
    try:
        import deflate
    except ImportError:
        raise Refused("this firmware has no deflate module: no delta updates")
    buf = bytearray(CHUNK)
    mv = memoryview(buf)
    opb = bytearray(OP_LEN)
    fd = open(delta_path, "rb")
    fo = fs = None
    try:
        wbits, ops, lit, src_len, new_len, src_sha, new_sha = parse_header(
            fd.read(HEADER_LEN), _size(delta_path))
        if _size(source_path) != src_len:
            raise Refused("delta was made for another release than the one this device runs")
        fs = open(source_path, "rb")
        if _sha_file(fs, src_len, buf) != src_sha:
            raise Refused("delta was made for another release than the one this device runs")
        inf = deflate.DeflateIO(fd, deflate.RAW, wbits)
        fo = open(out_path, "wb")
        h = hashlib.sha256()
        built = end = 0
        for i in range(ops):
            if _read_full(inf, memoryview(opb)) != OP_LEN:
                raise Refused("delta stream ends inside its ops")
            kind, a, n = struct.unpack(OP, opb)
            if not 1 <= n <= MAX_OP:
                raise Refused("delta op %d has a length out of range" % i)
            if kind == COPY:
                a += end
                if a < 0 or a + n > src_len:
                    raise Refused("delta op %d copies beyond the source" % i)
                fs.seek(a)
                end = a + n
                src = fs
            elif kind != LITERAL or a != 0:
                raise Refused("delta op %d is malformed" % i)
            else:
                src = inf
            if built + n > new_len:
                raise Refused("delta ops build more than the new artifact's length")
            built += n
            while n:
                chunk = mv[: min(n, CHUNK)]
                k = _read_full(src, chunk)
                if k != len(chunk):
                    raise Refused("delta stream ends inside a literal")
                h.update(chunk)
                fo.write(chunk)
                n -= k
        if inf.read(1):
            raise Refused("delta stream has bytes after its ops")
        if built != new_len:
            raise Refused("delta ops do not build the new artifact's length")
        fo.close()
        fo = None
        if h.digest() != new_sha:
            raise Refused("rebuilt artifact does not match the delta's hash")
        return new_len
    except BaseException as e:
        if fo is not None:
            fo.close()
        try:
            os.remove(out_path)
        except OSError:
            pass
        if isinstance(e, (OSError, ValueError, TypeError)):  # a damaged deflate stream
            raise Refused("delta is damaged: %s" % e)
        raise
    finally:
        for f in (fd, fs):
            if f is not None:
                f.close()


def check_files(path):
    """Every file's bytes in the artifact at `path` against its SHA-256 in the image's file
    index, itself checked against the signed manifest (the manifest's signature is checked
    by the caller and the guard). Raises Refused."""
    buf = bytearray(CHUNK)
    with open(path, "rb") as f:
        head, manifest, _ = read_head(f)
        off = head[1]
        import mpseal_appfs  # the index, read and checked as the guard's mount does

        man = parse_manifest(manifest)
        manifest = None
        ix, pos, offs, _ = mpseal_appfs.load_index(f, off, man["files"], man["image"]["size"])
        man = None
        for i in range(len(pos)):
            name, size, at, sha = mpseal_appfs.entry(ix, pos, offs, i)
            f.seek(off + at)
            if _sha_file(f, size, buf) != sha:
                raise Refused("file %s does not match its hash in the file index" % name)
