# Time one boot of the virtual board, in the VM: from power-on to the app's main().
#
#   micropython boot_timer.py RUNTIME_DIR FLASH.img guard|mount
#
# guard: run the board's main.py (the mpseal boot guard: verify, then mount, run).
# mount: mount the committed slot's image WITHOUT any verification, run the app:
#        the floor a board pays for a ROMFS app in a file slot anyway.
# The app prints "T <ticks_us>" on entry; this prints "T0 <ticks_us>" at power-on.
import struct
import sys
import time

sys.path.insert(0, sys.argv[1])
import simflash  # noqa: E402
import vfs  # noqa: E402

bdev = simflash.FlashBlockDev(sys.argv[2])
mode = sys.argv[3]
vfs.umount("/")
vfs.mount(vfs.VfsLfs2(bdev), "/")
sys.path[:] = ["/lib"]
print("T0", time.ticks_us())
if mode == "guard":
    exec(open("/main.py").read(), {"__name__": "__main__"})
else:
    with open("/mpseal/state.a") as f:  # the bench board's state: which slot is committed
        slot = "a" if '"committed": "a"' in f.read() else "b"
    with open("/mpseal/slot-" + slot + ".mpseal", "rb") as f:
        head = f.read(32)
        off, size = struct.unpack("<II", head[20:28])
        image = bytearray(size)
        f.seek(off)
        f.readinto(image)
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path.insert(0, "/rom")
    __import__("main").main()
