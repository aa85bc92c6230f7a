# What differs between ports, in one place: reset, the locked idle state, the
# device id, and the ROMFS partition. On the unix port (the virtual board) a
# reset or idle ends the VM with a code the host reads.

import sys

SIM = sys.platform in ("linux", "darwin")


class Refused(Exception):
    """What the guard will not accept (an artifact, a token, a file of the image): raised by
    mpseal_release and the modules after it, which name it from there. Defined here, in a
    module the guard keeps, so it stays one class when mpseal_release, dropped once the
    boot's mount is up, is loaded again (staging, the update client)."""
EXIT_RESET = 17
EXIT_IDLE = 18


def reset():
    if SIM:
        sys.exit(EXIT_RESET)
    import machine

    machine.reset()


def idle(reason):
    """Never returns and never reaches the REPL; repeats why it stopped."""
    print("[mpseal] locked idle: " + reason)
    if SIM:
        sys.exit(EXIT_IDLE)
    import time

    while True:
        try:
            time.sleep(60)
            print("[mpseal] locked idle: " + reason)
        except BaseException:  # Ctrl-C or anything else: stay here
            pass


def unique_id():
    try:
        import machine

        return "".join("%02x" % b for b in machine.unique_id())
    except (ImportError, AttributeError):
        pass
    try:
        with open("/mpseal/sim-id") as f:
            return f.read().strip()
    except OSError:
        return "unknown"


def rom_partition(guard_in_rom=False, probe=False):
    """The first ROMFS partition as a Partition where the port has one, else None.
    guard_in_rom: the guard runs from the partition's head (the app's mirror goes after it),
    which only a partition taking block writes allows: with rom_ioctl(3) (erase from the
    start) the mirror would erase the code running; None then (the other mounts serve).
    probe=True: only whether there is one (True or None), without loading mpseal_romfs:
    the guard asks before the signature check and mounts after it, when the verifier's
    RAM is free again."""
    import vfs

    ioctl = getattr(vfs, "rom_ioctl", None)
    if ioctl is None or ioctl(1) <= 0:
        return None
    dev = ioctl(2, 0)
    if isinstance(dev, int) or (guard_in_rom and not hasattr(dev, "writeblocks")):
        return None
    if probe:
        return True
    from mpseal_romfs import Partition  # loaded only where the port has a partition

    return Partition(dev, ioctl, guard_in_rom)
