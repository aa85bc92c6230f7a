# Device side of mpseal's file transfer. The host (mpseal/device/serialboard.py)
# sends this file through the raw REPL, a few top-level statements per exec (a
# micro:bit cannot compile more than ~1 KB at once), so its names live on in the
# REPL's globals; all start with `mpx_`. The host sets `mpx_id` last and, on the
# next connection, calls mpx_reset() instead of sending it again if it is still
# there. Then, one raw REPL exec each:
#
#   mpx_reset()                 close a file left open by a transfer that was cut off
#   mpx_c                       what this firmware has (a tuple, set at load time)
#   mpx_open(tmp, n)            start writing `tmp` (parent folders are created)
#   mpx_w(b'<base64>', n)       append one chunk of n bytes (raw-paste mode)
#   mpx_wr(b'<literal>', n)     the same, for chunks whose repr() is shorter (text)
#   mpx_recv(n, k)              append n bytes sent as echoed base64 lines, then read k
#                               short lines (firmware without raw-paste mode)
#   mpx_close()                 close `tmp`, print its (size, hash) read back from flash
#   mpx_commit(tmp, dest, n)    rename, or copy + verify where there is no rename;
#                               print (size, hash) of `dest`
#   mpx_abort(tmp, n)           close and delete `tmp` after a failed write
#   mpx_size(path, n)           print the size of a file
#   mpx_read(path, chunk, n)    print the size, the file in base64 (or repr) lines, and
#                               (size, hash)
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
    mpx_reset()  # noqa: F821 -- a transfer cut off earlier on this boot left its file open
except Exception:
    pass
for _k in [k for k in globals() if k.startswith("mpx_")]:  # free an older copy's memory
    globals().pop(_k)
mpx_f = None  # the file being written
mpx_p = None  # and its path

try:
    import binascii as mpx_b64
except ImportError:
    try:
        import ubinascii as mpx_b64
    except ImportError:
        mpx_b64 = None
try:
    import hashlib as mpx_sha
except ImportError:
    try:
        import uhashlib as mpx_sha
    except ImportError:
        mpx_sha = None


class mpx_Damaged(Exception):
    pass


def mpx_reset():
    global mpx_f
    f, mpx_f = mpx_f, None
    if f:
        f.close()


def mpx_gc():
    import gc

    gc.collect()


def mpx_chk(n, *args):
    if sum(len(a) for a in args) != n:
        raise mpx_Damaged("bytes were lost on the line")


def mpx_a2b(s):
    # base64 decode in pure Python, for firmware without binascii
    o = bytearray()
    v = k = 0
    for c in s:
        if c == 61:  # "=": padding
            break
        if c > 96:
            c -= 71
        elif c > 64:
            c -= 65
        elif c > 47:
            c += 4
        else:
            c = 62 if c == 43 else 63
        v = (v << 6 | c) & 0xFFFF
        k += 6
        if k > 7:
            k -= 8
            o.append(v >> k & 255)
    return o


def mpx_decode(data):
    return mpx_b64.a2b_base64(data) if mpx_b64 else mpx_a2b(data)


def mpx_open(path, n):
    global mpx_f, mpx_p
    mpx_chk(n, path)
    mpx_reset()
    mpx_gc()  # the file object lives long: let it take a low, small hole
    parts = path.split("/")
    for i in range(1, len(parts) if hasattr(os, "mkdir") else 0):
        if parts[i - 1]:
            try:
                os.mkdir("/".join(parts[:i]))
            except OSError:
                pass
    mpx_f = open(path, "wb")
    mpx_p = path


def mpx_w(data, n):
    # here `n` is the decoded length
    if len(data) % 4:
        raise mpx_Damaged("bytes were lost on the line")
    data = mpx_decode(data)
    if len(data) != n:
        raise mpx_Damaged("bytes were lost on the line")
    mpx_f.write(data)


def mpx_wr(data, n):
    # raw-paste mode, a chunk sent as a bytes literal (cheaper than base64 for text)
    if len(data) != n:
        raise mpx_Damaged("bytes were lost on the line")
    mpx_f.write(data)


def mpx_recv(n, k):
    # firmware without raw-paste mode: the host sends `n` bytes as base64 lines that
    # input() echoes, and paces itself on the echo (flow control the raw REPL lacks).
    # Then `k` short lines: input() keeps its last lines as history, and the long
    # ones, spread over a 10 KB heap, leave no room to compile anything. (After a
    # collection the allocator starts from the bottom: the short ones go there.)
    while n > 0:
        data = mpx_decode(bytes(input(), "ascii"))
        mpx_f.write(data)
        n -= len(data)
    mpx_gc()
    for _ in range(k):
        input()


def mpx_digest(path):
    buf = bytearray(256)
    size = 0
    h = mpx_sha.sha256() if mpx_sha else None
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


def mpx_close():
    global mpx_f
    f, mpx_f = mpx_f, None
    f.close()
    print(repr(mpx_digest(mpx_p)))


def mpx_abort(tmp, n):
    mpx_chk(n, tmp)
    mpx_reset()
    try:
        os.remove(tmp)
    except OSError:
        pass


def mpx_commit(tmp, dest, n):
    mpx_chk(n, tmp, dest)
    if hasattr(os, "rename"):
        os.rename(tmp, dest)  # littlefs and FAT replace `dest` in one step
    else:  # the micro:bit: copy, then delete the verified temporary file
        buf = bytearray(256)
        with open(tmp, "rb") as fi, open(dest, "wb") as fo:
            while True:
                k = fi.readinto(buf)
                if not k:
                    break
                fo.write(buf if k == 256 else buf[:k])
    got = mpx_digest(dest)
    if not hasattr(os, "rename"):
        os.remove(tmp)
    print(repr(got))


def mpx_size(path, n):
    mpx_chk(n, path)
    print(repr(os.stat(path)[6] if hasattr(os, "stat") else os.size(path)))


def mpx_read(path, chunk_size, n):
    mpx_size(path, n)
    with open(path, "rb") as f:
        while True:
            chunk = f.read(chunk_size)
            if not chunk:
                break
            print(mpx_b64.b2a_base64(chunk).decode().strip() if mpx_b64 else repr(chunk))
    print(repr(mpx_digest(path)))


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


def mpx_caps():
    import gc
    import sys

    gc.collect()
    return (tuple(sys.implementation.version), sys.platform, mpx_b64 is not None,
            mpx_sha is not None, hasattr(os, "rename"), hasattr(os, "mkdir"), gc.mem_free())


mpx_c = mpx_caps()  # what this firmware has, measured once everything above is loaded
del mpx_caps
