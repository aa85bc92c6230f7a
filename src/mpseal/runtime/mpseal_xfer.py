# Device side of mpseal's file transfer. The host (mpseal/device/serialboard.py)
# sends this file once per connection through the raw REPL, one top-level
# statement per exec (a micro:bit cannot compile more than ~1 KB at once), so
# its names live on in the REPL's globals; all start with `mpx_`. Then, one raw
# REPL exec each:
#
#   mpx_caps()                  print what this firmware has, as one repr() line
#   mpx_open(tmp, n)            start writing `tmp` (parent folders are created)
#   mpx_w(b'<base64>', n)       append one chunk of n bytes
#   mpx_close()                 close `tmp`, print its (size, hash) read back from flash
#   mpx_commit(tmp, dest, n)    rename, or copy + verify where there is no rename;
#                               print (size, hash) of `dest`
#   mpx_abort(tmp, n)           close and delete `tmp` after a failed write
#   mpx_size(path, n)           print the size of a file
#   mpx_read(path, chunk, n)    print the size, then the file in base64 (or repr) lines
#   mpx_ls(path, n)             print the names in a folder
#   mpx_rm(path, n)             delete a file
#
# Old firmware has no flow control in the raw REPL and its UART drops bytes under
# load, so every call carries `n`, the total length of its string arguments: a
# call that lost bytes on the way raises mpx_Damaged before it touches a file, and
# the host sends it again.
#
# It runs on MicroPython 1.9 (the micro:bit: no binascii, no hashlib, no os.rename,
# no memoryview, files without seek, 16 KB of RAM) up to today's ports, so every
# feature is probed. Hashes: sha256 where hashlib exists, else Adler-32.

import os

try:
    mpx_s["f"].close()  # a transfer cut off earlier on this boot left its file open
except Exception:
    pass

mpx_s = {"f": None, "path": None, "tab": None, "b64": None, "sha": None}


class mpx_Damaged(Exception):
    pass


def mpx_chk(n, *args):
    if sum(len(a) for a in args) != n:
        raise mpx_Damaged("bytes were lost on the line")


def mpx_import(names):
    for name in names:
        try:
            return __import__(name)
        except ImportError:
            pass
    return None


mpx_s["b64"] = mpx_import(("binascii", "ubinascii"))
mpx_s["sha"] = mpx_import(("hashlib", "uhashlib"))


def mpx_caps():
    import gc
    import sys

    gc.collect()
    print(repr({
        "version": tuple(sys.implementation.version),
        "platform": sys.platform,
        "binascii": mpx_s["b64"] is not None,
        "hashlib": mpx_s["sha"] is not None,
        "rename": hasattr(os, "rename"),
        "mkdir": hasattr(os, "mkdir"),
        "mem_free": gc.mem_free(),
    }))


def mpx_a2b(s):
    # base64 decode in pure Python, for firmware without binascii
    t = mpx_s["tab"]
    if t is None:
        alpha = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
        t = mpx_s["tab"] = bytearray(128)
        for i in range(64):
            t[alpha[i]] = i
    n = len(s)
    pad = (s[n - 1] == 61) + (s[n - 2] == 61) if n else 0
    o = bytearray(n // 4 * 3)
    j = 0
    for i in range(0, n, 4):
        v = t[s[i]] << 18 | t[s[i + 1]] << 12 | t[s[i + 2]] << 6 | t[s[i + 3]]
        o[j] = v >> 16
        o[j + 1] = v >> 8 & 255
        o[j + 2] = v & 255
        j += 3
    return o[: j - pad] if pad else o


def mpx_makedirs(path):
    if not hasattr(os, "mkdir"):
        return
    cur = ""
    for part in path.split("/")[:-1]:
        if part:
            cur = cur + "/" + part if cur or path[0] == "/" else part
            try:
                os.mkdir(cur)
            except OSError:
                pass


def mpx_open(path, n):
    mpx_chk(n, path)
    f, mpx_s["f"] = mpx_s["f"], None
    if f:
        try:
            f.close()
        except OSError:
            pass
    mpx_makedirs(path)
    mpx_s["f"] = open(path, "wb")
    mpx_s["path"] = path


def mpx_w(data, n):
    # here `n` is the decoded length
    if len(data) % 4:
        raise mpx_Damaged("bytes were lost on the line")
    b64 = mpx_s["b64"]
    data = b64.a2b_base64(data) if b64 else mpx_a2b(data)
    if len(data) != n:
        raise mpx_Damaged("bytes were lost on the line")
    mpx_s["f"].write(data)


def mpx_digest(path):
    buf = bytearray(256)
    size = 0
    h = mpx_s["sha"].sha256() if mpx_s["sha"] else None
    a, b = 1, 0
    with open(path, "rb") as f:
        while True:
            n = f.readinto(buf)
            if not n:
                break
            size += n
            chunk = buf if n == 256 else buf[:n]
            if h:
                h.update(chunk)
            else:
                for x in chunk:
                    a += x
                    b += a
                a %= 65521
                b %= 65521
    return size, (h.digest() if h else b << 16 | a)


def mpx_abort(tmp, n):
    mpx_chk(n, tmp)
    f, mpx_s["f"] = mpx_s["f"], None
    if f:
        f.close()
    try:
        os.remove(tmp)
    except OSError:
        pass


def mpx_close():
    f, mpx_s["f"] = mpx_s["f"], None
    f.close()
    print(repr(mpx_digest(mpx_s["path"])))


def mpx_copy(src, dest):
    buf = bytearray(256)
    with open(src, "rb") as fi:
        with open(dest, "wb") as fo:
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(buf if n == 256 else buf[:n])


def mpx_commit(tmp, dest, n):
    mpx_chk(n, tmp, dest)
    if hasattr(os, "rename"):
        os.rename(tmp, dest)  # littlefs and FAT replace `dest` in one step
        print(repr(mpx_digest(dest)))
    else:
        mpx_copy(tmp, dest)
        got = mpx_digest(dest)
        os.remove(tmp)
        print(repr(got))


def mpx_stat_size(path):
    if hasattr(os, "stat"):
        return os.stat(path)[6]
    return os.size(path)


def mpx_size(path, n):
    mpx_chk(n, path)
    print(repr(mpx_stat_size(path)))


def mpx_read(path, chunk_size, n):
    mpx_chk(n, path)
    print(repr(mpx_stat_size(path)))
    b64 = mpx_s["b64"]
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            print(b64.b2a_base64(chunk).decode().strip() if b64 else repr(chunk))


def mpx_ls(path, n):
    mpx_chk(n, path)
    try:
        names = os.listdir(path)
    except TypeError:  # the micro:bit has one folder and a listdir() without arguments
        if path.strip("/"):
            raise OSError(2)
        names = os.listdir()
    print(repr(names))


def mpx_rm(path, n):
    mpx_chk(n, path)
    os.remove(path)
