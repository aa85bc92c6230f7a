# A read-only filesystem, in MicroPython, that serves a verified app image's files
# to vfs.mount on firmware without vfs.VfsRom (stock rp2 and esp32, most stm32).
#
# The directory is the image's file index (formats/fileindex.py: path, size, offset,
# sha256 of each file, at the end of the image), read once into RAM and checked
# against its SHA-256 in the SIGNED manifest; the ROMFS structure is never parsed
# from flash. The index stays in RAM as one bytes object (about 70 bytes a file)
# with two arrays of 4 bytes a file: where its entries start and each file's absolute
# offset (the index stores offsets relative to the previous entry's): no object per
# file. open() reads the
# whole file from the slot into RAM, checks it against its signed SHA-256 and only
# then hands out a stream over those RAM bytes (io.BytesIO/StringIO of a bytes
# object share its buffer, no copy): what the importer or the app reads is exactly
# what was checked, and RAM use follows the largest file, not the image. A file
# whose bytes do not match raises Refused (the guard reports it; nothing of it is
# served).
#
# An encrypted release (src/mpseal/formats/encrypted.py has the format) is served here
# too, never through VfsRom (its code is in mpseal_encfs, loaded only for one):
# open_release() unwraps the release key from the key record
# kept after the image in the slot, under a key derived from machine.unique_id() read
# at run time (never stored), decrypts the file index and checks it against its signed
# hash; open() then decrypts one file (AES-256-CBC from the block before it, in place:
# RAM about twice the file, not the image) and checks its plaintext against its SHA-256.
#
# The VFS protocol (as `mpremote mount` serves one): mount, umount, ilistdir,
# stat, statvfs, open, chdir, getcwd; writes raise OSError(EROFS).
# Threat tier: T0/T1, as the image hash it replaces (docs/guard.md); encrypted: T0 with a
# copy of the storage, not code running on the device nor anyone who knows the id (T3).

import hashlib
import io
import struct
from array import array

from mpseal_port import Refused  # (mpseal_release.Refused; no function of it is kept here)

ENOENT = 2
EIO = 5
ENOTDIR = 20
EISDIR = 21
EINVAL = 22
EROFS = 30
S_IFDIR = 0x4000
S_IFREG = 0x8000
MAX_FILES = 4096  # limits.py: files_max_count
MAX_NAME = 120  # limits.py: file_name_max_length
ENTRY = 41  # size u32, offset i32 (minus the previous entry's), sha256 32, name length u8;
# then the name


def _name_ok(name, is_name):
    # As the host's fileindex.check_file_name: plain relative segments of [A-Za-z0-9_.-].
    for seg in name.split("/"):
        if not is_name(seg, MAX_NAME):
            return False
    return True


def parse_index(ix, files_end, count=None):
    """Check index bytes `ix` (formats/fileindex.py parse, the same rules) -> (entry
    positions, absolute file offsets (two array('I')), set of folders); `count`: the
    signed manifest's, when it has one. Raises Refused on anything the host would refuse."""
    from mpseal_release import is_name  # not held here: the guard drops mpseal_release

    if len(ix) < 8 or ix[:4] != b"MPSF":
        raise Refused("file index is not an mpseal file index")
    n = struct.unpack_from("<I", ix, 4)[0]
    if (count is not None and n != count) or not 1 <= n <= MAX_FILES:
        raise Refused("file index count differs from the signed manifest's")
    pos = array("I")
    offs = array("I")
    dirs = {""}
    p = 8
    last = b""
    end = len(ix)
    off = 0
    for _ in range(n):
        if p + ENTRY > end:
            raise Refused("file index is truncated")
        size, step = struct.unpack_from("<Ii", ix, p)
        off += step
        k = ix[p + 40]
        raw = ix[p + ENTRY : p + ENTRY + k]
        if not 0 < k <= MAX_NAME or len(raw) != k:
            raise Refused("file index entry has a bad name length")
        try:
            name = raw.decode()
        except (UnicodeError, ValueError):
            name = ""
        if not name or not _name_ok(name, is_name):
            raise Refused("file index entry name is not a plain relative path")
        if pos and raw <= last:
            raise Refused("file index is not in order of names")
        if off < 0 or off + size > files_end:
            raise Refused("file index entry %s lies outside the image's files" % name)
        pos.append(p)
        offs.append(off)
        last = raw
        i = name.find("/")
        while i > 0:
            dirs.add(name[:i])
            i = name.find("/", i + 1)
        p += ENTRY + k
    if p != end:
        raise Refused("file index has bytes after its last entry")
    for d in dirs:
        if find(ix, pos, offs, d) is not None:
            raise Refused("file index names %s as a file and a folder" % d)
    return pos, offs, dirs


def find(ix, pos, offs, path):
    """Binary search of the sorted index -> (size, offset, sha256 bytes) of `path`, or None."""
    want = path.encode()
    lo, hi = 0, len(pos)
    while lo < hi:
        mid = (lo + hi) // 2
        p = pos[mid]
        k = ix[p + 40]
        name = ix[p + ENTRY : p + ENTRY + k]
        if name == want:
            return struct.unpack_from("<I", ix, p)[0], offs[mid], ix[p + 8 : p + 40]
        if name < want:
            lo = mid + 1
        else:
            hi = mid
    return None


