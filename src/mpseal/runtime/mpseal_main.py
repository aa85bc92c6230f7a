import sys
while "" in sys.path:  # first: no /p256.py may shadow the guard's
    sys.path.remove("")
try:
    p = sys.path[:]
    # The firmware's own modules, held in sys.modules for the guard (mpseal_guard.PINNED):
    # no file shadows them, and an import of them costs no littlefs lookups.
    sys.path[:] = []
    for m in ("os", "time", "json", "hashlib", "struct", "io", "binascii", "machine"):
        try:
            sys.modules[m] = sys.modules.get(m) or __import__(m)
        except ImportError:
            pass
    sys.path[:] = p
    import mpseal_guard
except BaseException as e:
    w = "[mpseal] locked idle: cannot load the guard: %r" % (e,)
    try:
        d = '"profile": "dev"' in open("/mpseal/device.json").read(2048)
    except BaseException:
        d = 0
    if d:
        raise
    import time
    print(w)
    if sys.platform == "linux":
        sys.exit(18)
    while 1:
        try:
            time.sleep(60)
        except BaseException:
            pass
mpseal_guard.boot()
