# The mpseal boot guard: verified boot, A/B slots with trial boot, anti-rollback.
#
# A board's main.py is just:   import mpseal_guard; mpseal_guard.boot()
#
# Files (littlefs):  /mpseal/trust-root.mpsr  device.json  state.a state.b
#                    slot-a.mpseal slot-b.mpseal  log.txt
#
# States of the update state machine (docs/guard.md has the diagram):
#   stage(artifact) -> verified copy in the inactive slot -> state.trial = slot
#   boot with a trial: tries += 1 (saved first), verify, run; the app calls
#   confirm() after its health check -> committed (security counter moves up).
#   A trial that crashes, returns unconfirmed, fails to verify, or is booted
#   more than max_tries times is reverted to the last committed image. No
#   valid image at all -> locked idle that says why (never the REPL).
#
# Threat tiers: the signature and hash checks stop T1 (network/mirror) and a T0
# owner copying foreign code onto the filesystem; anti-rollback stops replay of
# old signed releases (T1). A T0 owner with REPL access can replace this file
# itself unless the lockdown profile closes the REPL; T3 needs Secure Boot.

import os
import struct
import sys

import mpseal_port as port
import mpseal_release as rel_mod
import mpseal_state as state_mod
from mpseal_release import Refused

DIR = "/mpseal"
TRUST = DIR + "/trust-root.mpsr"
CONFIG = DIR + "/device.json"
LOG = DIR + "/log.txt"
LOG_MAX = 4096
DEFAULTS = {"board": "unknown", "profile": "field", "max_tries": 3, "max_image": 1 << 22}

_state = None  # State of this boot
_running = None  # (slot, Release) of the image running now
_config = None
_image_buf = None  # RAM for a file slot's image, reserved before anything else


def _other(slot):
    return "b" if slot == "a" else "a"


def slot_path(slot):
    return DIR + "/slot-" + slot + ".mpseal"


def log(msg):
    line = "[mpseal] " + msg
    print(line)
    try:
        try:
            if os.stat(LOG)[6] > LOG_MAX:
                os.rename(LOG, LOG + ".1")
        except OSError:
            pass
        with open(LOG, "a") as f:
            f.write("%d %s\n" % (_state.seq if _state else 0, msg))
    except OSError:
        pass  # a full or read-only flash must not stop the boot


def config():
    global _config
    if _config is None:
        import json

        cfg = dict(DEFAULTS)
        try:
            with open(CONFIG) as f:
                cfg.update(json.loads(f.read(2048)))
        except (OSError, ValueError):
            pass
        _config = cfg
    return _config


def trust_root():
    if os.stat(TRUST)[6] > rel_mod.MAX_ROOT:  # read only what a valid root can need
        raise Refused("trust root is larger than %d bytes" % rel_mod.MAX_ROOT)
    with open(TRUST, "rb") as f:
        data = f.read()
    return rel_mod.load_root(data)[0]


def _verify(slot, root, min_counter, into=None):
    cfg = config()
    return rel_mod.verify_file(slot_path(slot), root, cfg["board"], min_counter, cfg["max_image"],
                               into)


def _save():
    state_mod.save(DIR, _state)


def _load_state(root):
    """The newest intact state; if there is none, rebuild it from what the slots hold."""
    global _state
    st, damaged = state_mod.load(DIR)
    if damaged:
        log("%d damaged state copy ignored" % damaged)
    if st is not None:
        _state = st
        return
    # No intact state (first boot, or both copies destroyed): trust only what
    # verifies, and assume the highest counter seen so nothing older can win later.
    _state = state_mod.State()
    best = None
    for slot in ("a", "b"):
        try:
            r = _verify(slot, root, 0)
        except Refused:
            continue
        if best is None or r.counter > best[1].counter:
            best = (slot, r)
    if best:
        _state.committed = best[0]
        _state.counter = best[1].counter
        log("no boot state: rebuilt from slot %s" % best[0])
        _save()


def _cleanup():
    for name in ("slot-a.mpseal.tmp", "slot-b.mpseal.tmp", "state.a.tmp", "state.b.tmp"):
        try:
            os.remove(DIR + "/" + name)
        except OSError:
            pass


