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
# The boot is total: anything that goes wrong inside the guard (a damaged
# device.json, an OSError from flash, a firmware without a feature it needs, a
# bug) ends in locked idle with the reason printed and logged; a committed image
# that fails max_fails boots in a row (counted in the boot state) is not started
# again. Outside the dev profile nothing here falls through to the REPL.
#
# Mounting the app (chosen by feature detection, or forced by device.json "mount"):
#   romfs-partition  vfs.VfsRom over the port's ROMFS partition (vfs.rom_ioctl),
#                    the verified image mirrored there once, re-hashed every boot
#   vfsrom-ram       vfs.VfsRom over the RAM copy made while hashing the slot
#   verified-files   mpseal_appfs: each file checked against its signed hash when
#                    opened, served from RAM (firmware without vfs.VfsRom), and
#                    always for an encrypted release: decrypted file by file with
#                    the key wrapped for this device (mpseal_encfs.open_release)
#
# Threat tiers: the signature and hash checks stop T1 (network/mirror) and a T0
# owner copying foreign code onto the filesystem; anti-rollback stops replay of
# old signed releases (T1). A T0 owner with REPL access can replace this file
# itself unless the lockdown profile closes the REPL; T3 needs Secure Boot.

import sys

from micropython import const

# Built-ins held in sys.modules while the guard boots (released before the app runs, so the
# app's imports work as they would without the guard). MicroPython keeps no built-in there
# and looks for a file of an extensible one's name on every sys.path entry at every import:
# ~3.5 ms of littlefs lookups on a Pico each time. Imported with an empty sys.path, they are
# the firmware's own: no file shadows them for the guard.
PINNED = ("os", "time", "json", "hashlib", "struct", "io", "binascii", "machine", "array")


def _pin():
    path = sys.path[:]
    sys.path[:] = []
    try:
        for name in PINNED:
            try:
                sys.modules[name] = sys.modules.get(name) or __import__(name)
            except ImportError:
                pass
    finally:
        sys.path[:] = path


_pin()

import os  # noqa: E402 - after _pin
import time  # noqa: E402

# The guard in the ROMFS partition (mpseal install puts it there where the partition takes
# block writes: rp2): the firmware mounts the partition's head at /rom before main.py, and
# the guard's code runs in place from flash instead of being loaded onto the heap (~21 KB
# less RAM on a Pico). The app's verified image is mirrored after it (mpseal_romfs.py), and
# the guard's image stays mounted at mpseal_romfs.GUARD_AT once the app has /rom.
IN_ROM = __file__.startswith("/rom/")

if not IN_ROM:  # (from ROMFS the pack is never used: no class object on the heap for it)
    class _Pack:
        """The guard's boot-path modules as one file (/lib/mpseal-boot.pack, the same .mpy
        bytes mpseal install writes to /lib beside it), served to the importer while the guard
        boots: one littlefs lookup for all of them instead of ~4 per module (~5 ms each on a
        Pico). Frozen modules still come first (sys.path). Format: 4-byte little-endian length
        n, n bytes of a JSON object {"name.mpy": [offset, size]} (offsets from the end of
        it), the files."""

        def __init__(self, f):
            import json

            self.f = f
            n = int.from_bytes(f.read(4), "little")
            self.index = json.loads(f.read(n)) if 0 < n <= 1024 else {}
            self.base = 4 + n

        def mount(self, readonly, mkfs):
            pass

        def umount(self):
            self.f.close()

        def _entry(self, path):
            e = self.index.get(path.lstrip("/"))
            if e is None:
                raise OSError(2)  # ENOENT
            return e

        def stat(self, path):
            return (0x8000, 0, 0, 0, 0, 0, self._entry(path)[1], 0, 0, 0)

        def open(self, path, mode):
            import io

            off, size = self._entry(path)
            self.f.seek(self.base + off)
            data = self.f.read(size)
            if len(data) != size:
                raise OSError(5)  # EIO: a truncated pack
            return io.BytesIO(data)


