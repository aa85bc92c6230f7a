"""One source of truth between host and device (issue 10.9): the same corpus of valid and
mutated artifacts (with their manifests), trust roots, timestamps, sealed secrets and
unlock tokens goes to the host's parsers and to the device's (runtime/, in the real
MicroPython VM); both must give the same verdict for every item.

One known difference is left out of the corpus: the host also checks that the image's
file index lists exactly the ROMFS image's files (formats/artifact.py); the device checks
the index's hash and structure only, and each file's hash when it serves it
(runtime/mpseal_appfs.py), since it does not parse the image before mounting it."""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from mpseal.crypto import secretbox
from mpseal.crypto.keys import PrivateKeySigner
from mpseal.device import vm
from mpseal.errors import MpsealError
from mpseal.formats import artifact as art_mod
from mpseal.formats import (
    encrypted,
    envelope,
    fileindex,
    jsondoc,
    manifest,
    romfs,
    sigblock,
    trustroot,
    unlocktoken,
    updatemeta,
)
from mpseal.formats.sigblock import SignatureEntry

NOW = 1_795_000_000
HWID = "e6614103e7452d2f"
USED = 2  # unlock tokens this device used so far

RUNNER = """
import sys, json
sys.path.insert(0, %(runtime)r)
import mpseal_release as rel, mpseal_meta as meta, mpseal_secrets as sec, mpseal_appfs as appfs
import mpseal_stage, mpseal_encfs
from mpseal_release import Refused
corpus = sys.argv[1]
with open(corpus + "/root.mpsr", "rb") as f:
    root = rel.load_root(f.read())[0]
with open(corpus + "/index.json") as f:
    index = json.loads(f.read())
out = []
for name, kind in index:
    path = corpus + "/" + name
    with open(path, "rb") as f:
        data = f.read()
    try:
        if kind == "artifact":
            r = rel.verify_file(path, root, "unix", 0, rel.MAX_IMAGE, files=True)
            if r.files is not None:  # the file index, as the verified-files mount reads it
                with open(path, "rb") as f:
                    appfs.load_index(f, r.offset, r.files, r.size)
        elif kind == "root":
            new = mpseal_stage.verify_root_update(root, data)
            if new["version"] != root["version"] + 1:
                raise Refused("not the next root")
        elif kind == "timestamp":
            meta.verify_timestamp(data, root, %(now)d, None, "stable")
        elif kind == "secrets":
            sec.open_sealed(data, %(hwid)r)
        elif kind == "unlock":
            mpseal_stage.check_unlock(root, data, %(hwid)r, %(used)d)
        elif kind == "slot":  # an encrypted release in a slot, with its key record
            r = rel.verify_file(path, root, "unix", 0, rel.MAX_IMAGE)
            if not r.enc:
                raise Refused("not encrypted")
            mpseal_encfs.open_release(path, r, %(hwid)r)  # decrypts and checks the file index
        out.append([name, "ok"])
    except (Refused, sec.SecretsError):
        out.append([name, "refused"])
    except Exception as e:
        out.append([name, "crash " + type(e).__name__ + " " + str(e)])
print("MPSEAL:" + repr(out))
"""


class Fleet:
    """Keys and a trust root with two keys in each of release and timestamp (threshold 1)."""

    def __init__(self) -> None:
        g = PrivateKeySigner.generate
        self.root, self.root2 = g(), g()
        self.rel = [g(), g()]
        self.ts = [g(), g()]
        self.stranger = g()
        doc = trustroot.build(
            1,
            {
                "root": [self.root.public_key],
                "release": [k.public_key for k in self.rel],
                "timestamp": [k.public_key for k in self.ts],
            },
        )
        self.trust = trustroot.parse(trustroot.sign(doc, [self.root]))


def sigs_of(signers, payload: bytes) -> list[SignatureEntry]:
    return sigblock.sign_all(list(signers), payload)


