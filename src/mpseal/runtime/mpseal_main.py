import sys
# Before any import: '' (the flash's root) first on the path would let a /p256.py or
# /mpseal_release.py shadow the guard's own modules (the guard's are in /lib or frozen).
while "" in sys.path:
    sys.path.remove("")
try:
    import mpseal_guard
except BaseException as e:
    w = "[mpseal] locked idle: cannot load the guard: %r" % (e,)
    try:
        d = '"profile": "dev"' in open("/mpseal/device.json").read(2048)
    except BaseException:
        d = 0
    if d:
        raise
    import sys
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