def _pack(on):
    """Serve the boot path's modules from the pack (on=True), or stop (on=False). Without a
    usable pack they load from /lib one by one. Not on the unix VM: its tests run the guard
    in heaps cut to the smallest boards' to prove its RAM bounded, and a module read whole
    into RAM (up to 8 KB, freed once loaded) fragments those; the boards it is for have
    ~100 KB or more free at boot (a Pico 241 KB), where that costs nothing that matters.
    Not when the guard runs from ROMFS: the pack would load onto the heap what runs in place."""
    if on and (sys.platform in ("linux", "darwin") or IN_ROM):
        return
    at = "/.mpseal-boot"  # (names used once are not module globals: each is a qstr at boot)
    try:
        import vfs

        if on:
            vfs.mount(_Pack(open("/lib/mpseal-boot.pack", "rb")), at)
            i = sys.path.index(".frozen") + 1 if ".frozen" in sys.path else 0
            sys.path.insert(i, at)
        elif at in sys.path:
            sys.path.remove(at)
            vfs.umount(at)
    except Exception:  # why: no pack, a damaged one, no vfs.mount: the plain imports work
        pass


_pack(True)

import mpseal_port as port  # noqa: E402 - after _pack: from the pack where there is one
import mpseal_release as rel_mod  # noqa: E402
import mpseal_state as state_mod  # noqa: E402
from mpseal_port import Refused  # noqa: E402 - mpseal_release.Refused: the same class

DIR = "/mpseal"
CONFIG = DIR + "/device.json"
_CONFIG_MAX = const(2048)
LOG = DIR + "/log.txt"
_LOG_MAX = const(4096)
DEFAULTS = {"board": "unknown", "profile": "field", "max_tries": 3, "max_image": 1 << 22,
            "mount": "auto", "max_fails": 5}
MOUNTS = ("auto", "romfs-partition", "vfsrom-ram", "verified-files")
_HEALTHY_MS = const(30000)  # an app that ran this long before crashing did not fail its boot

_state = None  # State of this boot
_running = None  # (slot, Release) of the image running now
_config = None
_image_buf = None  # RAM for a file slot's image, reserved before anything else
_config_error = None  # why device.json could not be used, or None
_mount_kind = None  # the mount path of this boot (see MOUNTS)


class Missing(Exception):
    """The firmware lacks a feature the guard needs (not the app's fault)."""


def _other(slot):
    return "b" if slot == "a" else "a"


def slot_path(slot):
    return DIR + "/slot-" + slot + ".mpseal"


_listing = None  # config.json, unlock.tok: those of them in DIR (_cleanup() at boot)
_pending = []  # log lines held back (later=True), written with the next line that is not


def log(msg, echo=True, later=False, once=False):
    """Print and append to the log. once=True: not written when the log already ends with
    exactly these lines (a committed boot like the one before: no flash write)."""
    if echo:
        print("[mpseal] " + msg)
    _pending.append("%d %s\n" % (_state.seq if _state else 0, msg))
    if later:
        return
    try:
        if once and _ends_with(LOG, "".join(_pending).encode()):
            del _pending[:]
            return
        # One open per write (each littlefs lookup costs ~1 ms on a Pico): the size for
        # the rotation comes from the position after appending, not from a stat.
        with open(LOG, "a") as f:
            f.write("".join(_pending))
            big = f.tell() > _LOG_MAX
        if big:
            os.rename(LOG, LOG + ".1")
    except Exception:  # why: a full, read-only or failing flash must not stop the boot
        pass
    del _pending[:]


def _ends_with(path, data):
    try:
        with open(path, "rb") as f:
            end = f.seek(0, 2)
            if end < len(data):
                return False
            f.seek(end - len(data))
            return f.read(len(data)) == data
    except OSError:
        return False


def _need(module, name):
    """Module `module`, which must have `name`; else Missing, saying which feature."""
    try:
        mod = __import__(module)
    except ImportError:
        raise Missing("firmware has no %s module" % module)
    if not hasattr(mod, name):
        raise Missing("firmware has no %s.%s" % (module, name))
    return mod