def bad_sig(signer, payload: bytes) -> SignatureEntry:
    e = sigblock.sign_all([signer], payload)[0]
    return SignatureEntry(e.keyid, bytes(64 - 1) + b"\x01")


def flip(data: bytes, at: int) -> bytes:
    b = bytearray(data)
    b[at] ^= 0x01
    return bytes(b)


# -- artifacts and their manifests -----------------------------------------------------------

ROM = romfs.write({"main.mpy": b"M" * 100, "lib/a.mpy": b"A" * 24})
IMAGE, INDEX = fileindex.append(ROM, romfs.entries(ROM))
FILES = INDEX.to_dict()


def index_bytes(*items: tuple[str, int, int, str], count: int | None = None) -> bytes:
    """A file index written by hand (formats/fileindex.py layout), entries in the order given,
    each ``off`` absolute (written relative to the previous entry's, as the format has it)."""
    raw = fileindex.encode([])[:4] + (len(items) if count is None else count).to_bytes(4, "little")
    prev = 0
    for name, size, off, h in items:
        raw += (
            size.to_bytes(4, "little")
            + (off - prev).to_bytes(4, "little", signed=True)
            + bytes.fromhex(h)
            + bytes([len(name)])
            + name.encode()
        )
        prev = off
    return raw


def manifest_doc() -> dict:
    return {
        "type": "mpseal-release",
        "spec": 1,
        "app": "hello",
        "version": "1.0.0",
        "counter": 1,
        "board": "unix",
        "port": "unix",
        "mpy": {"version": "6.3", "arch": "x64"},
        "image": {
            "format": "romfs",
            "sha256": hashlib.sha256(IMAGE).hexdigest(),
            "size": len(IMAGE),
        },
        "entry": "main",
        "files": FILES,
        "build": {"opt": 2, "profile": "field"},
    }


def artifact(
    doc: dict, sigs: Callable[[bytes], list[SignatureEntry]], image: bytes = IMAGE
) -> bytes:
    mbytes = jsondoc.dumps(doc)
    return art_mod.Artifact(mbytes, sigs(mbytes), image).encode()


