"""The timestamp and the trust root chain on the host: every refusal a device makes, and fuzzing."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from key_support import Keys

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.errors import (
    BadDataError,
    FormatError,
    PolicyError,
    SignatureError,
    UsageError,
)
from mpseal.formats import artifact, envelope, jsondoc, trustroot
from mpseal.formats.manifest import Manifest
from mpseal.formats.trustroot import TrustRoot
from mpseal.formats.updatemeta import (
    MAGIC,
    Target,
    Timestamp,
    parse_timestamp,
    sign_timestamp,
)
from mpseal.limits import Limits

DOCS = Path(__file__).resolve().parents[1] / "docs" / "updates.md"
NOW = 1_795_000_000
DAY = 86_400
SHA = "ab" * 32


@pytest.fixture(scope="module")
def keys() -> Keys:
    return Keys()


def target(app: str = "hello", board: str = "esp32", path: str | None = None) -> Target:
    return Target(
        app,
        board,
        "1.2.0",
        4,
        SHA,
        123_456,
        f"artifacts/{'cd' * 32}.mpseal" if path is None else path,
    )


def stamp(
    version: int = 42,
    targets: tuple[Target, ...] | None = None,
    expires: int = NOW + DAY,
    root_version: int = 1,
) -> Timestamp:
    return Timestamp(
        version, NOW - 60, expires, root_version, (target(),) if targets is None else targets
    )


def raw_envelope(payload: dict, signers: list) -> bytes:
    """A timestamp envelope around any payload: what an attacker holding a key could send."""
    return envelope.seal(MAGIC, jsondoc.dumps(payload), signers).encode()


def test_round_trip_and_target_lookup(keys: Keys) -> None:
    ts = stamp(targets=(target(), target(board="rp2")))
    got = parse_timestamp(sign_timestamp(ts, keys.timestamp), keys.trust, now=NOW)
    assert got == ts
    assert got.target("hello", "rp2") == target(board="rp2")
    assert got.target("hello", "stm32") is None


def test_sizes_stated_in_the_contract(keys: Keys) -> None:
    """docs/updates.md states the size of a timestamp with 1 and with 8 targets."""
    one = len(sign_timestamp(stamp(targets=(target(),)), keys.timestamp))
    eight = len(
        sign_timestamp(
            stamp(targets=tuple(target(app=f"app{i}") for i in range(8))), keys.timestamp
        )
    )
    text = DOCS.read_text()
    assert f"1 target: {one} bytes" in text and f"8 targets: {eight} bytes" in text


def test_unsigned_timestamp_refused(keys: Keys) -> None:
    raw = raw_envelope(jsondoc.loads(stamp().payload(), "t"), [])
    with pytest.raises(SignatureError, match="timestamp is not signed"):
        parse_timestamp(raw, keys.trust, now=NOW)


@pytest.mark.parametrize("who", ["release", "stranger", "root"])
def test_timestamp_by_another_key_refused(keys: Keys, who: str) -> None:
    signer = {"release": keys.release, "root": keys.root, "stranger": PrivateKeySigner.generate()}[
        who
    ]
    with pytest.raises(SignatureError, match="signed by unknown key"):
        parse_timestamp(sign_timestamp(stamp(), [signer]), keys.trust, now=NOW)


def test_altered_timestamp_refused(keys: Keys) -> None:
    raw = sign_timestamp(stamp(), keys.timestamp).replace(b'"version":42', b'"version":99')
    with pytest.raises(SignatureError, match="does not verify"):
        parse_timestamp(raw, keys.trust, now=NOW)


def test_below_threshold_refused() -> None:
    two = Keys(timestamp_keys=2, threshold=2)
    with pytest.raises(SignatureError, match="1 valid timestamp signatures, the threshold is 2"):
        parse_timestamp(sign_timestamp(stamp(), two.timestamp[:1]), two.trust, now=NOW)
    # The same key twice is one signature.
    twice = [two.timestamp[0], two.timestamp[0]]
    with pytest.raises(SignatureError, match="threshold is 2"):
        parse_timestamp(sign_timestamp(stamp(), twice), two.trust, now=NOW)
    assert parse_timestamp(sign_timestamp(stamp(), two.timestamp), two.trust, now=NOW).version == 42


def test_root_without_timestamp_role_verifies_no_timestamp(keys: Keys) -> None:
    doc = trustroot.build(1, {"root": [keys.root.public_key], "release": [keys.release.public_key]})
    bare = trustroot.parse(trustroot.sign(doc, [keys.root]))
    with pytest.raises(SignatureError, match="no timestamp role"):
        parse_timestamp(sign_timestamp(stamp(), keys.timestamp), bare, now=NOW)


def test_new_timestamp_expired_freeze_attack(keys: Keys) -> None:
    raw = sign_timestamp(stamp(expires=NOW), keys.timestamp)
    assert parse_timestamp(raw, keys.trust, now=NOW).expires == NOW  # valid up to the second
    with pytest.raises(PolicyError, match=r"expired .*a frozen or stale server"):
        parse_timestamp(raw, keys.trust, now=NOW + 1)
    with pytest.raises(PolicyError, match="expired"):  # default: this machine's clock (2026+)
        old = Timestamp(42, 1_600_000_000, 1_700_000_000, 1, (target(),))
        parse_timestamp(sign_timestamp(old, keys.timestamp), keys.trust)


def test_older_timestamp_version_replay_refused(keys: Keys) -> None:
    raw = sign_timestamp(stamp(version=41), keys.timestamp)
    assert parse_timestamp(raw, keys.trust, now=NOW, min_version=41).version == 41
    with pytest.raises(PolicyError, match="version 41 is older than 42 already seen: replay"):
        parse_timestamp(raw, keys.trust, now=NOW, min_version=42)


def test_timestamp_naming_a_newer_trust_root_refused(keys: Keys) -> None:
    raw = sign_timestamp(stamp(root_version=2), keys.timestamp)
    with pytest.raises(PolicyError, match="names trust root 2, newer than this one"):
        parse_timestamp(raw, keys.trust, now=NOW)


def test_max_timestamp_length_endless_data(keys: Keys) -> None:
    raw = sign_timestamp(stamp(), keys.timestamp)
    with pytest.raises(FormatError, match="larger than the 8192-byte limit"):
        parse_timestamp(raw + b"\0" * (8193 - len(raw)), keys.trust, now=NOW)
    with pytest.raises(FormatError, match="unexpected bytes after the signatures"):
        parse_timestamp(raw + b"\0", keys.trust, now=NOW)
    many = tuple(target(app=f"app{i}") for i in range(40))  # ~254 bytes each
    with pytest.raises(UsageError, match="over the 8192-byte limit"):
        sign_timestamp(stamp(targets=many), keys.timestamp)


def test_too_many_targets_refused(keys: Keys) -> None:
    roomy = Limits(timestamp_max_length=64 * 1024)
    many = tuple(target(app=f"app{i}") for i in range(65))
    with pytest.raises(UsageError, match="at most 64 targets"):
        sign_timestamp(stamp(targets=many), keys.timestamp, limits=roomy)
    raw = raw_envelope(jsondoc.loads(stamp(targets=many).payload(), "t"), keys.timestamp)
    with pytest.raises(FormatError, match="more than 64 entries"):
        parse_timestamp(raw, keys.trust, now=NOW, limits=roomy)


HOSTILE_PATHS = [
    "../a.mpseal",
    "artifacts/../../etc/passwd",
    "/abs.mpseal",
    "a\\b.mpseal",
    "artifacts/\u00f6.mpseal",
    "",
    "a//b",
    "./a",
    "artifacts/",
    "A.mpseal",
    "a b",
    "a?x=1",
    "a%2e%2e/b",
    "http://evil/a",
    "a" * 129,
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
def test_hostile_target_paths_refused(keys: Keys, path: str) -> None:
    ts = stamp(targets=(target(path=path),))
    with pytest.raises(UsageError, match="path"):
        sign_timestamp(ts, keys.timestamp)
    raw = raw_envelope(jsondoc.loads(ts.payload(), "t"), keys.timestamp)
    with pytest.raises(FormatError, match="path"):
        parse_timestamp(raw, keys.trust, now=NOW)


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("type", "mpseal-root", "not of type mpseal-timestamp"),
        ("spec", 2, "'spec' is out of range"),
        ("version", 0, "'version' is out of range"),
        ("version", True, "'version' has the wrong type"),
        ("expires", "soon", "'expires' has the wrong type"),
        ("targets", {}, "'targets' has the wrong type"),
        ("issued", NOW + 2 * DAY, "expires before it was issued"),
    ],
)
def test_malformed_fields_refused(keys: Keys, field: str, value: object, message: str) -> None:
    doc = jsondoc.loads(stamp().payload(), "t")
    doc[field] = value
    with pytest.raises(FormatError, match=message):
        parse_timestamp(raw_envelope(doc, keys.timestamp), keys.trust, now=NOW)


def test_two_targets_for_one_board_refused(keys: Keys) -> None:
    doc = jsondoc.loads(stamp().payload(), "t")
    doc["targets"] = doc["targets"] * 2
    with pytest.raises(FormatError, match="names app 'hello' on board 'esp32' twice"):
        parse_timestamp(raw_envelope(doc, keys.timestamp), keys.trust, now=NOW)


def make_artifact(keys: Keys, board: str = "unix") -> bytes:
    image = b"romfs image bytes" * 10
    man = Manifest(
        app="hello",
        version="2.0",
        counter=3,
        board=board,
        port="unix",
        mpy_version="6.3",
        arch="x64",
        image_sha256=hashlib.sha256(image).hexdigest(),
        image_size=len(image),
    )
    return artifact.create(man, image, [keys.release]).encode()


def test_target_for_artifact(keys: Keys) -> None:
    blob = make_artifact(keys)
    t = Target.for_artifact(blob, root=keys.trust)
    art = artifact.decode(blob)
    assert (t.app, t.board, t.version, t.counter) == ("hello", "unix", "2.0", 3)
    assert t.manifest_sha256 == hashlib.sha256(art.manifest_bytes).hexdigest()
    assert t.matches_manifest(art.manifest_bytes) and not t.matches_manifest(b"{}")
    assert t.size == len(blob)
    assert t.path == f"artifacts/{hashlib.sha256(blob).hexdigest()}.mpseal"
    assert Target.for_artifact(blob, "a/b.mpseal").path == "a/b.mpseal"
    with pytest.raises(FormatError, match="not a plain relative path"):
        Target.for_artifact(blob, "../b.mpseal")
    with pytest.raises(SignatureError, match="unknown key"):
        Target.for_artifact(blob, root=Keys().trust)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_fuzz_random_bytes_raise_only_mpseal_errors(data: bytes) -> None:
    keys = _FUZZ_KEYS
    for blob in (data, MAGIC + data, MAGIC + b"\x01\x00\x00\x00" + data):
        with pytest.raises(BadDataError):
            parse_timestamp(blob, keys.trust, now=NOW)


@settings(max_examples=300, deadline=None)
@given(st.data())
def test_fuzz_mutated_timestamps_raise_only_mpseal_errors(data: st.DataObject) -> None:
    good = _FUZZ_GOOD
    pos = data.draw(st.integers(0, len(good) - 1))
    kind = data.draw(st.sampled_from(["flip", "cut", "insert"]))
    if kind == "flip":
        blob = good[:pos] + bytes([good[pos] ^ data.draw(st.integers(1, 255))]) + good[pos + 1 :]
    elif kind == "cut":
        blob = good[:pos]
    else:
        blob = good[:pos] + data.draw(st.binary(min_size=1, max_size=8)) + good[pos:]
    with pytest.raises(BadDataError):
        parse_timestamp(blob, _FUZZ_KEYS.trust, now=NOW)


@settings(max_examples=200, deadline=None)
@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=8),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=6), c, max_size=3),
        max_leaves=12,
    ),
    st.sampled_from(["version", "issued", "expires", "root_version", "targets", "type"]),
)
def test_fuzz_signed_hostile_payloads_raise_only_mpseal_errors(value: object, field: str) -> None:
    """A thief of the timestamp key can sign anything: the parser still only refuses."""
    doc = jsondoc.loads(stamp().payload(), "t")
    doc[field] = value
    try:
        parse_timestamp(raw_envelope(doc, _FUZZ_KEYS.timestamp), _FUZZ_KEYS.trust, now=NOW)
    except BadDataError:
        pass


_FUZZ_KEYS = Keys()
_FUZZ_GOOD = sign_timestamp(stamp(), _FUZZ_KEYS.timestamp)


# -- the trust root chain ------------------------------------------------------------------


def next_root(old: TrustRoot, signers: list, version: int | None = None, **role_keys) -> bytes:
    roles = {n: [old.keys[k] for k in r.keyids] for n, r in old.roles.items()}
    roles.update({n: [k.public_key for k in ks] for n, ks in role_keys.items()})
    doc = trustroot.build(version or old.version + 1, roles)
    return envelope.seal(trustroot.MAGIC, doc.payload(), signers).encode()


def test_root_chain_fast_forward(keys: Keys) -> None:
    ts2 = PrivateKeySigner.generate()
    root3 = PrivateKeySigner.generate()
    v2 = next_root(keys.trust, [keys.root], timestamp=[ts2])
    v3 = next_root(trustroot.parse(v2), [keys.root, root3], root=[root3])
    newest = trustroot.verify_root_chain(keys.trust, [v2, v3])
    assert newest.version == 3 and newest.roles["root"].keyids == (root3.public_key.keyid,)
    raw = sign_timestamp(stamp(root_version=3), [ts2])
    assert parse_timestamp(raw, newest, now=NOW).root_version == 3
    with pytest.raises(SignatureError, match="unknown key"):  # the old root knows no ts2
        parse_timestamp(raw, keys.trust, now=NOW)


def test_root_rotation_not_signed_by_the_old_root_refused(keys: Keys) -> None:
    thief = PrivateKeySigner.generate()
    v2 = next_root(keys.trust, [thief], root=[thief])  # self-signed: valid on its own
    assert trustroot.parse(v2).version == 2
    with pytest.raises(
        SignatureError, match="not signed by a threshold of the root keys of version 1"
    ):
        trustroot.verify_root_chain(keys.trust, [v2])


def test_root_rotation_not_signed_by_the_new_root_refused(keys: Keys) -> None:
    new = PrivateKeySigner.generate()
    v2 = next_root(keys.trust, [keys.root], root=[new])
    with pytest.raises(SignatureError, match="unknown key"):
        trustroot.verify_root_chain(keys.trust, [v2])
    with pytest.raises(UsageError, match="cannot sign trust root 2"):
        trustroot.sign_update(
            keys.trust,
            trustroot.parse(next_root(keys.trust, [keys.root, new], root=[new])),
            [keys.root],
        )


@pytest.mark.parametrize("version", [1, 3])
def test_root_chain_skipped_or_replayed_version_refused(keys: Keys, version: int) -> None:
    raw = next_root(keys.trust, [keys.root], version=version)
    with pytest.raises(PolicyError, match=re.escape(f"version {version} does not follow 1")):
        trustroot.verify_root_chain(keys.trust, [raw])