def config():
    """device.json over the defaults. Missing or damaged: the defaults (profile field),
    and _config_error says why, so the boot stops locked instead of guessing."""
    global _config, _config_error
    if _config is None:
        import json

        cfg = dict(DEFAULTS)
        try:
            raw = _read(CONFIG, _CONFIG_MAX)
            if raw is None:
                raise ValueError("larger than %d bytes" % _CONFIG_MAX)
            doc = json.loads(raw)
            if not isinstance(doc, dict):
                raise ValueError("not a JSON object")
            cfg.update(doc)
            state_mod.check_config(cfg, MOUNTS)
        except OSError as e:
            _config_error = "cannot read %s: %s" % (CONFIG, e)
        except (ValueError, TypeError, KeyError) as e:
            _config_error = "%s is damaged: %s" % (CONFIG, e)
        if _config_error:
            cfg = dict(DEFAULTS)
        _config = cfg
    return _config


def _rel():
    """mpseal_release: dropped before the app runs (_drop_release), loaded again when used."""
    global rel_mod
    if rel_mod is None:
        import mpseal_release

        rel_mod = mpseal_release
    return rel_mod


def _read(path, limit):
    """The whole file, read at its size (a read(n) takes n bytes of heap at once), or None
    when it is larger than `limit` (nothing read). No stat first: each littlefs lookup
    costs ~3 ms on a Pico, the size of an open file nothing."""
    with open(path, "rb") as f:
        n = f.seek(0, 2)
        if n > limit:
            return None
        f.seek(0)
        return f.read(n)


def trust_root():
    rel = _rel()
    data = _read(DIR + "/trust-root.mpsr", rel.MAX_ROOT)
    if data is None:
        raise Refused("trust root is larger than %d bytes" % rel.MAX_ROOT)
    return rel.load_root(data)[0]


def app():
    """This device's product, as provisioning wrote it (device.json, else config.json):
    a release of another app is refused, even one signed by the same release key."""
    cfg = config()
    if "app" not in cfg:
        a = None
        try:
            if _listing is not None and "config.json" not in _listing:
                raise OSError(2)  # not there: no lookup (~3 ms on a Pico)
            import json

            with open(DIR + "/config.json") as f:
                a = json.loads(f.read(4096)).get("app")
        except (OSError, ValueError, AttributeError):
            pass
        cfg["app"] = a
    a = cfg["app"]
    return a if isinstance(a, str) and a else None


def _verify(slot, root, min_counter, into=None, boot=False):
    """Verify a slot. boot=True (the slot is about to run): on the verified-files and
    romfs-partition mounts the slot's image hash is left out when the last boot did not
    fail (verified-files checks every file it serves against the signed manifest;
    romfs-partition hashes the partition it runs from against the signed image hash, and
    a slot copied there is hashed there); after a failed boot it is done in full, so a
    damaged image is refused here and the other slot gets its chance."""
    cfg = config()
    files = _mount_kind in ("verified-files", "romfs-partition")
    try:
        # (the slot stays open for the verified-files mount only: romfs-partition closes it
        # before the signature check, so its 1 KB file cache is not held through the check)
        r = _rel().verify_file(slot_path(slot), root, cfg["board"], min_counter,
                                cfg["max_image"], into, files, app(),
                                not (boot and files and not _state.fails),
                                boot and _mount_kind == "verified-files")
        if boot:  # the signature is checked: the verifier's heap is free for what follows
            _drop_verifier()
        if r.enc:  # encrypted: it must open with this device's key (mpseal_encfs)
            _open_encrypted(slot_path(slot), r)
        return _Verified(r)
    except OSError as e:  # the flash failed under the read: this slot cannot be trusted now
        raise Refused("flash read failed: %s" % e)


class _Verified:
    """What the guard uses of a verified mpseal_release.Release, copied: an instance of
    that class would keep all of mpseal_release loaded while the app runs."""

    def __init__(self, r):
        self.app = r.app
        self.version = r.version
        self.counter = r.counter
        self.entry = r.entry
        self.sha256 = r.sha256
        self.files = r.files
        self.profile = r.profile
        self.offset = r.offset
        self.size = r.size
        self.enc = r.enc
        self.key = r.key
        self.key_record = r.key_record
        self.slot_file = r.slot_file  # open, for the mount (verify_file keep=True)


def _open_encrypted(path, r):
    _need("cryptolib", "aes")
    import mpseal_encfs

    return mpseal_encfs.open_release(path, r, port.unique_id())


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
    import mpseal_stage  # no intact state: first boot, or both copies destroyed

    _state = state_mod.State()
    mpseal_stage.rebuild_state(root)