def artifacts(f: Fleet) -> dict[str, bytes]:
    good = lambda m: sigs_of(f.rel[:1], m)  # noqa: E731
    valid = artifact(manifest_doc(), good)
    out = {
        "valid": valid,
        "two-good-sigs": artifact(manifest_doc(), lambda m: sigs_of(f.rel, m)),
        "good-then-unknown": artifact(manifest_doc(), lambda m: sigs_of([f.rel[0], f.stranger], m)),
        "bad-then-good": artifact(
            manifest_doc(), lambda m: [bad_sig(f.rel[0], m)] + sigs_of(f.rel[1:], m)
        ),
        "unknown-only": artifact(manifest_doc(), lambda m: sigs_of([f.stranger], m)),
        "timestamp-key": artifact(manifest_doc(), lambda m: sigs_of(f.ts[:1], m)),
        "truncated": valid[:-1],
        "extra-byte": valid + b"\0",
    }
    mlen = int.from_bytes(valid[12:16], "little")
    for at, what in (
        (0, "magic"),
        (8, "format"),
        (12, "mlen"),
        (17, "reserved"),
        (28, "check"),
        (40, "manifest"),
        (32 + mlen + 40, "signature"),
        (len(valid) - len(IMAGE) - 1, "padding"),
        (len(valid) - 5, "image"),
    ):
        out[f"flip-{what}"] = flip(valid, at)
    # A header with non-zero reserved bytes and a correct check.
    head = bytearray(valid[:32])
    head[17] = 1
    head[28:32] = art_mod.header_check(bytes(head))
    out["reserved-rechecked"] = bytes(head) + valid[32:]

    def changed(**kv: object) -> dict:
        d = manifest_doc()
        for k, v in kv.items():
            if "." in k:
                a, b = k.split(".")
                d[a] = {**d[a], b: v}
            else:
                d[k] = v
        return d

    sha = hashlib.sha256(b"x").hexdigest()
    for name, doc in {
        "spec-2": changed(spec=2),
        "spec-true": changed(spec=True),
        "type": changed(type="mpseal-root"),
        "app-bad": changed(app="bad name"),
        "app-empty": changed(app=""),
        "version-bad": changed(version="-1"),
        "counter-negative": changed(counter=-1),
        "counter-bool": changed(counter=True),
        "counter-huge": changed(counter=2**31),
        "board-other": changed(board="esp32"),
        "entry-digit": changed(entry="1main"),
        "entry-dotted": changed(entry="a.b"),
        "format-fat": changed(**{"image.format": "fat"}),
        "sha-upper": changed(**{"image.sha256": hashlib.sha256(IMAGE).hexdigest().upper()}),
        "size-off": changed(**{"image.size": len(IMAGE) + 1}),
        "files-text": changed(files="x"),
        "files-list": changed(files=[["main.mpy", 100, 0, sha]]),
        "files-null": changed(files=None),
        "files-extra-key": changed(files={**FILES, "more": 1}),
        "files-count-0": changed(**{"files.count": 0}),
        "files-count-more": changed(**{"files.count": INDEX.count + 1}),
        "files-count-bool": changed(**{"files.count": True}),
        "files-offset-0": changed(**{"files.offset": 0}),
        "files-not-at-end": changed(**{"files.offset": INDEX.offset - 1}),
        "files-size-short": changed(**{"files.size": INDEX.size - 1}),
        "files-sha-short": changed(**{"files.sha256": "ab"}),
        "files-sha-other": changed(**{"files.sha256": sha}),
        "build-text": changed(build="x"),
        "mpy-missing": changed(mpy=None),
        "port-long": changed(port="p" * 33),
        "extra-field": changed(extra=[1, 2]),
        "manifest-16000": changed(build={"pad": "p" * 15200}),
        "manifest-17000": changed(build={"pad": "p" * 16400}),
    }.items():
        if doc.get("mpy") is None:
            doc.pop("mpy")
        out[f"manifest-{name}"] = artifact(doc, good)
    # Signed manifests naming a hand-made index at the end of the image (the hash right).
    entries = {e[0]: e for e in romfs.entries(ROM)}
    a, m = entries["lib/a.mpy"], entries["main.mpy"]

    for name, raw in {
        "unsorted": index_bytes(m, a),
        "twice": index_bytes(a, a),
        "outside": index_bytes(a, (m[0], m[1], len(ROM) - 10, m[3])),
        "dotdot": index_bytes(a, ("../m.mpy", *m[1:])),
        "trailing": index_bytes(a, m) + b"\0",
        "count-low": index_bytes(a, m, count=1),
        "file-and-folder": index_bytes(("lib", *a[1:]), a, m),
        "sorted": index_bytes(a, m),
        "negative-offset": index_bytes((a[0], a[1], -1, a[3]), m),
        "back-below-zero": index_bytes(a, (m[0], m[1], -m[2], m[3])),
    }.items():
        image = ROM + raw
        doc = manifest_doc()
        doc["image"] = {
            "format": "romfs",
            "sha256": hashlib.sha256(image).hexdigest(),
            "size": len(image),
        }
        doc["files"] = {
            "count": raw[4] if name != "count-low" else 2,
            "offset": len(ROM),
            "size": len(raw),
            "sha256": hashlib.sha256(raw).hexdigest(),
        }
        out[f"index-{name}"] = artifact(doc, good, image)
    return out


# -- encrypted releases in a slot (formats/encrypted.py) -----------------------------------------

KEY = bytes(range(32))
IV = bytes(range(16, 32))


