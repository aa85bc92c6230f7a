# A read-only filesystem, in MicroPython, that serves a verified app image's files
# to vfs.mount on firmware without vfs.VfsRom (stock rp2 and esp32, most stm32).
#
# The directory is the SIGNED manifest's file list ([path, size, offset, sha256]),
# never parsed from flash. open() reads the whole file from the slot into RAM,
# checks it against its signed SHA-256 and only then hands out a stream over those
# RAM bytes (io.BytesIO/StringIO of a bytes object share its buffer, no copy): what
# the importer or the app reads is exactly what was checked, and RAM use follows the
# largest file, not the image. A file whose bytes do not match
# raises Refused (the guard reports it; nothing of it is served).
#
# An encrypted release (src/mpseal/formats/encrypted.py has the format) is served here
# too, never through VfsRom: open_release() unwraps the release key from the key record
# kept after the image in the slot, under a key derived from machine.unique_id() read
# at run time (never stored), decrypts the file table and checks it against its signed
# hash; open() then decrypts one file (AES-256-CBC from the block before it, in place:
# RAM about twice the file, not the image) and checks its plaintext against its SHA-256.
#
# The VFS protocol (as `mpremote mount` serves one): mount, umount, ilistdir,
# stat, statvfs, open, chdir, getcwd; writes raise OSError(EROFS).
# Threat tier: T0/T1, as the image hash it replaces (docs/guard.md); encrypted: T0 with a
# copy of the storage, not code running on the device nor anyone who knows the id (T3).

import hashlib
import io

from mpseal_release import Refused, _hex

ENOENT = 2
EIO = 5
ENOTDIR = 20
EISDIR = 21
EINVAL = 22
EROFS = 30
S_IFDIR = 0x4000
S_IFREG = 0x8000
MAX_FILES = 4096
MAX_NAME = 120


def _safe_name(name):
    if not isinstance(name, str) or not 0 < len(name) <= MAX_NAME:
        return False
    for part in name.split("/"):
        if part in ("", ".", ".."):
            return False
    return True


def index(files, image_size):
    """{path: (size, offset, sha256 hex)} and the set of folders, from the manifest's list.

    Raises Refused on any entry a host build (formats/manifest.py) would not write."""
    if not isinstance(files, list) or not files or len(files) > MAX_FILES:
        raise Refused("manifest lists no files (built by an older mpseal?)")
    table = {}
    dirs = {""}
    for item in files:
        try:
            name, size, off, sha = item
            ok = (_safe_name(name) and type(size) is int and type(off) is int and 0 <= size
                  and 0 <= off and off + size <= image_size and isinstance(sha, str)
                  and len(sha) == 64 and name not in table)
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise Refused("manifest file list entry is malformed")
        table[name] = (size, off, sha)
        i = name.find("/")
        while i > 0:
            dirs.add(name[:i])
            i = name.find("/", i + 1)
    for d in dirs:
        if d in table:
            raise Refused("manifest names %s as a file and a folder" % d)
    return table, dirs


def _pad16(n):
    return (n + 15) // 16 * 16


def unwrap(record, hardware_id, image_sha256):
    """The release key from its 40-byte key record (as the host's formats/encrypted.py)."""
    import cryptolib

    if record is None or len(record) != 40 or record[:8] != b"MPSK\x01\0\0\0":
        raise Refused("the encrypted release has no key record for this device")
    kek = hashlib.sha256(b"mpseal-release-key-v1" + hardware_id.encode()
                         + bytes.fromhex(image_sha256)).digest()
    return cryptolib.aes(kek, 1).decrypt(record[8:])


def open_release(slot_path, rel, hardware_id):
    """Key and file table of encrypted release `rel` (verified: signature, image hash) in
    its slot; Refused when it does not open on this device. Sets rel.key and rel.files."""
    import cryptolib
    import json

    key = unwrap(rel.key_record, hardware_id, rel.sha256)
    sha, size, romfs_size = rel.enc
    with open(slot_path, "rb") as f:
        f.seek(rel.offset)
        iv = f.read(16)
        ct = f.read(_pad16(size))
    if len(iv) != 16 or len(ct) != _pad16(size):
        raise Refused("the encrypted release is truncated in the slot")
    table = cryptolib.aes(key, 2, iv).decrypt(ct)[:size]
    ct = None
    if _hex(hashlib.sha256(table).digest()) != sha:
        raise Refused("the encrypted release does not open on this device (its key was "
                      "wrapped for another device, or the slot was copied from one)")
    try:
        files = json.loads(table)
    except ValueError:
        raise Refused("the encrypted release's file table is malformed")
    index(files, romfs_size)  # checked as the mount will use it
    rel.key = key
    rel.files = files
    return rel