def _cleanup():
    """Remove what a power cut left half-written; returns which of the names the boot asks
    about later (config.json, unlock.tok) DIR holds (or None). One listing: each lookup of a
    missing file walks littlefs's metadata (~1-3 ms on a Pico). Only those names are kept:
    the whole listing is not held through the signature check."""
    global _listing
    try:
        names = os.listdir(DIR)
    except OSError:
        return None
    for name in names:
        if name in ("slot-a.mpseal.tmp", "slot-b.mpseal.tmp", "state.a.tmp", "state.b.tmp"):
            try:
                os.remove(DIR + "/" + name)
            except OSError:
                pass
    _listing = [n for n in names if n in ("config.json", "unlock.tok")]
    return _listing


def stage(src, key_record=None):
    """Verify artifact `src` (a path or a readable file object) into the inactive slot;
    an encrypted release needs `key_record`, its key wrapped for this device, and must
    open with it before it is staged.

    Returns the Release; raises Refused (and changes nothing) if it is not acceptable.
    The code is in mpseal_stage: no boot loads it."""
    import mpseal_stage

    return mpseal_stage.stage(src, key_record)


def confirm():
    """Called by the app once its own health check passed: commit the trial image."""
    if _state is None or _running is None or _state.trial != _running[0]:
        return False
    slot, r = _running
    _state.committed = slot
    _state.trial = None
    _state.tries = 0
    _state.fails = 0
    if r.counter > _state.counter:
        _state.counter = r.counter
    _save()
    log("committed %s %s (counter %d) in slot %s" % (r.app, r.version, r.counter, slot))
    return True


def status():
    return {"state": _state.to_dict() if _state else None,
            "running": (_running[0], _running[1].version) if _running else None,
            "mount": _mount_kind, "guard": __file__}


def _revert(why):
    log("trial of slot %s reverted: %s" % (_state.trial, why))
    _state.trial = None
    _state.tries = 0
    _save()


def mount_plan():
    """The mount path this firmware allows (see MOUNTS), by feature detection; device.json's
    "mount" may force one, and a forced path the firmware lacks raises Missing."""
    want = config()["mount"]
    vfs = _need("vfs", "mount")
    has_rom = hasattr(vfs, "VfsRom")
    if want in ("auto", "romfs-partition"):
        if has_rom and port.rom_partition(IN_ROM, True):
            return "romfs-partition"
        if want != "auto":
            raise Missing("firmware has no ROMFS partition (vfs.VfsRom and vfs.rom_ioctl)")
    if want in ("auto", "vfsrom-ram"):
        if has_rom:
            return "vfsrom-ram"
        if want != "auto":
            raise Missing("firmware has no vfs.VfsRom")
    return "verified-files"


def _mount(slot, r):
    # (the guard's own .mpy is kept small: on a Pico its load time jumps by ~4 ms past
    # ~8.3 KB, measured; ROMFS-only code lives in mpseal_romfs)
    global _mount_kind
    import vfs

    fs = None
    if _mount_kind == "romfs-partition":
        fs = port.rom_partition(IN_ROM).mount(slot_path(slot), r, log, "slot " + slot)
        if fs is None:  # an update grew past the room the guard's image leaves
            _mount_kind = "verified-files"
    if _mount_kind == "vfsrom-ram":
        # _verify read the image into the reserved RAM while hashing it: the
        # bytes that run are exactly the bytes that were checked.
        if _image_buf is None:
            raise Refused("not enough RAM for a %d-byte image" % r.size)
        fs = vfs.VfsRom(memoryview(_image_buf)[: r.size])
    elif fs is None:  # verified-files
        import mpseal_appfs

        fs = mpseal_appfs.AppFS(slot_path(slot), r.offset, r.files, r.size, r.enc, r.key,
                                r.slot_file)
        r.slot_file = None
    if IN_ROM:  # the app takes /rom: the guard's image stays mounted elsewhere
        import mpseal_romfs

        mpseal_romfs.keep_guard()
    try:
        vfs.umount("/rom")
    except OSError:
        pass
    vfs.mount(fs, "/rom")
    sys.path[:0] = ["/rom", "/rom/lib"]


