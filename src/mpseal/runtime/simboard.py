# The virtual board: the MicroPython unix port with a littlefs "flash chip" in
# an image file. Usage (run by mpseal on the host):
#
#   micropython simboard.py FLASH.img format
#   micropython simboard.py FLASH.img put HOST_FILE DEST
#   micropython simboard.py FLASH.img get SRC HOST_FILE
#   micropython simboard.py FLASH.img ls [DIR]
#   micropython simboard.py FLASH.img boot              (boot.py then main.py, like a board)
#   micropython simboard.py FLASH.img stage ARTIFACT [KEY]  (hand an artifact to the boot guard;
#                                                         KEY: an encrypted one's key record)
#   micropython simboard.py FLASH.img status            (the guard's state and slots)
#   micropython simboard.py FLASH.img ota               (one round of the update client)
#   micropython simboard.py FLASH.img ota poll LO HI [EVERY]  (poll, back-off LO..HI s, until staged)
#   micropython simboard.py FLASH.img ota clock SECONDS [...]  (the board's clock moved on by
#                                       SECONDS for the certificate renewal's decision)
#   micropython simboard.py FLASH.img meta timestamp FILE APP [NOW [CHANNEL]]  (mpseal_meta: accept a
#                                       timestamp, pick APP's target for this board)
#   micropython simboard.py FLASH.img meta roots FILE...               (apply a root chain)
#   micropython simboard.py FLASH.img meta anchors      (the installed root's server TLS anchors)
#   micropython simboard.py FLASH.img --sd CARD.img card format|put|get|ls|rm ...
#                                       (the SD card: the same file commands, on the card)
#
# Power-cut testing: FLASH.img may be followed by `--cut N` (and `--tear`): the
# flash loses power at its N-th block write (simflash.py). `--host-guard` loads the
# guard from these sources, not from the flash (for another board's flash image).
#
# flash loses power at its N-th block write (simflash.py). `--eio N`: from its N-th
# block operation (read, program or erase) on, the flash fails with OSError(EIO).
# `--firmware SPEC` shapes what the firmware offers (simfirmware.py: no-vfsrom,
# no-sha256, romfs-stm32, romfs-rp2). `--sd CARD.img`: an SD card is in the slot
# (simsdcard.py: machine.SDCard over that image; the guard mounts it at /sd).
#
# `boot` exits 0 when main.py returned and EXIT_CRASH (19) when it raised (the
# traceback is printed, as a board prints it before its REPL), so the host tells
# "crashed" from "returned"; the guard's reset and idle exit 17 and 18.
#
# For `boot`, `stage` and `status` the flash becomes the root filesystem and the host's files
# vanish from view, as on a real board. Machine-readable replies are printed as
# one line: "MPSEAL:" followed by repr() of the value.

import os
import sys

import vfs

import simflash

CHUNK = 1024
EXIT_CRASH = 19


def reply(value):
    print("MPSEAL:" + repr(value))


def open_flash(path, cut_after=0, tear=False, eio_after=0):
    return simflash.FlashBlockDev(path, cut_after=cut_after, tear=tear, eio_after=eio_after)


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


def guard_status():
    import mpseal_guard as guard
    import mpseal_release
    import mpseal_state

    st, damaged = mpseal_state.load(guard.DIR)
    slots = {}
    try:
        root = guard.trust_root()
    except (OSError, mpseal_release.Refused) as e:
        root = None
        slots["error"] = str(e)
    for slot in ("a", "b"):
        try:
            r = guard._verify(slot, root, 0) if root else None
            slots[slot] = r and {"app": r.app, "version": r.version, "counter": r.counter}
        except mpseal_release.Refused as e:
            slots[slot] = {"refused": str(e)}
    try:
        with open(guard.LOG) as f:
            log = f.read().splitlines()[-20:]
    except OSError:
        log = []
    mount = None  # the mount path of the last boot, from its "booting ... (mount: X)" line
    for line in log:
        i = line.find("(mount: ")
        if i >= 0:
            mount = line[i + 8 : -1]
    return {"state": st and st.to_dict(), "damaged": damaged, "slots": slots, "log": log,
            "mount": mount}


