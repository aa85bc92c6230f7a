"""The timestamp ``timestamp.mpst``: which releases are current, signed online, with an expiry.

An envelope (magic ``MPST``, see envelope.py) whose payload is UTF-8 JSON with
sorted keys and no spaces (docs/updates.md is the contract):

    {"type": "mpseal-timestamp", "spec": 1, "version": 42, "channel": "stable",
     "issued": 1795000000, "expires": 1795086400, "root_version": 3,
     "targets": [{"app": "hello", "board": "esp32", "version": "1.2.0", "counter": 4,
                  "manifest_sha256": "<64 hex>", "size": 123456,
                  "path": "artifacts/<sha256 of the file>.mpseal"}]}

signed by a threshold of the trust root's ``timestamp`` role. At most one
target per (app, board): a channel is a separate timestamp file, and names itself
(``channel``), so a mirror cannot move a device onto another channel's timestamp.

Threat tier T1: a device that accepts only a fresh timestamp naming the exact
manifest stops freeze (expiry), replay (monotonic version) and mix-and-match
(manifest SHA-256 per board). T2: the timestamp key is online; a thief can freeze
devices (a huge ``version`` or ``issued``) only until the trust root rotates the
timestamp key (devices then forget what the old key made them remember), and can
only re-offer releases the release key signed for the device's own app and board.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from dataclasses import dataclass

from mpseal.crypto.keys import Signer
from mpseal.errors import FormatError, PolicyError, SignatureError, UsageError
from mpseal.formats import artifact as artifact_mod
from mpseal.formats import envelope, jsondoc, manifest, names
from mpseal.formats.trustroot import TrustRoot
from mpseal.limits import DEFAULT_LIMITS, Limits

MAGIC = b"MPST"
DOC_TYPE = "mpseal-timestamp"
ROLE = "timestamp"
VERSION_MAX = 2**53 - 1  # exact in every JSON reader
TIME_MAX = 2**40  # unix seconds: year ~36800
MAX_SKEW = 86400  # a timestamp issued further ahead of the clock is refused (as on the device)


def check_target_path(path: object, limits: Limits = DEFAULT_LIMITS) -> str:
    """A target's ``path``: relative, '/'-separated, ``[a-z0-9._-]`` segments, no '.' or '..'.

    It becomes part of a URL and a device file name, so nothing else gets through.
    """
    if not isinstance(path, str) or not 0 < len(path) <= limits.target_path_max_length:
        raise FormatError(
            f"target path is empty, not text or longer than {limits.target_path_max_length}"
        )
    for segment in path.split("/"):
        if segment in ("", ".", "..") or not names.TARGET_SEGMENT.fullmatch(segment):
            raise FormatError(
                f"target path {path[:60]!r} is not a plain relative path ([a-z0-9._-] and /)"
            )
    return path


def check_board(board: str) -> str:
    if not names.BOARD.fullmatch(board):
        raise FormatError(f"board name {board[:40]!r} must be 1-32 of letters, digits, _ . -")
    return board


@dataclass(frozen=True)
class Target:
    """One release a timestamp offers: the artifact at ``path``, pinned by its manifest hash."""

    app: str
    board: str
    version: str
    counter: int
    manifest_sha256: str  # SHA-256 of the artifact's exact manifest bytes (the signed bytes)
    size: int  # byte length of the whole artifact file
    path: str  # where the server serves it, relative to /v1/

    @classmethod
    def for_artifact(
        cls,
        blob: bytes,
        path: str | None = None,
        root: TrustRoot | None = None,
        limits: Limits = DEFAULT_LIMITS,
    ) -> Target:
        """The target naming artifact file ``blob``.

        ``path`` defaults to ``artifacts/<SHA-256 of the file>.mpseal``. With ``root``
        the artifact is fully verified first (signature, hash, size); without it
        only its structure and manifest are read.
        """
        if root is not None:
            art = artifact_mod.verify(blob, root, limits=limits).artifact
        else:
            art = artifact_mod.decode(blob, limits)
        man = manifest.parse(art.manifest_bytes, limits)
        if path is None:
            path = f"artifacts/{hashlib.sha256(blob).hexdigest()}.mpseal"
        return cls(
            app=man.app,
            board=man.board,
            version=man.version,
            counter=man.counter,
            manifest_sha256=hashlib.sha256(art.manifest_bytes).hexdigest(),
            size=len(blob),
            path=check_target_path(path, limits),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            "app": self.app,
            "board": self.board,
            "version": self.version,
            "counter": self.counter,
            "manifest_sha256": self.manifest_sha256,
            "size": self.size,
            "path": self.path,
        }

    def matches_manifest(self, manifest_bytes: bytes) -> bool:
        """True if ``manifest_bytes`` are exactly the manifest this target names."""
        return hashlib.sha256(manifest_bytes).hexdigest() == self.manifest_sha256


@dataclass(frozen=True)
class Timestamp:
    version: int
    issued: int
    expires: int
    root_version: int
    targets: tuple[Target, ...] = ()
    channel: str = "stable"

    def payload(self) -> bytes:
        return jsondoc.dumps(
            {
                "type": DOC_TYPE,
                "spec": 1,
                "version": self.version,
                "channel": self.channel,
                "issued": self.issued,
                "expires": self.expires,
                "root_version": self.root_version,
                "targets": [t.to_dict() for t in self.targets],
            }
        )

    def target(self, app: str, board: str) -> Target | None:
        """The release offered for ``app`` on ``board``, if any."""
        for t in self.targets:
            if t.app == app and t.board == board:
                return t
        return None


def sign_timestamp(
    ts: Timestamp, signers: Sequence[Signer], limits: Limits = DEFAULT_LIMITS
) -> bytes:
    """Seal ``ts`` with the timestamp-role ``signers``; returns the ``.mpst`` file bytes.

    Refuses (``UsageError``) a timestamp devices would refuse for its shape: over
    the size or target limits, a bad field, or issued after it expires.
    """
    if not signers:
        raise UsageError("a timestamp needs at least one timestamp-role signer")
    if len(ts.targets) > limits.timestamp_max_targets:
        raise UsageError(
            f"a timestamp names at most {limits.timestamp_max_targets} targets, "
            f"not {len(ts.targets)}"
        )
    payload = ts.payload()
    try:
        _parse_payload(payload, limits)
    except FormatError as e:
        raise UsageError(f"cannot sign this timestamp: {e}") from None
    raw = envelope.seal(MAGIC, payload, list(signers)).encode()
    if len(raw) > limits.timestamp_max_length:
        raise UsageError(
            f"the signed timestamp is {len(raw)} bytes, over the "
            f"{limits.timestamp_max_length}-byte limit devices accept"
        )
    return raw


def parse_timestamp(
    data: bytes,
    root: TrustRoot,
    now: int | None = None,
    min_version: int = 0,
    limits: Limits = DEFAULT_LIMITS,
    channel: str | None = None,
) -> Timestamp:
    """Everything a device checks, on the host.

    In order: size and structure, a threshold of ``root``'s timestamp role over
    the exact payload, the fields, ``root_version`` not newer than ``root``,
    expiry against ``now`` (unix seconds; default: this machine's clock), and
    ``version >= min_version`` (the newest a device has seen).
    """
    if len(data) > limits.timestamp_max_length:
        raise FormatError(f"timestamp is larger than the {limits.timestamp_max_length}-byte limit")
    env = envelope.decode(
        data, MAGIC, "timestamp", limits.timestamp_max_length, limits.signatures_max_count
    )
    if ROLE not in root.roles:
        raise SignatureError(
            "the trust root has no timestamp role, so no timestamp can verify; "
            "add one with 'mpseal keys add --role timestamp'"
        )
    root.verify(ROLE, env.payload, env.signatures, "timestamp")
    ts = _parse_payload(env.payload, limits)
    if ts.root_version > root.version:
        raise PolicyError(
            f"timestamp names trust root {ts.root_version}, newer than this one "
            f"({root.version}): update the trust root first"
        )
    if channel is not None and ts.channel != channel:
        raise PolicyError(f"timestamp is for channel {ts.channel}, not {channel}")
    now = int(time.time()) if now is None else now
    if ts.issued > now + MAX_SKEW:
        raise PolicyError(
            f"timestamp version {ts.version} is issued {ts.issued - now} s in the future: refused"
        )
    if ts.expires < now:
        raise PolicyError(
            f"timestamp version {ts.version} expired at {ts.expires} (now {now}): "
            "a frozen or stale server; refused"
        )
    if ts.version < min_version:
        raise PolicyError(
            f"timestamp version {ts.version} is older than {min_version} "
            "already seen: replay refused"
        )
    return ts


def _parse_payload(payload: bytes, limits: Limits) -> Timestamp:
    f = jsondoc.Fields(jsondoc.loads(payload, "timestamp"), "timestamp")
    if f.req_str("type") != DOC_TYPE:
        raise FormatError("timestamp payload is not of type mpseal-timestamp")
    f.int("spec", 1, 1)
    channel = f.req_str("channel", 32)
    if not names.CHANNEL.fullmatch(channel):
        raise FormatError(f"timestamp channel {channel!r} is not 1-32 of a-z 0-9 _ -")
    issued = f.int("issued", 0, TIME_MAX)
    expires = f.int("expires", 0, TIME_MAX)
    if expires < issued:
        raise FormatError("timestamp expires before it was issued")
    targets: list[Target] = []
    seen: set[tuple[str, str]] = set()
    for item in f.list("targets", limits.timestamp_max_targets):
        if not isinstance(item, dict):
            raise FormatError("timestamp target is not a JSON object")
        t = _parse_target(jsondoc.Fields(item, "timestamp target"), limits)
        if (t.app, t.board) in seen:
            raise FormatError(f"timestamp names app {t.app!r} on board {t.board!r} twice")
        seen.add((t.app, t.board))
        targets.append(t)
    return Timestamp(
        version=f.int("version", 1, VERSION_MAX),
        issued=issued,
        expires=expires,
        root_version=f.int("root_version", 1, 2**31),
        targets=tuple(targets),
        channel=channel,
    )


def _parse_target(f: jsondoc.Fields, limits: Limits) -> Target:
    return Target(
        app=manifest.check_app_name(f.req_str("app", 64)),
        board=check_board(f.req_str("board", 32)),
        version=manifest.check_version(f.req_str("version", 32)),
        counter=f.int("counter", 0, 2**31 - 1),
        manifest_sha256=f.hex("manifest_sha256", 32),
        size=f.int("size", 1, limits.artifact_max_length),
        path=check_target_path(f.req_str("path", limits.target_path_max_length), limits),
    )
