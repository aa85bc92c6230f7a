# Device side of `mpseal audit` and `mpseal inspect-device` (host: mpseal/lockdown/).
#
# The host sends ONE function of this file at a time through the raw REPL (its
# source, length-checked against bytes lost on the line), calls it, and on a
# small board deletes it again: a micro:bit (MicroPython 1.9.2, ~8 KB of free
# heap, a flat filesystem, no os.stat, no sys.path) never holds more than one.
# So every function stands alone: its imports inside, no shared globals.
#
# Each returns (or prints, one per line) only Python literals: the host parses
# them with ast.literal_eval and limits their size. Everything here only reads,
# except mpa_writable, which creates and removes one temporary file of its own;
# nothing here opens boot.py, main.py or any other file for writing.


def mpa_sys():
    # What the firmware says about itself (1 of 3: small functions for a fragmented heap).
    import sys

    d = {"platform": sys.platform, "version": sys.version}
    d["path"] = list(sys.path) if hasattr(sys, "path") else None
    try:
        i = sys.implementation
        d["impl"] = (i.name, tuple(i.version), getattr(i, "_machine", None),
                     getattr(i, "_mpy", None), getattr(i, "_build", None))
    except AttributeError:
        pass
    return d


def mpa_os():
    # 2 of 3: os.uname(), the current folder and its files, the free heap.
    import gc
    import os

    d = {}
    try:
        d["uname"] = tuple(os.uname())
    except AttributeError:
        pass
    try:
        d["cwd"] = os.getcwd()
    except AttributeError:
        pass
    try:
        d["files"] = os.listdir()[:64]
    except OSError:
        pass
    gc.collect()
    d["mem_free"] = gc.mem_free()
    return d


def mpa_id():
    # 3 of 3: machine.unique_id() as hex (the virtual board keeps it in a file).
    try:
        import machine

        return "".join("%02x" % b for b in machine.unique_id())
    except (ImportError, AttributeError):
        pass
    try:
        f = open("/mpseal/sim-id")
    except OSError:
        return None
    v = f.read(64).strip()
    f.close()
    return v


def mpa_writable():
    # Can a file be created next to boot.py/main.py (the current folder, where the
    # firmware looks for them)? Creates and removes "mpseal-audit.tmp"; never touches
    # boot.py or main.py, nor a file of that name it did not create.
    import os

    t = "mpseal-audit.tmp"
    if t in os.listdir():
        return "busy"
    try:
        f = open(t, "w")
    except OSError:
        return "read-only"
    try:
        f.write("mpseal audit probe; safe to delete\n")
    except OSError:
        f.close()
        os.remove(t)
        return "full"
    f.close()
    os.remove(t)
    return "writable"


def mpa_sd():
    # 'on-path': an SD card is the current folder or on sys.path (its code can run);
    # 'data': mounted, but only as data; 'none': no SD card mounted now.
    import os
    import sys

    on = [p for p in getattr(sys, "path", []) if p[:3] == "/sd"]
    try:
        cwd = os.getcwd()
    except AttributeError:
        cwd = ""
    if on or cwd[:3] == "/sd":
        return "on-path"
    try:
        mounted = "sd" in os.listdir("/")
    except (OSError, TypeError):  # TypeError: a flat filesystem's listdir takes no folder
        mounted = False
    return "data" if mounted else "none"


def mpa_flash_api():
    # Python APIs that read the raw flash, present in this firmware.
    found = []
    for mod, name in (("esp", "flash_read"), ("esp32", "Partition"), ("rp2", "Flash"),
                      ("pyb", "Flash")):
        try:
            if hasattr(__import__(mod), name):
                found.append(mod + "." + name)
        except ImportError:
            pass
    return found


def mpa_ls(folder):
    # [(name, size)] of a folder (size -1 where os.stat is missing); None if there is none.
    import os

    try:
        names = os.listdir(folder)
    except (OSError, TypeError):
        return None
    out = []
    for n in names[:64]:
        try:
            size = os.stat(folder + "/" + n)[6]
        except (OSError, AttributeError):
            size = -1
        out.append((n, size))
    return out


def mpa_read(path, off, n):
    # Print up to n bytes of `path` from `off` (from the end when off < 0), as bytes
    # literals of at most 96 bytes, one per line; print None if the file is missing.
    try:
        f = open(path, "rb")
    except OSError:
        print(None)
        return
    try:
        if off < 0:
            off = max(0, f.seek(0, 2) + off)
        f.seek(off)
        while n > 0:
            b = f.read(min(n, 96))
            if not b:
                break
            print(repr(b))
            n -= len(b)
    finally:
        f.close()


def mpa_sha(path, off, n):
    # (bytes missing at the end, SHA-256 hex) of n bytes of `path` from `off`;
    # None if the file is missing or the firmware has no hashlib.
    try:
        import hashlib
    except ImportError:
        try:
            import uhashlib as hashlib
        except ImportError:
            return None
    try:
        f = open(path, "rb")
    except OSError:
        return None
    h = hashlib.sha256()
    try:
        f.seek(off)
        while n > 0:
            b = f.read(min(n, 512))
            if not b:
                break
            h.update(b)
            n -= len(b)
    finally:
        f.close()
    return (n, "".join("%02x" % x for x in h.digest()))


def mpa_rom(n):
    # The head of the first ROMFS partition (what the firmware mounts at /rom before
    # main.py): None without one; 0 if it holds no ROMFS image; else the SHA-256 hex of
    # its first n bytes. Reads only (never rom_ioctl(3|4|5)).
    try:
        import hashlib
        import vfs

        if vfs.rom_ioctl(1) <= 0:
            return None
        m = memoryview(vfs.rom_ioctl(2, 0))
    except Exception:
        return None
    if bytes(m[:3]) != b"\xd2\xcd\x31":
        return 0
    return "".join("%02x" % x for x in hashlib.sha256(m[:n]).digest())
