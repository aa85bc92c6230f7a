# Mount a release image and run its entry module (MicroPython, runs on the device).
#
# This is the unverified launcher used by `mpseal sim run`: the host has already
# verified the artifact before installing it. The boot guard (guard.py) is what a
# product uses: it verifies the signature and the image hash on the device first.

import struct
import sys

import vfs

MAGIC = b"\x89MPSEAL\n"
HEADER = "<8sHHIB3sII4s"
HEADER_LEN = 32
MOUNT_POINT = "/rom"


def read_artifact(path, max_manifest=65536):
    """Return (manifest_bytes, image) of the artifact file at `path`."""
    with open(path, "rb") as f:
        head = f.read(HEADER_LEN)
        if len(head) != HEADER_LEN:
            raise ValueError("artifact truncated")
        magic, ver, hlen, mlen, nsig, _, off, ilen, _ = struct.unpack(HEADER, head)
        if magic != MAGIC or ver != 1 or hlen != HEADER_LEN or mlen > max_manifest:
            raise ValueError("not an mpseal artifact")
        manifest = f.read(mlen)
        f.seek(off)
        image = bytearray(ilen)
        if f.readinto(image) != ilen:
            raise ValueError("artifact image truncated")
    return manifest, image


def mount(image, mount_point=MOUNT_POINT):
    vfs.mount(vfs.VfsRom(image), mount_point)
    if mount_point not in sys.path:
        sys.path.insert(0, mount_point)


def run_entry(entry):
    mod = __import__(entry)
    main = getattr(mod, "main", None)
    if main is not None:
        main()


def run_artifact(path):
    import json

    manifest, image = read_artifact(path)
    entry = json.loads(manifest)["entry"]
    mount(image)
    run_entry(entry)