def _reserve_image_buffer():
    """Pick the mount path; for vfsrom-ram take one contiguous block for the image first,
    before the heap fragments (where RAM does not allow it, auto falls to verified-files)."""
    global _image_buf, _mount_kind
    _mount_kind = mount_plan()
    if _mount_kind != "vfsrom-ram":
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
            if config()["mount"] == "auto":
                _mount_kind = "verified-files"
            else:
                log("not enough RAM for a %d-byte image" % size)


def _release_builtins():
    for name in PINNED:
        if sys.modules.get(name) is not None and not hasattr(sys.modules[name], "__file__"):
            del sys.modules[name]


def _drop_release():
    """The boot's mount is up: nothing of mpseal_release (~9 KB on a Pico) is referenced
    any more (the mount, _running and Refused keep none of it); staging loads it again."""
    global rel_mod
    rel_mod = None
    try:
        del sys.modules["mpseal_release"]
    except KeyError:
        pass


def _drop_verifier():
    """The signature is checked: let the verifier's code (~17 KB on a Pico) be collected
    (by the next collection: one forced here would also finalise files a flash error
    left open, and print their errors)."""
    rel_mod.p256 = None
    for name in ("p256", "p256_fast", "p256_thumb"):  # imported again if the app stages one
        try:
            del sys.modules[name]
        except KeyError:
            pass


def _run(slot, r, trial):
    global _running, _mount_kind, _image_buf
    _running = (slot, r)
    if r.enc and _mount_kind != "verified-files":
        # VfsRom would need the whole plaintext image in RAM or on flash: an encrypted
        # release is served file by file, each decrypted and checked when opened.
        log("encrypted release: verified-files mount instead of %s" % _mount_kind)
        _mount_kind = "verified-files"
        _image_buf = None
    # A committed boot like the last one (same state, slot and mount) is not logged again:
    # appending to littlefs costs a block erase (~45 ms) and wears the flash.
    log("booting %s %s (counter %d) from slot %s%s (mount: %s)"
        % (r.app, r.version, r.counter, slot, " on trial" if trial else "", _mount_kind),
        once=not trial)
    _mount(slot, r)
    _pack(False)
    _drop_release()
    _release_builtins()
    mod = __import__(r.entry)
    main = getattr(mod, "main", None)
    if main is not None:
        main()


def _run_guarded(slot, r, trial):
    """Run the app; on a crash or return decide what happens next (never the REPL)."""
    why = None
    failed = True
    started = time.ticks_ms()
    try:
        _run(slot, r, trial)
        why = "app returned"
        failed = False
    except Missing:
        raise  # the firmware's fault, not the image's: boot() stops and says so
    except Refused as e:  # a file of the image did not match its signed hash (appfs)
        why = "refused: " + str(e)
        started = None  # counted below whenever it happens: the next boot hashes it all
    except BaseException as e:  # why: the app must never fall through to the REPL
        why = "app crashed: %s: %s" % (type(e).__name__, e)
        if _profile == "dev":
            sys.print_exception(e)
            # Ctrl-C reaches the app only in dev: a developer's interrupt is not a
            # failed boot (it would also make the next boot hash the whole image)
            failed = not isinstance(e, KeyboardInterrupt)
    if trial and _state.trial == slot:
        _revert(why)
        return why
    log(why)
    if failed:
        # Count quick failures of the committed image (saved before the reset that
        # follows), so a crash at every boot ends in locked idle, not a reset loop.
        if started is not None and time.ticks_diff(time.ticks_ms(), started) >= _HEALTHY_MS:
            _state.fails = 0
        else:
            _state.fails += 1
        _save()
    return why


def _unlock(root, names=None):
    """A service unlock token: signed by the offline root role, for this device, used once.
    `names`: what DIR holds, if known (a token there that is not listed is not looked up).

    Returns the profile it grants for this boot, or None."""
    for path in (DIR + "/unlock.tok", "/sd/mpseal-unlock.tok"):
        if names is not None and path.startswith(DIR + "/") and path[len(DIR) + 1 :] not in names:
            continue
        try:
            with open(path, "rb") as f:
                data = f.read(2048)
        except OSError:
            continue
        import mpseal_stage  # no token, no load: most boots never need it

        profile = mpseal_stage.unlock(path, data, root)
        if profile:
            return profile
    return None


