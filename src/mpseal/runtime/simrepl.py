# The virtual board's REPL, for the serial transport (mpseal/device/simlink.py):
#
#   micropython -i simrepl.py FLASH.img
#
# mounts the flash image as the root filesystem, as on a board, and returns, so
# `-i` drops into the REPL (the host reaches it over a pty). Runs nothing else:
# no boot.py, no main.py.

import os
import sys

import simflash
import vfs

flash = vfs.VfsLfs2(simflash.FlashBlockDev(sys.argv[1]))  # before the host's files vanish
vfs.umount("/")
vfs.mount(flash, "/")
os.chdir("/")
sys.path[:] = ["", "/lib", ".frozen"]
del os, sys, vfs, simflash, flash