class AppFS:
    def __init__(self, slot_path, image_offset, files, image_size, enc=None, key=None):
        self._slot = slot_path
        self._base = image_offset
        self._key = key
        if key is not None:  # encrypted: offsets are into the ROMFS image after IV and table
            image_size = enc[2]
            self._base = image_offset + _pad16(enc[1])  # where the block before byte 0 lies
        self._files, self._dirs = index(files, image_size)
        self._cwd = ""
        self.served = 0  # files checked and served so far

    def _path(self, path):
        if not path.startswith("/"):
            path = self._cwd + "/" + path
        out = []
        for part in path.split("/"):
            if part == "..":
                if out:
                    out.pop()
            elif part and part != ".":
                out.append(part)
        return "/".join(out)

    # -- the VFS protocol --
    def mount(self, readonly, mkfs):
        if mkfs:
            raise OSError(EROFS)

    def umount(self):
        pass

    def stat(self, path):
        p = self._path(path)
        if p in self._dirs:
            return (S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        f = self._files.get(p)
        if f is None:
            raise OSError(ENOENT)
        return (S_IFREG, 0, 0, 0, 0, 0, f[0], 0, 0, 0)

    def ilistdir(self, path):
        p = self._path(path)
        if p not in self._dirs:
            raise OSError(ENOTDIR if p in self._files else ENOENT)
        prefix = p + "/" if p else ""
        n = len(prefix)
        seen = []
        for name in self._dirs:
            if name.startswith(prefix) and len(name) > n and "/" not in name[n:]:
                seen.append((name[n:], S_IFDIR, 0, 0))
        for name, f in self._files.items():
            if name.startswith(prefix) and "/" not in name[n:]:
                seen.append((name[n:], S_IFREG, 0, f[0]))
        return iter(seen)

    def statvfs(self, path):
        total = sum(f[0] for f in self._files.values())
        return (512, 512, (total + 511) // 512, 0, 0, len(self._files), 0, 0, 1, MAX_NAME)

    def chdir(self, path):
        p = self._path(path)
        if p not in self._dirs:
            raise OSError(ENOENT)
        self._cwd = "/" + p if p else ""

    def getcwd(self):
        return self._cwd or "/"

    def open(self, path, mode):
        if "w" in mode or "a" in mode or "+" in mode or "x" in mode:
            raise OSError(EROFS)
        p = self._path(path)
        if p in self._dirs:
            raise OSError(EISDIR)
        data = self.read_checked(p)
        return io.BytesIO(data) if "b" in mode else io.StringIO(data)

    def read_checked(self, p):
        """All of file `p`, read from the slot and checked against its signed hash."""
        f = self._files.get(p)
        if f is None:
            raise OSError(ENOENT)
        size, off, sha = f
        if self._key is not None:
            buf = self._decrypt(p, size, off)
        else:
            with open(self._slot, "rb") as src:
                src.seek(self._base + off)
                buf = src.read(size)  # bytes: the stream below serves them without a copy
            if len(buf) != size:
                raise Refused("file %s is truncated in the slot" % p)
        if _hex(hashlib.sha256(buf).digest()) != sha:
            raise Refused("file %s does not match its signed hash" % p)
        self.served += 1
        return buf

    def _decrypt(self, p, size, off):
        # The plaintext bytes off..off+size: whole blocks from the one holding `off`, and
        # the ciphertext block before it as the IV (the table's last block, or the IV).
        import cryptolib

        b = off - off % 16
        e = _pad16(off + size)
        if e == b:
            return b""
        buf = bytearray(e - b + 16)
        with open(self._slot, "rb") as src:
            src.seek(self._base + b)
            got = src.readinto(buf)
        if got != len(buf):
            raise Refused("file %s is truncated in the slot" % p)
        mv = memoryview(buf)
        ct = mv[16:]
        cryptolib.aes(self._key, 2, bytes(mv[:16])).decrypt(ct, ct)  # in place
        at = 16 + off - b
        out = bytes(mv[at : at + size])  # bytes: served without another copy
        mv = ct = buf = None
        return out

    def mkdir(self, path):
        raise OSError(EROFS)

    def rmdir(self, path):
        raise OSError(EROFS)

    def remove(self, path):
        raise OSError(EROFS)

    def rename(self, old, new):
        raise OSError(EROFS)