def meta_command(args):
    """Drive mpseal_meta as an update client would; refusals become {"refused": reason}."""
    import json

    import mpseal_meta
    from mpseal_release import Refused

    try:
        if args[0] == "timestamp":
            data = mpseal_meta.read_small(args[1], mpseal_meta.MAX_TS, "timestamp")
            now = int(args[3]) if len(args) > 3 else None
            channel = args[4] if len(args) > 4 else None
            ts = mpseal_meta.accept_timestamp(data, now, channel)
            data = None
            with open("/mpseal/device.json") as f:
                board = json.loads(f.read(2048))["board"]
            target = mpseal_meta.pick_target(ts, board, args[2])
            return {"version": ts["version"], "target": target, "seen": mpseal_meta.load_seen()}
        if args[0] == "roots":
            return {"root_version": mpseal_meta.apply_root_chain(args[1:])["version"]}
        if args[0] == "anchors":  # the server TLS anchors the installed root names (hex DER)
            import binascii

            return [binascii.hexlify(a).decode()
                    for a in mpseal_meta.installed_root()["tls_anchors"]]
    except mpseal_meta.NeedRoots as e:
        return {"refused": str(e), "need_roots": e.version}
    except Refused as e:
        return {"refused": str(e)}
    raise SystemExit("simboard: unknown meta command " + args[0])


def tree(folder, out):
    """Every file under ``folder``: [path, size, SHA-256 hex] (a host tool's comparison of
    two flashes by what the board reads from them: no littlefs metadata, no mtimes)."""
    import mpseal_release

    for e in sorted(os.ilistdir(folder)):
        path = folder + "/" + e[0]
        if e[1] == 0x4000:
            tree(path, out)
            continue
        size = os.stat(path)[6]
        with open(path, "rb") as f:
            out.append([path[len("/flash") :], size, mpseal_release.hash_stream(f, size)])
    return out


def file_command(cmd, args):
    """put, get, ls, rm, tree on the filesystem mounted at /flash."""
    if cmd == "put":  # put SRC DEST [SRC DEST ...]
        sizes = []
        for i in range(0, len(args), 2):
            dest = "/flash/" + args[i + 1].lstrip("/")
            makedirs(dest)
            copy(args[i], dest + ".tmp")
            os.rename(dest + ".tmp", dest)
            sizes.append(os.stat(dest)[6])
        reply(sizes)
    elif cmd == "get":
        copy("/flash/" + args[0].lstrip("/"), args[1])
        reply(True)
    elif cmd == "rm":
        os.remove("/flash/" + args[0].lstrip("/"))
        reply(True)
    elif cmd == "tree":
        reply(tree("/flash", []))
    else:
        folder = "/flash/" + (args[0].lstrip("/") if args else "")
        try:
            entries = list(os.ilistdir(folder))
        except OSError:
            entries = []
        reply([(e[0], e[1] == 0x4000, e[3] if len(e) > 3 else 0) for e in entries])


