# The virtual board: the MicroPython unix port with a littlefs "flash chip" in
# an image file. Usage (run by mpseal on the host):
#
#   micropython simboard.py FLASH.img format
#   micropython simboard.py FLASH.img put HOST_FILE DEST
#   micropython simboard.py FLASH.img get SRC HOST_FILE
#   micropython simboard.py FLASH.img ls [DIR]
#   micropython simboard.py FLASH.img run ARTIFACT      (mount + run an installed artifact)
#   micropython simboard.py FLASH.img boot              (boot.py then main.py, like a board)
#
# For `run` and `boot` the flash becomes the root filesystem and the host's files
# vanish from view, as on a real board. Machine-readable replies are printed as
# one line: "MPSEAL:" followed by repr() of the value.

import os
import sys

import vfs

import simflash

CHUNK = 1024


def reply(value):
    print("MPSEAL:" + repr(value))


def open_flash(path, cut_after=0, tear=False):
    return simflash.FlashBlockDev(path, cut_after=cut_after, tear=tear)


def mount_flash(bdev, at):
    if at == "/":
        vfs.umount("/")
    vfs.mount(vfs.VfsLfs2(bdev), at)
    if at == "/":
        os.chdir("/")
        sys.path[:] = ["", "/lib", ".frozen"]


def makedirs(path):
    parts = path.strip("/").split("/")[:-1]
    cur = ""
    for p in parts:
        cur += "/" + p
        try:
            os.mkdir(cur)
        except OSError:
            pass


def copy(src, dst):
    with open(src, "rb") as fi:
        with open(dst, "wb") as fo:
            buf = bytearray(CHUNK)
            while True:
                n = fi.readinto(buf)
                if not n:
                    break
                fo.write(buf[:n] if n < CHUNK else buf)


def main(argv):
    image, cmd, args = argv[1], argv[2], argv[3:]
    bdev = open_flash(image)
    if cmd == "format":
        vfs.VfsLfs2.mkfs(bdev)
        reply(bdev.blocks)
    elif cmd in ("put", "get", "ls", "rm"):
        mount_flash(bdev, "/flash")
        if cmd == "put":
            dest = "/flash/" + args[1].lstrip("/")
            makedirs(dest)
            copy(args[0], dest + ".tmp")
            os.rename(dest + ".tmp", dest)
            reply(os.stat(dest)[6])
        elif cmd == "get":
            copy("/flash/" + args[0].lstrip("/"), args[1])
            reply(True)
        elif cmd == "rm":
            os.remove("/flash/" + args[0].lstrip("/"))
            reply(True)
        else:
            folder = "/flash/" + (args[0].lstrip("/") if args else "")
            try:
                entries = list(os.ilistdir(folder))
            except OSError:
                entries = []
            reply([(e[0], e[1] == 0x4000, e[3] if len(e) > 3 else 0) for e in entries])
    elif cmd == "run":
        import launch

        mount_flash(bdev, "/")
        launch.run_artifact(args[0])
    elif cmd == "boot":
        mount_flash(bdev, "/")
        for name in ("boot.py", "main.py"):
            try:
                os.stat(name)
            except OSError:
                continue
            exec(open(name).read(), {"__name__": "__main__"})
    else:
        raise SystemExit("simboard: unknown command " + cmd)


main(sys.argv)