def stage(src):
    """Verify artifact `src` (a path or a readable file object) into the inactive slot.

    Returns the Release; raises Refused (and changes nothing) if it is not acceptable."""
    global _state
    root = trust_root()
    if _state is None:
        _load_state(root)
    _cleanup()
    slot = _other(_state.committed) if _state.committed else "a"
    f = open(src, "rb") if isinstance(src, str) else src
    try:
        cfg = config()
        r = rel_mod.copy_verified(f, slot_path(slot) + ".tmp", root, cfg["board"],
                                  _state.counter, cfg["max_image"])
    except Refused as e:
        log("stage refused: %s" % e)  # kept: the warranty check reads these
        raise
    finally:
        if isinstance(src, str):
            f.close()
    os.rename(slot_path(slot) + ".tmp", slot_path(slot))
    _state.trial = slot
    _state.tries = 0
    _save()
    log("staged %s %s (counter %d) in slot %s for a trial boot" % (r.app, r.version, r.counter, slot))
    return r


def confirm():
    """Called by the app once its own health check passed: commit the trial image."""
    if _state is None or _running is None or _state.trial != _running[0]:
        return False
    slot, r = _running
    _state.committed = slot
    _state.trial = None
    _state.tries = 0
    if r.counter > _state.counter:
        _state.counter = r.counter
    _save()
    log("committed %s %s (counter %d) in slot %s" % (r.app, r.version, r.counter, slot))
    return True


def status():
    return {"state": _state.to_dict() if _state else None,
            "running": (_running[0], _running[1].version) if _running else None}


def _revert(why):
    log("trial of slot %s reverted: %s" % (_state.trial, why))
    _state.trial = None
    _state.tries = 0
    _save()


def _mount(slot, r):
    import vfs

    part = port.rom_partition()
    if part is not None:
        image = _mirror_to_partition(slot, r, part)
    else:
        # _verify read the image into the reserved RAM while hashing it: the
        # bytes that run are exactly the bytes that were checked.
        if _image_buf is None:
            raise Refused("not enough RAM for a %d-byte image" % r.size)
        image = memoryview(_image_buf)[: r.size]
    try:
        vfs.umount("/rom")
    except OSError:
        pass
    vfs.mount(vfs.VfsRom(image), "/rom")
    sys.path[:0] = ["/rom", "/rom/lib"]


def _mirror_to_partition(slot, r, part):
    """Mount from a memory-mapped ROMFS partition: copy the verified image there once."""
    import hashlib

    mem, ioctl = part
    if r.size > len(mem):
        raise Refused("image does not fit the ROMFS partition")
    if rel_mod._hex(hashlib.sha256(mem[: r.size]).digest()) != r.sha256:
        log("copying slot %s to the ROMFS partition" % slot)
        chunk = max(ioctl(3, 0, r.size), 256)
        buf = bytearray(chunk)
        with open(slot_path(slot), "rb") as f:
            f.seek(r.offset)
            off = 0
            while off < r.size:
                n = f.readinto(memoryview(buf)[: min(chunk, r.size - off)])
                ioctl(4, 0, off, memoryview(buf)[:n])
                off += n
        ioctl(5, 0)
        if rel_mod._hex(hashlib.sha256(mem[: r.size]).digest()) != r.sha256:
            raise Refused("ROMFS partition does not read back the verified image")
    return mem[: r.size]


def _reserve_image_buffer():
    """Take one contiguous block for the image first, before the heap fragments."""
    global _image_buf
    if port.rom_partition() is not None:
        return
    size = 0
    for slot in ("a", "b"):
        try:
            size = max(size, os.stat(slot_path(slot))[6])
        except OSError:
            pass
    size = min(size, config()["max_image"])
    if size:
        try:
            _image_buf = bytearray(size)
        except MemoryError:
            log("not enough RAM for a %d-byte image" % size)


def _run(slot, r, trial):
    global _running
    _running = (slot, r)
    log("booting %s %s (counter %d) from slot %s%s"
        % (r.app, r.version, r.counter, slot, " on trial" if trial else ""))
    _mount(slot, r)
    mod = __import__(r.entry)
    main = getattr(mod, "main", None)
    if main is not None:
        main()


