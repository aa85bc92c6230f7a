# What the guard runs outside the usual boot, kept out of the modules every boot loads
# (each KB of .mpy costs ~3 ms to load on a Pico, and its names stay in RAM): staging a
# release into the inactive slot (stage, copy_verified), a service unlock token
# (check_unlock, unlock) and the check of a trust root rotation (verify_root_update).
# mpseal_guard.stage() and the guard's unlock step load it when they are used.

import hashlib
import json
import os
import struct

import mpseal_release as R


MAX_UNLOCK = 2048


def check_unlock(root, data, device, used):
    """A service unlock token (MPSU, signed by the root role) for `device`, numbered above
    `used` -> its payload; as the host's formats/unlocktoken.py."""
    payload, sigs, nsig = R.envelope(data, b"MPSU", "unlock token", MAX_UNLOCK)
    R.check_threshold(root, "root", payload, sigs, nsig, "unlock token")
    try:
        tok = json.loads(payload)
        ok = tok["type"] == "mpseal-unlock" and isinstance(tok["device"], str)
        n, profile = tok["n"], tok["profile"]
    except (ValueError, KeyError, TypeError):
        raise R.Refused("unlock token is malformed")
    if not ok or len(tok["device"]) > 64:
        raise R.Refused("unlock token is malformed")
    if tok["device"] != device:
        raise R.Refused("unlock token is for another device")
    if not R._int(n, 0, 0x7FFFFFFF):
        raise R.Refused("unlock token is malformed")
    if n <= used:
        raise R.Refused("unlock token was already used")
    if profile not in ("dev", "field"):
        raise R.Refused("unlock token names no usable profile")
    return tok


def verify_root_update(old_root, data):
    """A new trust root must be signed by a threshold of the OLD root role and of its own."""
    new_root, payload, sigblock, nsig = R.load_root(data)
    R.check_threshold(old_root, "root", payload, sigblock, nsig, "new trust root")
    R.check_threshold(new_root, "root", payload, sigblock, nsig, "new trust root")
    if new_root["version"] <= old_root["version"]:
        raise R.Refused("trust root version %d is not newer" % new_root["version"])
    return new_root


def copy_verified(src, dst_path, root, board, min_counter, max_image, app=None,
                  key_record=None):
    """Stream artifact file object `src` to `dst_path`, verifying on the way.

    The signature and manifest are checked before any image byte is written; the
    image hash when the last byte is in. An encrypted release needs `key_record` (its
    key wrapped for this device), kept after the image. On any refusal `dst_path` is
    removed."""
    out = open(dst_path, "wb")
    try:
        head, manifest, sigs = R.read_head(src)
        rel = R.check_manifest(root, head, manifest, sigs, board, min_counter, max_image,
                             app=app)
        _, off, _ = head
        # Re-create the exact header bytes (with the check) from what was read.
        hdr = bytearray(struct.pack(R.HEADER, R.MAGIC, 1, R.HEADER_LEN, len(manifest),
                                    len(sigs) // R.ENTRY_LEN, b"\0\0\0", off, rel.size, b""))
        hdr[28:32] = hashlib.sha256(hdr[:28]).digest()[:4]
        out.write(hdr)
        out.write(manifest)
        out.write(sigs)
        out.write(bytes(off - R.HEADER_LEN - len(manifest) - len(sigs)))
        manifest = sigs = None
        if R.hash_stream(src, rel.size, out) != rel.sha256:
            raise R.Refused("image hash does not match the signed manifest")
        if src.read(1):
            raise R.Refused("artifact has bytes after the image")
        if rel.enc:
            if key_record is None or len(key_record) != R.KEY_RECORD_LEN:
                raise R.Refused("the release is encrypted and came without a key for this device")
            out.write(key_record)
            rel.key_record = bytes(key_record)
        out.close()
        return rel
    except BaseException:
        out.close()
        try:
            os.remove(dst_path)
        except OSError:
            pass
        raise


def stage(src, key_record=None):
    """mpseal_guard.stage (its doc)."""
    import mpseal_guard as g

    root = g.trust_root()
    if g._state is None:
        g._load_state(root)
    g._cleanup()
    st = g._state
    slot = g._other(st.committed) if st.committed else "a"
    tmp = g.slot_path(slot) + ".tmp"
    f = open(src, "rb") if isinstance(src, str) else src
    try:
        cfg = g.config()
        r = copy_verified(f, tmp, root, cfg["board"], st.counter, cfg["max_image"], g.app(),
                          key_record)
        if r.enc:
            try:
                g._open_encrypted(tmp, r)
            except BaseException:
                g._cleanup()  # the copy that does not open is not kept
                raise
    except R.Refused as e:
        g.log("stage refused: %s" % e)  # kept: the warranty check reads these
        raise
    finally:
        if isinstance(src, str):
            f.close()
    os.rename(tmp, g.slot_path(slot))
    st.trial = slot
    st.tries = 0
    st.fails = 0
    g._save()
    g.log("staged %s %s (counter %d) in slot %s for a trial boot"
          % (r.app, r.version, r.counter, slot))
    return r


def rebuild_state(root):
    """The guard found no intact boot state (first boot, or both copies destroyed): trust
    only what verifies, and take the highest counter seen so nothing older can win later.
    (Here, not in mpseal_guard: few boots need it, and every boot loads the guard.)"""
    import mpseal_guard as g

    best = None
    for slot in ("a", "b"):
        try:
            r = g._verify(slot, root, 0)
        except R.Refused:
            continue
        if best is None or r.counter > best[1].counter:
            best = (slot, r)
    if best:
        g._state.committed = best[0]
        g._state.counter = best[1].counter
        g.log("no boot state: rebuilt from slot %s" % best[0])
        g._save()


def unlock(path, data, root):
    """Token `data`, read from `path` by the guard's boot: removed (single use, whatever
    happens next), checked -> the profile it grants for this boot, or None."""
    import mpseal_guard as g
    import mpseal_port

    try:
        os.remove(path)
    except OSError:
        pass
    try:
        tok = check_unlock(root, data, mpseal_port.unique_id(), g._state.unlocks)
        n = tok["n"]
    except (R.Refused, ValueError, AttributeError) as e:
        g.log("unlock refused: %s" % e)
        return None
    g._state.unlocks = n
    g._save()
    g.log("service unlock %d: profile %s for this boot" % (n, tok["profile"]))
    return tok["profile"]