def boot():
    """The whole boot sequence. Returns only in the `dev` profile.

    Total: whatever goes wrong in here ends in locked idle with the reason printed
    and logged (in `dev` with a valid config: the traceback, then the REPL)."""
    try:
        import micropython

        micropython.kbd_intr(-1)  # at once: `dev` is allowed only once signed data says so
    except BaseException:  # why: a firmware without kbd_intr still boots locked below
        pass
    try:
        _boot()
    except SystemExit:
        raise  # the virtual board's reset and idle
    except BaseException as e:  # why: nothing may reach the REPL outside dev
        _stop(e)


def _idle(why):
    """Locked idle, the reason printed (by port.idle, again every minute) and logged."""
    log("locked idle: " + why, False)  # port.idle prints it
    port.idle(why)


def _stop(e):
    if isinstance(e, Missing):
        why = "firmware lacks a feature the guard needs: %s" % e
    else:
        why = "guard failed: %s: %s" % (type(e).__name__, e)
    try:
        dev = _profile == "dev" and _config_error is None
    except BaseException:  # why: even the config cannot be read now: stay locked
        dev = False
    if dev:
        log(why)
        sys.print_exception(e)
        return
    _idle(why)


def _boot():
    import mpseal_lockdown

    config()
    if _config_error:
        _idle("no usable device config: %s" % _config_error)
        return
    _need("hashlib", "sha256")
    _reserve_image_buffer()
    try:
        root = trust_root()
    except (OSError, Refused) as e:
        mpseal_lockdown.apply("sealed")
        _idle("no usable trust root: %s" % e)
        return
    _load_state(root)
    names = _cleanup()
    mpseal_lockdown.mount_sd()  # an unlock token may be on the card (/sd/mpseal-unlock.tok)
    global _token_profile
    _token_profile = _unlock(root, names)
    # Until a release verifies, no more than `field`: device.json is not signed.
    profile = _token_profile or _stricter(config()["profile"], "field")
    _apply_profile(profile)
    if _state.trial:
        slot = _state.trial
        if _state.tries >= config()["max_tries"]:
            _revert("not confirmed after %d boots" % _state.tries)
        else:
            _state.tries += 1
            _save()  # counted before running: a hang or power cut also uses a try
            try:
                r = _verify(slot, root, _state.counter, _image_buf, True)
            except Refused as e:
                _revert(str(e))
            else:
                profile = _allowed(r)
                _run_guarded(slot, r, True)
                _end(profile)
                return
    if _state.fails >= config()["max_fails"]:
        _idle("the committed image failed %d boots in a row; not starting it again (see %s)"
                  % (_state.fails, LOG))
        return
    for slot in (_state.committed, _other(_state.committed or "b")):
        if slot is None:
            continue
        try:
            r = _verify(slot, root, _state.counter, _image_buf, True)
        except Refused as e:
            log("slot %s refused: %s" % (slot, e))
            continue
        if slot != _state.committed:
            log("falling back to slot %s" % slot)
            _state.committed = slot
            _save()
        profile = _allowed(r)
        _run_guarded(slot, r, False)
        _end(profile)
        return
    _idle("no valid image to boot (see %s)" % LOG)


_profile = "sealed"  # the profile applied now
_token_profile = None  # granted by a service unlock token for this boot


def _stricter(a, b):
    order = ("dev", "field", "sealed")
    return a if order.index(a) > order.index(b) else b


def _apply_profile(profile):
    global _profile
    _profile = profile
    if profile == "dev":
        import micropython

        micropython.kbd_intr(3)
    done = _lockdown(profile)
    if done:  # written with the boot's next line (one flash write fewer per boot)
        log("lockdown %s: %s" % (profile, ", ".join(done)), later=True)


def _lockdown(profile):
    import mpseal_lockdown

    return mpseal_lockdown.apply(profile)


def _allowed(r):
    """The profile to run release `r` under: an unlock token's, else the stricter of
    device.json (unsigned: it can only tighten) and the release's signed profile."""
    profile = _token_profile or _stricter(config()["profile"], r.profile)
    if profile != _profile:
        _apply_profile(profile)
    return profile


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