def slots(f: Fleet) -> dict[str, bytes]:
    """Encrypted artifacts with the key record a device keeps after the image."""
    good = lambda m: sigs_of(f.rel[:1], m)  # noqa: E731
    plain = manifest.parse(jsondoc.dumps(manifest_doc()))

    def made(files: bytes | None = None, **enc: object) -> tuple[dict, bytes]:
        outer, stored = encrypted.encrypt(plain, IMAGE, KEY, IV)
        doc = json.loads(outer.encode())
        if files is not None:  # a file index other than the image's, signed as it is
            body = files
            padded = body + bytes(-len(body) % 16)
            head = Cipher(algorithms.AES(KEY), modes.CBC(IV)).encryptor()
            ct = head.update(padded) + head.finalize()
            rest = Cipher(algorithms.AES(KEY), modes.CBC(ct[-16:])).encryptor()
            img = ROM + bytes(-len(ROM) % 16)
            stored = IV + ct + rest.update(img) + rest.finalize()
            doc["encrypted"]["table"] = {
                "sha256": hashlib.sha256(body).hexdigest(),
                "size": len(body),
            }
            doc["image"]["size"] = len(stored)
        doc["encrypted"].update(enc)
        doc["image"]["sha256"] = hashlib.sha256(stored).hexdigest()
        return doc, stored

    def slot(doc: dict, stored: bytes, record: bytes | None = None) -> bytes:
        if record is None:
            record = encrypted.wrap(KEY, HWID, doc["image"]["sha256"])
        return artifact(doc, good, stored) + record

    doc, stored = made()
    valid = slot(doc, stored)
    sha = hashlib.sha256(b"x").hexdigest()
    out = {
        "valid": valid,
        "other-device": slot(
            doc, stored, encrypted.wrap(KEY, "0011223344556677", doc["image"]["sha256"])
        ),
        "no-record": artifact(doc, good, stored),
        "record-magic": valid[:-40] + b"MPSX" + valid[-36:],
        "record-version": valid[:-40] + b"MPSK\x02" + valid[-35:],
        "record-short": valid[:-1],
        "record-long": valid + b"\0",
        "record-flipped": flip(valid, len(valid) - 3),
        "ciphertext-flipped": flip(valid, len(valid) - 60),
        "alg-ctr": slot(*made(alg="aes-256-ctr")),
        "table-size-off": slot(
            *made(table={"sha256": doc["encrypted"]["table"]["sha256"], "size": 17})
        ),
        "romfs-size-off": slot(*made(romfs_size=len(ROM) + 16)),
        "table-tiny": slot(*made(table={"sha256": sha, "size": 1})),
        "table-7-bytes": slot(*made(b"MPSF\x01\x00\x00")),
        "files-outside": slot(*made(index_bytes(("a.mpy", 1000, 100, sha)))),
        "files-negative": slot(*made(index_bytes(("a.mpy", 1, -1, sha)))),
        "files-dotdot": slot(*made(index_bytes(("../a.mpy", 1, 0, sha)))),
        "files-space": slot(*made(index_bytes(("a b.mpy", 1, 0, sha)))),
        "files-twice": slot(*made(index_bytes(("a.mpy", 1, 0, sha), ("a.mpy", 1, 1, sha)))),
        "files-unsorted": slot(*made(index_bytes(("b.mpy", 1, 0, sha), ("a.mpy", 1, 1, sha)))),
        "files-not-an-index": slot(*made(b'[["a.mpy", 1, 0, "' + sha.encode() + b'"]]')),
        "files-other-valid": slot(*made(index_bytes(("x.mpy", 4, 0, sha)))),
    }
    listed, stored = made()
    listed["files"] = FILES  # an encrypted manifest that also names its file index
    out["files-in-manifest"] = slot(listed, stored)
    return out


# -- trust roots --------------------------------------------------------------------------------


