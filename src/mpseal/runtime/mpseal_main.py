import sys
while "" in sys.path:  # first: no /p256.py may shadow the guard's
    sys.path.remove("")
# Locked idle when the guard cannot be loaded. Source in a string, compiled only if needed:
# the firmware compiles main.py at every boot (~0.4 ms a line on a Pico).
IDLE = """w = "[mpseal] locked idle: cannot load the guard: %r" % (e,)
try:
    d = '"profile": "dev"' in open("/mpseal/device.json").read(2048)
except BaseException:
    d = 0
if d:
    raise e
import time
print(w)
if sys.platform == "linux":
    sys.exit(18)
while 1:
    try:
        time.sleep(60)
    except BaseException:
        pass
"""
try:
    import mpseal_guard
except BaseException as e:  # noqa: F841 - IDLE uses it
    exec(IDLE)  # noqa: S102
mpseal_guard.boot()