def load_index(f, base, ref, image_size):
    """Read the index the manifest's `files` names from open slot file `f` (image at
    `base`), check it against its signed hash -> (index bytes, positions, offsets, folders)."""
    if ref is None:
        raise Refused("release has no file index (built by an older mpseal?)")
    size, off = ref["size"], ref["offset"]
    f.seek(base + off)
    ix = f.read(size)
    if len(ix) != size or off + size != image_size:
        raise Refused("file index is truncated in the slot")
    if hashlib.sha256(ix).digest() != bytes.fromhex(ref["sha256"]):
        raise Refused("file index does not match its signed hash")
    pos, offs, dirs = parse_index(ix, off, ref["count"])
    return ix, pos, offs, dirs


def entry(ix, pos, offs, i):
    """(name, size, offset, sha256 bytes) of the `i`th entry of the index."""
    p = pos[i]
    k = ix[p + 40]
    size = struct.unpack_from("<I", ix, p)[0]
    return ix[p + ENTRY : p + ENTRY + k].decode(), size, offs[i], ix[p + 8 : p + 40]


class AppFS:
    def __init__(self, slot_path, image_offset, files, image_size, enc=None, key=None, f=None):
        # files: the manifest's `files` (where the index is), or for an encrypted release
        # the index mpseal_encfs.open_release decrypted and checked.
        self._slot = slot_path
        self._base = image_offset
        self._key = key
        self._f = None
        if key is not None:  # encrypted: offsets are into the ROMFS image after IV and index
            self._base = image_offset + (enc[1] + 15) // 16 * 16  # the block before byte 0
            self._ix, self._pos, self._offs, self._dirs = files
        else:
            # The slot stays open while mounted: each file served is read through this
            # handle (an open is a littlefs lookup, ~2.6 ms on a Pico: each module the app
            # imports paid it), and checked as before; umount closes it. `f`: that file,
            # open already (the guard's signature check read the slot's head through it).
            self._f = f if f is not None else open(slot_path, "rb")
            try:
                self._ix, self._pos, self._offs, self._dirs = load_index(
                    self._f, image_offset, files, image_size)
            except BaseException:
                self._f.close()
                raise
        self._cwd = ""
        self.served = 0  # files checked and served so far

    def _find(self, path):
        return find(self._ix, self._pos, self._offs, path)

    def _entries(self):
        for i in range(len(self._pos)):
            yield entry(self._ix, self._pos, self._offs, i)

    def _path(self, path):
        if not path.startswith("/"):
            path = self._cwd + "/" + path
        if "/." not in path and "//" not in path:
            return path.strip("/")  # no "." or ".." segment, none empty: the usual path
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
        if self._f is not None:
            self._f.close()
            self._f = None

    def stat(self, path):
        p = self._path(path)
        if p in self._dirs:
            return (S_IFDIR, 0, 0, 0, 0, 0, 0, 0, 0, 0)
        f = self._find(p)
        if f is None:
            raise OSError(ENOENT)
        return (S_IFREG, 0, 0, 0, 0, 0, f[0], 0, 0, 0)

    def ilistdir(self, path):
        p = self._path(path)
        if p not in self._dirs:
            raise OSError(ENOENT if self._find(p) is None else ENOTDIR)
        prefix = p + "/" if p else ""
        n = len(prefix)
        seen = []
        for name in self._dirs:
            if name.startswith(prefix) and len(name) > n and "/" not in name[n:]:
                seen.append((name[n:], S_IFDIR, 0, 0))
        for name, size, _, _ in self._entries():
            if name.startswith(prefix) and "/" not in name[n:]:
                seen.append((name[n:], S_IFREG, 0, size))
        return iter(seen)

    def statvfs(self, path):
        total = sum(f[1] for f in self._entries())
        return (512, 512, (total + 511) // 512, 0, 0, len(self._pos), 0, 0, 1, MAX_NAME)

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
        f = self._find(p)
        if f is None:
            raise OSError(ENOENT)
        size, off, sha = f
        if self._key is not None:
            import mpseal_encfs

            buf = mpseal_encfs.decrypt(self._slot, self._key, self._base, p, size, off)
        else:
            src = self._f
            if src is None:
                raise OSError(EIO)  # unmounted
            src.seek(self._base + off)
            buf = src.read(size)  # bytes: the stream below serves them without a copy
            if len(buf) != size:
                raise Refused("file %s is truncated in the slot" % p)
        if hashlib.sha256(buf).digest() != sha:
            raise Refused("file %s does not match its signed hash" % p)
        self.served += 1
        return buf

    def mkdir(self, path):
        raise OSError(EROFS)

    def rmdir(self, path):
        raise OSError(EROFS)

    def remove(self, path):
        raise OSError(EROFS)

    def rename(self, old, new):
        raise OSError(EROFS)