def roots(f: Fleet) -> dict[str, bytes]:
    old = f.trust
    keys = {k: {"keytype": "ecdsa-p256", "public": v.point.hex()} for k, v in old.keys.items()}
    roles = {n: {"keyids": list(r.keyids), "threshold": r.threshold} for n, r in old.roles.items()}
    base = {"type": "mpseal-root", "spec": 1, "version": 2, "keys": keys, "roles": roles}

    def signed(doc: dict, signers=(f.root,)) -> bytes:
        return envelope.seal(trustroot.MAGIC, jsondoc.dumps(doc), list(signers)).encode()

    valid = signed(base)
    kid = next(iter(keys))
    out = {
        "valid": valid,
        "truncated": valid[:-1],
        "flip-payload": flip(valid, 20),
        "flip-signature": flip(valid, len(valid) - 10),
        "reserved": valid[:6] + b"\x01" + valid[7:],
        "version-3": signed({**base, "version": 3}),
        "version-1": signed({**base, "version": 1}),
        "by-release-key": signed(base, (f.rel[0],)),
        "bad-then-good": envelope.Envelope(
            trustroot.MAGIC,
            jsondoc.dumps(base),
            [bad_sig(f.root, jsondoc.dumps(base))] + sigs_of([f.root], jsondoc.dumps(base)),
        ).encode(),
    }
    for name, doc in {
        "threshold-0": {
            **base,
            "roles": {**roles, "release": {**roles["release"], "threshold": 0}},
        },
        "threshold-3": {
            **base,
            "roles": {**roles, "release": {**roles["release"], "threshold": 3}},
        },
        "keyid-unknown": {
            **base,
            "roles": {**roles, "release": {"keyids": ["ab" * 32], "threshold": 1}},
        },
        "keyids-empty": {**base, "roles": {**roles, "release": {"keyids": [], "threshold": 1}}},
        "role-unknown": {**base, "roles": {**roles, "admin": roles["release"]}},
        "no-release": {**base, "roles": {k: v for k, v in roles.items() if k != "release"}},
        "no-timestamp": {**base, "roles": {k: v for k, v in roles.items() if k != "timestamp"}},
        "keytype": {**base, "keys": {**keys, kid: {**keys[kid], "keytype": "rsa"}}},
        "kid-mismatch": {**base, "keys": {("cd" * 32): keys[kid], **keys}},
        "type": {**base, "type": "mpseal-timestamp"},
        "spec-2": {**base, "spec": 2},
        "version-text": {**base, "version": "2"},
        "keys-list": {**base, "keys": []},
    }.items():
        out[f"payload-{name}"] = signed(doc)
    return out


# -- timestamps ---------------------------------------------------------------------------------