def main(argv):
    image, cmd, args = argv[1], argv[2], argv[3:]
    cut, tear, eio, firmware = 0, False, 0, ""
    card = ""
    while cmd in ("--cut", "--tear", "--host-guard", "--eio", "--firmware", "--sd"):
        if cmd == "--cut":
            cut, cmd, args = int(args[0]), args[1], args[2:]
        elif cmd == "--host-guard":
            # The image is another board's flash (the virtual Pico's, read as a debug
            # probe would): its /lib holds .mpy files for that board's CPU, so the guard
            # is loaded from these sources before the flash hides them.
            import mpseal_guard  # noqa: F401
            import mpseal_release  # noqa: F401
            import mpseal_state  # noqa: F401
            cmd, args = args[0], args[1:]
        elif cmd == "--eio":
            eio, cmd, args = int(args[0]), args[1], args[2:]
        elif cmd == "--firmware":
            firmware, cmd, args = args[0], args[1], args[2:]
        elif cmd == "--sd":
            card, cmd, args = args[0], args[1], args[2:]
        else:
            tear, cmd, args = True, args[0], args[1:]
    if firmware:
        import simfirmware

        simfirmware.install(firmware, image)
    if card:
        import simsdcard

        simsdcard.install(card)
    if cmd == "card":  # the same file commands, on the SD card (as a PC's card reader)
        import machine

        sd = machine.SDCard()
        if args[0] == "format":
            vfs.VfsFat.mkfs(sd)
            reply(sd.blocks)
        else:
            vfs.mount(sd, "/flash")
            file_command(args[0], args[1:])
        return
    bdev = open_flash(image, cut, tear, eio)
    if cmd == "format":
        vfs.VfsLfs2.mkfs(bdev)
        reply(bdev.blocks)
    elif cmd in ("put", "get", "ls", "rm", "tree"):
        mount_flash(bdev, "/flash")
        file_command(cmd, args)
    elif cmd == "boot":
        mount_flash(bdev, "/")
        for name in ("boot.py", "main.py"):
            try:
                os.stat(name)
            except OSError:
                continue
            try:
                exec(open(name).read(), {"__name__": "__main__"})
            except SystemExit:
                raise
            except BaseException as e:  # as on a board: the traceback, then (there) the REPL
                sys.print_exception(e)
                sys.exit(EXIT_CRASH)
        reply(bdev.writes)
    elif cmd == "codemem":
        # Heap held by the guard's code once loaded from .mpy files (0 when frozen
        # into firmware): lets a test budget the guard's working memory apart.
        import gc

        gc.collect()
        before = gc.mem_alloc()
        mount_flash(bdev, "/")
        import mpseal_guard
        import mpseal_lockdown  # noqa: F401 - loaded to count its code
        import mpseal_release

        for name in args:  # guard modules a mount path loads as well (mpseal_appfs)
            __import__(name)
        gc.collect()
        reply(gc.mem_alloc() - before)
    elif cmd == "meta":
        mount_flash(bdev, "/")
        reply(meta_command(args))
    elif cmd == "ota":
        # One round of the device's update client against the server in config.json,
        # as the app would run it: the guard's state is loaded first, as at boot.
        mount_flash(bdev, "/")
        import mpseal_guard
        import mpseal_ota
        import mpseal_release

        mpseal_guard._load_state(mpseal_guard.trust_root())
        if args and args[0] == "clock":  # ota clock SECONDS ...: the board's clock moved on
            import mpseal_renew

            mpseal_renew.clock_offset = int(args[1])
            args = args[2:]
        if args and args[0] == "poll":  # poll with back-off until an update is staged
            lo, hi = int(args[1]), int(args[2])
            every = int(args[3]) if len(args) > 3 else None
            mpseal_ota.poll_forever(reset=False, backoff=(lo, hi), interval=every)
            reply({"result": "staged"})
            return
        try:
            reply({"result": mpseal_ota.check_once()})
        except mpseal_release.Refused as e:
            mpseal_guard.log("update refused: %s" % e)  # check_once queued the report
            reply({"refused": str(e)})
        except Exception as e:  # why: as poll_forever: whatever the server sent
            mpseal_guard.log("update check failed: %s" % e)
            reply({"failed": "%s: %s" % (type(e).__name__, e)})
    elif cmd in ("delta-apply", "delta-stage"):
        # delta-apply DELTA SRC OUT: rebuild OUT from SRC (mpseal_delta.apply, parity tests);
        # delta-stage DELTA: rebuild the release from the committed slot, check its files
        # and stage it, as the update client does after the download (power-cut tests).
        mount_flash(bdev, "/")
        import mpseal_delta
        import mpseal_guard
        import mpseal_release

        try:
            if cmd == "delta-apply":
                reply({"ok": mpseal_delta.apply(args[0], args[1], args[2])})
                return
            mpseal_guard._load_state(mpseal_guard.trust_root())
            out = "/mpseal/delta.new"
            mpseal_delta.apply(args[0], mpseal_guard.slot_path(mpseal_guard._state.committed),
                               out)
            mpseal_delta.check_files(out)
            r = mpseal_guard.stage(out)
            os.remove(out)
            reply({"version": r.version, "slot": mpseal_guard._state.trial})
        except mpseal_release.Refused as e:
            reply({"refused": str(e)})
    elif cmd in ("stage", "status"):
        mount_flash(bdev, "/")
        import mpseal_guard
        import mpseal_release

        if cmd == "status":
            reply(guard_status())
            return
        # stage() loads it: here first, as `codemem` counts it (compiled from source on the
        # VM, a module needs far more heap while it loads than a board's .mpy)
        import mpseal_stage  # noqa: F401
        try:
            key = None
            if len(args) > 1:  # an encrypted release: its key record for this board
                with open(args[1], "rb") as f:
                    key = f.read(64)
                os.remove(args[1])
            r = mpseal_guard.stage(args[0], key)
        except mpseal_release.Refused as e:
            reply({"refused": str(e)})
        else:
            reply({"app": r.app, "version": r.version, "counter": r.counter,
                   "slot": mpseal_guard._state.trial})
        finally:
            try:
                os.remove(args[0])
            except OSError:
                pass
    else:
        raise SystemExit("simboard: unknown command " + cmd)


main(sys.argv)
