# The virtual board's REPL, for the serial transport (mpseal/device/simlink.py):
#
#   micropython -i simrepl.py FLASH.img
#
# mounts the flash image as the root filesystem, as on a board, and returns, so
# `-i` drops into the REPL (the host reaches it over a pty). Runs nothing else:
# no boot.py, no main.py.
#
#   micropython simrepl.py FLASH.img boot
#
# (without -i) is the board's power-on instead: boot.py, then main.py, as a board
# runs them. Its exit code says how it ended, and simlink.py does what a board
# would next: 17 (the guard reset the board) boots again, 18 (locked idle) stays
# silent, anything else (main.py returned or raised) starts the REPL.
#
#   micropython simrepl.py FLASH.img boot [--firmware SPEC] [--eio N]
#
# boots with the firmware shaped by simfirmware.py (e.g. no-vfsrom), or with a flash
# that fails with OSError(EIO) from its N-th block operation on (simflash.py).

import os
import sys

import simflash
import vfs

_opts = sys.argv[3:]
_eio = 0
while _opts[:1] in (["--firmware"], ["--eio"]):
    if _opts[0] == "--firmware":
        import simfirmware

        simfirmware.install(_opts[1], sys.argv[1])
        del simfirmware
    else:
        _eio = int(_opts[1])
    _opts = _opts[2:]
flash = vfs.VfsLfs2(simflash.FlashBlockDev(sys.argv[1], eio_after=_eio))  # before the host's files vanish
vfs.umount("/")
vfs.mount(flash, "/")
os.chdir("/")
sys.path[:] = ["", "/lib", ".frozen"]
if sys.argv[2:3] == ["boot"]:
    for name in ("boot.py", "main.py"):
        try:
            os.stat(name)
        except OSError:
            continue
        try:
            exec(open(name).read(), {"__name__": "__main__"})
        except SystemExit:
            raise
        except BaseException as e:  # as on a board: the traceback, then on
            sys.print_exception(e)
            if name == "main.py":
                sys.exit(1)
del os, sys, vfs, simflash, flash, _opts, _eio