def timestamps(f: Fleet) -> dict[str, bytes]:
    sha = "ab" * 32
    target = {
        "app": "hello",
        "board": "unix",
        "version": "2.0",
        "counter": 3,
        "manifest_sha256": sha,
        "size": 4096,
        "path": "artifacts/a.mpseal",
    }
    base = {
        "type": "mpseal-timestamp",
        "spec": 1,
        "version": 5,
        "channel": "stable",
        "issued": NOW - 60,
        "expires": NOW + 3600,
        "root_version": 1,
        "targets": [target],
    }

    def signed(doc: dict, sigs: Callable[[bytes], list[SignatureEntry]] | None = None) -> bytes:
        payload = jsondoc.dumps(doc)
        entries = sigs(payload) if sigs else sigs_of(f.ts[:1], payload)
        return envelope.Envelope(updatemeta.MAGIC, payload, entries).encode()

    def t(**kv: object) -> dict:
        return {**base, "targets": [{**target, **kv}]}

    valid = signed(base)
    out = {
        "valid": valid,
        "truncated": valid[:-1],
        "flip-payload": flip(valid, 30),
        "reserved": valid[:7] + b"\x01" + valid[8:],
        "bad-then-good": signed(base, lambda p: [bad_sig(f.ts[0], p)] + sigs_of(f.ts[1:], p)),
        "good-then-unknown": signed(base, lambda p: sigs_of([f.ts[0], f.stranger], p)),
        "unsigned": signed(base, lambda p: []),
        "by-release-key": signed(base, lambda p: sigs_of(f.rel[:1], p)),
    }
    for name, doc in {
        "expired": {**base, "expires": NOW - 1},
        "issued-after-expires": {**base, "issued": NOW + 9, "expires": NOW + 8},
        "issued-future": {**base, "issued": NOW + 2 * 86400, "expires": NOW + 3 * 86400},
        "channel-beta": {**base, "channel": "beta"},
        "channel-bad": {**base, "channel": "Beta"},
        "channel-missing": {k: v for k, v in base.items() if k != "channel"},
        "version-0": {**base, "version": 0},
        "version-2^53": {**base, "version": 2**53},
        "version-bool": {**base, "version": True},
        "spec-bool": {**base, "spec": True},
        "root-2": {**base, "root_version": 2},
        "targets-dict": {**base, "targets": {}},
        "no-targets": {**base, "targets": []},
        "board-bad": t(board="b@d"),
        "app-empty": t(app=""),
        "version-bad": t(version="-x"),
        "size-0": t(size=0),
        "size-huge": t(size=64 * 1024 * 1024),
        "sha-upper": t(manifest_sha256=sha.upper()),
        "path-dotdot": t(path="../x"),
        "path-upper": t(path="A.mpseal"),
        "counter-bool": t(counter=True),
        "twice": {**base, "targets": [target, target]},
        "type": {**base, "type": "mpseal-root"},
    }.items():
        out[f"payload-{name}"] = signed(doc)
    return out


# -- sealed secrets ---------------------------------------------------------------------------


def secrets() -> dict[str, bytes]:
    valid = secretbox.seal(b'{"wifi_password": "hunter2"}', HWID)
    # Valid MAC over a ciphertext whose padding is wrong (made for this device).
    salt, iv = bytes(16), bytes(16)
    key, mac_key = secretbox._keys(HWID, salt)
    enc = Cipher(algorithms.AES(key), modes.CBC(iv)).encryptor()
    body = b"MPSS\x01\0\0\0" + salt + iv + enc.update(b"x" * 15 + b"\x11") + enc.finalize()
    bad_pad = body + hmac.new(mac_key, body, hashlib.sha256).digest()
    big = secretbox.seal(b"x" * 3900, HWID)
    return {
        "valid": valid,
        "other-device": secretbox.seal(b"{}", "0000000000000000"),
        "flip-mac": flip(valid, len(valid) - 1),
        "flip-ciphertext": flip(valid, 45),
        "flip-magic": flip(valid, 0),
        "version-2": valid[:4] + b"\x02" + valid[5:],
        "truncated": valid[:-1],
        "bad-padding": bad_pad,
        "largest": big,
        "oversized": big + bytes(4096 - len(big) + 1),
        "tiny": valid[:60],
    }


# -- unlock tokens ------------------------------------------------------------------------------


def unlocks(f: Fleet) -> dict[str, bytes]:
    base = {"type": "mpseal-unlock", "device": HWID, "n": USED + 1, "profile": "dev"}

    def signed(doc: dict, signers=None) -> bytes:
        return envelope.seal(
            unlocktoken.MAGIC, jsondoc.dumps(doc), list(signers or [f.root])
        ).encode()

    valid = signed(base)
    return {
        "valid": valid,
        "field": signed({**base, "profile": "field"}),
        "used": signed({**base, "n": USED}),
        "other-device": signed({**base, "device": "ab"}),
        "sealed": signed({**base, "profile": "sealed"}),
        "type": signed({**base, "type": "x"}),
        "n-bool": signed({**base, "n": True}),
        "n-text": signed({**base, "n": "3"}),
        "by-release-key": signed(base, [f.rel[0]]),
        "flip": flip(valid, len(valid) - 3),
        "reserved": valid[:6] + b"\x01" + valid[7:],
        "truncated": valid[:-1],
        "device-long": signed({**base, "device": "a" * 65}),
        "oversized": signed({**base, "pad": "p" * 2100}),
    }


