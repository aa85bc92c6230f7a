# Device side of `mpseal probe` (host: mpseal/device/probe.py): what this firmware
# has, read without writing anything. The host sends this file through the raw REPL
# (a few top-level statements per exec, like the transfer helper) and then runs
#
#   mpp_probe()           print one dict literal of facts (keys below)
#   mpp_files(paths, d)   print {path: (size, sha256 or None)} of the files that exist
#
# It only reads: module attributes, gc counters, os.statvfs, the ROMFS partition's
# size. It never calls vfs.rom_ioctl(3|4|5) (3 erases a partition), never opens a
# file for writing. It runs on MicroPython 1.9 (the micro:bit: no vfs, no hashlib,
# no f-strings, 16 KB of RAM) up to today's ports, so every feature is probed.


def mpp_mod(name):
    try:
        return __import__(name)
    except ImportError:
        try:
            return __import__("u" + name)
        except ImportError:
            return None


mpp_f = {}  # the facts, filled by the mpp_* parts below (small: a micro:bit compiles ~1 KB)


def mpp_impl():
    import sys

    impl = sys.implementation
    mpp_f["version"] = tuple(impl.version)[:3]
    mpp_f["platform"] = sys.platform
    mpp_f["mpy"] = getattr(impl, "_mpy", None)
    mpp_f["machine"] = str(getattr(impl, "_machine", ""))[:80]


def mpp_crypto():
    h = mpp_mod("hashlib")
    mpp_f["sha256"] = h is not None and hasattr(h, "sha256")
    c = mpp_mod("cryptolib")
    mpp_f["aes_cbc"] = False
    if c is not None and hasattr(c, "aes"):
        try:
            c.aes(bytes(16), 2, bytes(16))  # an object in RAM: is CBC compiled in?
            mpp_f["aes_cbc"] = True
        except Exception:
            pass
    s = mpp_mod("ssl")
    mpp_f["ssl"] = s is not None and hasattr(s, "SSLContext")
    mpp_f["json"] = mpp_mod("json") is not None


def mpp_id():
    import os

    uid = None
    m = mpp_mod("machine")
    if m is not None and hasattr(m, "unique_id"):
        uid = "machine"
    else:
        try:
            os.stat("/mpseal/sim-id")  # the virtual board's id
            uid = "sim-id"
        except (OSError, AttributeError):
            pass
    mpp_f["unique_id"] = uid
    mpp_f["rename"] = hasattr(os, "rename")


def mpp_rom(v):
    # (partitions, size of the first, written as a block device); never ioctl 3/4/5
    rom = [0, 0, False]
    try:
        n = v.rom_ioctl(1)
        rom[0] = n if isinstance(n, int) else 0
        if rom[0] > 0:
            dev = v.rom_ioctl(2, 0)
            if not isinstance(dev, int):
                rom[1] = len(memoryview(dev))
                rom[2] = hasattr(dev, "writeblocks")  # rp2: an rp2.Flash block device
    except Exception:
        pass
    return tuple(rom)


def mpp_vfs():
    v = mpp_mod("vfs")
    mpp_f["vfs"] = v is not None and hasattr(v, "mount")
    mpp_f["vfsrom"] = v is not None and hasattr(v, "VfsRom")
    mpp_f["rom"] = mpp_rom(v) if v is not None and hasattr(v, "rom_ioctl") else None
    mounts = []
    try:
        for fs, path in v.mount():
            mounts.append((path, type(fs).__name__))
    except Exception:
        pass
    mpp_f["mounts"] = mounts


def mpp_fs():
    import os

    st = None
    try:
        s = os.statvfs("/")
        st = (s[1] or s[0], s[2], s[4], s[8] if len(s) > 8 else 0)  # frsize blocks bavail flag
    except Exception:
        pass
    mpp_f["statvfs"] = st


def mpp_probe():
    import gc

    for part in (mpp_impl, mpp_crypto, mpp_id, mpp_vfs, mpp_fs):
        part()
    gc.collect()
    mpp_f["mem_free"] = gc.mem_free()
    mpp_f["mem_alloc"] = gc.mem_alloc()
    print(repr(mpp_f))


def mpp_files(paths, digest):
    # {path: (size, sha256 or None)} of the files among `paths` that exist
    import os

    h = mpp_mod("hashlib") if digest else None
    out = {}
    buf = bytearray(256)
    for p in paths:
        try:
            size = os.stat(p)[6]
        except (OSError, AttributeError):
            continue
        d = h.sha256() if h else None
        if d:
            with open(p, "rb") as fi:
                while True:
                    n = fi.readinto(buf)
                    if not n:
                        break
                    d.update(buf if n == 256 else buf[:n])
        out[p] = (size, d.digest() if d else None)
    print(repr(out))