def _run_guarded(slot, r, trial):
    """Run the app; on a crash or return decide what happens next (never the REPL)."""
    why = None
    try:
        _run(slot, r, trial)
        why = "app returned"
    except Refused as e:
        why = "refused: " + str(e)
    except BaseException as e:  # noqa: the app must never fall through to the REPL
        why = "app crashed: %s: %s" % (type(e).__name__, e)
        if config()["profile"] == "dev":
            sys.print_exception(e)
    if trial and _state.trial == slot:
        _revert(why)
    else:
        log(why)
    return why


UNLOCK_FILES = (DIR + "/unlock.tok", "/sd/mpseal-unlock.tok")


def _unlock(root):
    """A service unlock token: signed by the offline root role, for this device, used once.

    Returns the profile it grants for this boot, or None."""
    import json

    for path in UNLOCK_FILES:
        try:
            with open(path, "rb") as f:
                data = f.read(2048)
        except OSError:
            continue
        try:
            os.remove(path)  # single use, whatever happens next
        except OSError:
            pass
        try:
            if len(data) < 12 or data[:4] != b"MPSU":
                raise Refused("not an unlock token")
            _, nsig, _, plen = struct.unpack("<BBHI", data[4:12])
            payload = data[12 : 12 + plen]
            if 12 + plen + nsig * rel_mod.ENTRY_LEN != len(data):
                raise Refused("unlock token is damaged")
            rel_mod.check_threshold(root, "root", payload, data[12 + plen :], nsig, "unlock token")
            tok = json.loads(payload)
            if tok.get("type") != "mpseal-unlock" or tok.get("device") != port.unique_id():
                raise Refused("unlock token is for another device")
            n = tok.get("n")
            if type(n) is not int or n <= _state.unlocks:
                raise Refused("unlock token was already used")
            if tok.get("profile") not in ("dev", "field"):
                raise Refused("unlock token names no usable profile")
        except (Refused, ValueError, AttributeError) as e:
            log("unlock refused: %s" % e)
            continue
        _state.unlocks = n
        _save()
        log("service unlock %d: profile %s for this boot" % (n, tok["profile"]))
        return tok["profile"]
    return None


def boot():
    """The whole boot sequence. Returns only in the `dev` profile."""
    import micropython
    import mpseal_lockdown

    if config()["profile"] != "dev":
        micropython.kbd_intr(-1)  # at once; the full profile follows below
    _reserve_image_buffer()
    try:
        root = trust_root()
    except (OSError, Refused) as e:
        mpseal_lockdown.apply("sealed")
        port.idle("no usable trust root: %s" % e)
        return
    _load_state(root)
    _cleanup()
    profile = _unlock(root) or config()["profile"]
    config()["profile"] = profile
    if profile == "dev":
        micropython.kbd_intr(3)
    done = mpseal_lockdown.apply(profile)
    if done:
        log("lockdown %s: %s" % (profile, ", ".join(done)))
    if _state.trial:
        slot = _state.trial
        if _state.tries >= config()["max_tries"]:
            _revert("not confirmed after %d boots" % _state.tries)
        else:
            _state.tries += 1
            _save()  # counted before running: a hang or power cut also uses a try
            try:
                r = _verify(slot, root, _state.counter, _image_buf)
            except Refused as e:
                _revert(str(e))
            else:
                _run_guarded(slot, r, True)
                _end(profile)
                return
    for slot in (_state.committed, _other(_state.committed or "b")):
        if slot is None:
            continue
        try:
            r = _verify(slot, root, _state.counter, _image_buf)
        except Refused as e:
            log("slot %s refused: %s" % (slot, e))
            continue
        if slot != _state.committed:
            log("falling back to slot %s" % slot)
            _state.committed = slot
            _save()
        _run_guarded(slot, r, False)
        _end(profile)
        return
    port.idle("no valid image to boot (see %s)" % LOG)


def _end(profile):
    if profile == "dev":
        log("dev profile: returning to the REPL")
        return
    port.reset()


def running():
    """What the app runs as, for the app itself: a dict with app, version, counter, slot
    and trial (True until confirm()), or None when the guard did not start it."""
    if _running is None:
        return None
    slot, r = _running
    return {"app": r.app, "version": r.version, "counter": r.counter, "slot": slot,
            "trial": _state is not None and _state.trial == slot}