# -- both sides ---------------------------------------------------------------------------------


def host_verdict(kind: str, data: bytes, f: Fleet) -> str:
    try:
        if kind == "artifact":
            art_mod.verify(data, f.trust, board="unix")
        elif kind == "root":
            trustroot.verify_root_chain(f.trust, [data])
        elif kind == "timestamp":
            updatemeta.parse_timestamp(data, f.trust, now=NOW, channel="stable")
        elif kind == "secrets":
            secretbox.open_(data, HWID)
        elif kind == "unlock":
            unlocktoken.parse(data, f.trust, HWID, USED)
        elif kind == "slot":
            blob, record = encrypted.split_slot(data)
            man = art_mod.verify(blob, f.trust, board="unix").manifest
            key = encrypted.unwrap(record, HWID, man.image_sha256)
            encrypted.open_table(man, art_mod.decode(blob).image, key)
        return "ok"
    except MpsealError:
        return "refused"
    except Exception as e:  # noqa: BLE001 - a crash is a verdict the test reports
        return f"crash {type(e).__name__} {e}"


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict, Fleet]:
    f = Fleet()
    folder = tmp_path_factory.mktemp("corpus")
    (folder / "root.mpsr").write_bytes(f.trust.raw)
    items: dict[str, tuple[str, bytes]] = {}
    for kind, group in (
        ("artifact", artifacts(f)),
        ("root", roots(f)),
        ("timestamp", timestamps(f)),
        ("secrets", secrets()),
        ("unlock", unlocks(f)),
        ("slot", slots(f)),
    ):
        for name, data in group.items():
            items[f"{kind}-{name}"] = (kind, data)
    for name, (_, data) in items.items():
        (folder / name).write_bytes(data)
    (folder / "index.json").write_text(json.dumps([[n, k] for n, (k, _) in items.items()]))
    return folder, items, f


def test_host_and_device_give_the_same_verdict_on_every_item(corpus) -> None:
    folder, items, f = corpus
    script = folder.parent / "runner.py"
    script.write_text(
        RUNNER % {"runtime": str(vm.runtime_dir()), "now": NOW, "hwid": HWID, "used": USED}
    )
    res = vm.run(script, [str(folder)], timeout=600)
    assert res.replies(), res.stdout[-2000:] + res.stderr[-2000:]
    device = dict(res.replies()[-1])  # type: ignore[arg-type]
    host = {name: host_verdict(kind, data, f) for name, (kind, data) in items.items()}
    differ = {n: (host[n], device.get(n)) for n in items if host[n] != device.get(n)}
    assert not differ, differ
    assert not [n for n, v in host.items() if v.startswith("crash")]
    # The corpus is not trivial: each kind has valid items and refusals.
    for kind in ("artifact", "root", "timestamp", "secrets", "unlock", "slot"):
        verdicts = {host[n] for n, (k, _) in items.items() if k == kind}
        assert verdicts == {"ok", "refused"}, (kind, verdicts)
    assert host["artifact-valid"] == host["root-valid"] == host["timestamp-valid"] == "ok"
    assert host["artifact-bad-then-good"] == "refused"  # one rule on both sides
    assert host["slot-valid"] == host["slot-files-other-valid"] == "ok"
    # The file index: only the well-formed one (and a release without one) passes.
    index_ok = {"artifact-index-sorted", "artifact-manifest-files-null"}
    for n in items:
        if n.startswith(("artifact-index-", "artifact-manifest-files-")):
            assert host[n] == ("ok" if n in index_ok else "refused"), n
    with capsys_disabled():
        print(
            f"\ndifferential corpus: {len(items)} items, "
            f"{sum(v == 'ok' for v in host.values())} accepted, same verdict on both sides"
        )


def capsys_disabled():  # print the corpus size even under -q
    import contextlib

    return contextlib.nullcontext()
