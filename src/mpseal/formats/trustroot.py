"""The trust root a device carries: which keys may sign for which role, and how many must.

It is an envelope (magic ``MPSR``) whose payload names the keys and roles and is
signed by a threshold of its own ``root`` role. Roles: ``root`` (offline, signs
this document), ``release`` (signs release manifests), and optionally
``timestamp`` (online freshness, used by the update server).

Threat tier: a device that checks release signatures against this root stops T1
(network, mirror). Keeping the root key offline, with thresholds, is what stops
T2 (a stolen online key cannot rewrite who is trusted).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from mpseal.crypto.keys import KEY_TYPE, PublicKey, Signer
from mpseal.errors import FormatError, PolicyError, SignatureError, UsageError
from mpseal.formats import envelope, jsondoc
from mpseal.formats.sigblock import SignatureEntry
from mpseal.limits import DEFAULT_LIMITS, Limits

MAGIC = b"MPSR"
DOC_TYPE = "mpseal-root"
ROLES = ("root", "release", "timestamp")
REQUIRED_ROLES = ("root", "release")
TLS_ANCHORS_MAX = 4  # server anchors a root may name (tried in order by the device)
TLS_ANCHOR_MAX_BYTES = 2048  # one DER certificate


@dataclass(frozen=True)
class Role:
    keyids: tuple[str, ...]
    threshold: int = 1


@dataclass(frozen=True)
class TrustRoot:
    version: int
    keys: dict[str, PublicKey]
    roles: dict[str, Role]
    raw: bytes = field(default=b"", compare=False, repr=False)  # the signed envelope as stored
    # DER certificates the device's TLS pins for the update server, in the order it tries
    # them (runtime/mpseal_ota.py); none: the device keeps its provisioned anchor file.
    tls_anchors: tuple[bytes, ...] = ()

    def role(self, name: str) -> Role:
        try:
            return self.roles[name]
        except KeyError:
            raise UsageError(f"the trust root has no {name!r} role") from None

    def payload(self) -> bytes:
        keys = {k: {"keytype": KEY_TYPE, "public": v.point.hex()} for k, v in self.keys.items()}
        roles = {
            n: {"keyids": list(r.keyids), "threshold": r.threshold} for n, r in self.roles.items()
        }
        doc: dict[str, object] = {
            "type": DOC_TYPE,
            "spec": 1,
            "version": self.version,
            "keys": keys,
            "roles": roles,
        }
        if self.tls_anchors:  # only then: roots without anchors keep their exact bytes
            doc["tls_anchors"] = [a.hex() for a in self.tls_anchors]
        return jsondoc.dumps(doc)

    def verify(
        self, role_name: str, payload: bytes, entries: list[SignatureEntry], what: str
    ) -> list[str]:
        """Check a threshold of ``role_name``'s keys signed ``payload``; return their keyids."""
        role = self.role(role_name)
        good: list[str] = []
        for entry in entries:
            if entry.keyid not in role.keyids or entry.keyid in good:
                continue
            try:
                self.keys[entry.keyid].verify(entry.signature, payload)
            except SignatureError:
                # As the device does (runtime/mpseal_release.check_threshold): a signature
                # by one of the role's keys that does not verify refuses the whole
                # document, even if others reach the threshold ([bad, good] is refused).
                raise SignatureError(
                    f"{what} signature by {role_name} key {entry.keyid[:16]} does not verify: "
                    f"the {what} was altered after signing"
                ) from None
            good.append(entry.keyid)
        if len(good) >= role.threshold:
            return good
        if not entries:
            raise SignatureError(f"{what} is not signed")
        if not good:
            raise SignatureError(
                f"{what} is signed by unknown key {entries[0].keyid[:16]}, not by a {role_name} key "
                "of this trust root (built by another project, or the wrong trust root)"
            )
        raise SignatureError(
            f"{what} has {len(good)} valid {role_name} signatures, the threshold is {role.threshold}"
        )


def check_tls_anchor(der: bytes) -> bytes:
    """One DER certificate (its outer SEQUENCE spans exactly the bytes), of bounded size:
    the same structural check the device makes (runtime/mpseal_release.py)."""
    if not 2 <= len(der) <= TLS_ANCHOR_MAX_BYTES or der[0] != 0x30:
        raise FormatError(
            f"a TLS anchor must be one DER certificate of at most {TLS_ANCHOR_MAX_BYTES} bytes"
        )
    n, i = der[1], 2
    if n & 0x80:
        k = n & 0x7F
        if k not in (1, 2) or len(der) < 2 + k:
            raise FormatError("a TLS anchor's DER length is malformed")
        n, i = int.from_bytes(der[2 : 2 + k], "big"), 2 + k
    if i + n != len(der):
        raise FormatError("a TLS anchor is not exactly one DER certificate")
    return der


def build(
    version: int,
    role_keys: dict[str, list[PublicKey]],
    thresholds: dict[str, int] | None = None,
    tls_anchors: Sequence[bytes] = (),
) -> TrustRoot:
    thresholds = thresholds or {}
    keys: dict[str, PublicKey] = {}
    roles: dict[str, Role] = {}
    for name, pubs in role_keys.items():
        if name not in ROLES:
            raise UsageError(f"unknown role {name!r}; roles are {', '.join(ROLES)}")
        for p in pubs:
            keys[p.keyid] = p
        threshold = thresholds.get(name, 1)
        if not 1 <= threshold <= len(pubs):
            raise UsageError(f"role {name!r} threshold {threshold} needs 1..{len(pubs)}")
        roles[name] = Role(tuple(p.keyid for p in pubs), threshold)
    for name in REQUIRED_ROLES:
        if name not in roles:
            raise UsageError(f"a trust root needs a {name!r} role")
    if len(tls_anchors) > TLS_ANCHORS_MAX:
        raise UsageError(f"a trust root names at most {TLS_ANCHORS_MAX} TLS anchors")
    anchors = tuple(check_tls_anchor(bytes(a)) for a in tls_anchors)
    return TrustRoot(version, keys, roles, tls_anchors=anchors)


def sign(root: TrustRoot, signers: list[Signer]) -> bytes:
    """Seal ``root`` with the root-role ``signers``; returns the file bytes."""
    payload = root.payload()
    env = envelope.seal(MAGIC, payload, signers)
    raw = env.encode()
    # Prove the result verifies before anyone stores it.
    parse(raw)
    return raw


def parse(data: bytes, limits: Limits = DEFAULT_LIMITS) -> TrustRoot:
    """Decode a trust root and check it is signed by a threshold of its own root role."""
    return _parse(data, limits)[0]


def verify_root_chain(
    old_root: TrustRoot, new_roots: Sequence[bytes], limits: Limits = DEFAULT_LIMITS
) -> TrustRoot:
    """Step from ``old_root`` through ``new_roots`` (versions N+1, N+2, ...); return the last.

    Each step must be signed by a threshold of the previous root role and of its
    own root role, and be exactly one version newer: a thief of fewer than a
    threshold of root keys cannot rewrite who is trusted, and no version can be
    skipped or replayed. Raises ``SignatureError``, ``PolicyError`` or ``FormatError``.
    """
    current = old_root
    for data in new_roots:
        new, env = _parse(data, limits)
        if new.version != current.version + 1:
            raise PolicyError(
                f"trust root version {new.version} does not follow "
                f"{current.version}: only version {current.version + 1} may"
            )
        try:
            current.verify("root", env.payload, env.signatures, "new trust root")
        except SignatureError as e:
            raise SignatureError(
                f"trust root {new.version} is not signed by a threshold of the "
                f"root keys of version {current.version}: {e}"
            ) from None
        current = new
    return current


def sign_update(old_root: TrustRoot, new_root: TrustRoot, signers: Sequence[Signer]) -> bytes:
    """Seal ``new_root`` (version N+1) with ``signers``: a threshold of the old AND new root role.

    Returns the file bytes, proven to verify as the next step after ``old_root``.
    """
    if new_root.version != old_root.version + 1:
        raise UsageError(
            f"the next trust root after version {old_root.version} is "
            f"{old_root.version + 1}, not {new_root.version}"
        )
    raw = envelope.seal(MAGIC, new_root.payload(), list(signers)).encode()
    try:
        verify_root_chain(old_root, [raw])
    except SignatureError as e:
        raise UsageError(f"cannot sign trust root {new_root.version}: {e}") from None
    return raw


def _parse(data: bytes, limits: Limits) -> tuple[TrustRoot, envelope.Envelope]:
    env = envelope.decode(
        data, MAGIC, "trust root", limits.root_max_length, limits.signatures_max_count
    )
    f = jsondoc.Fields(jsondoc.loads(env.payload, "trust root"), "trust root")
    if f.req_str("type") != DOC_TYPE:
        raise FormatError("trust root payload is not of type mpseal-root")
    f.int("spec", 1, 1)
    version = f.int("version", 1, 2**31)
    keys: dict[str, PublicKey] = {}
    kf = f.obj("keys")
    for keyid in kf.keys():
        entry = kf.obj(keyid)
        if entry.req_str("keytype") != KEY_TYPE:
            raise FormatError(f"trust root key {keyid[:16]} is not {KEY_TYPE}")
        pub = PublicKey.from_hex(entry.hex("public", 65))
        if pub.keyid != keyid:
            raise FormatError(f"trust root key id {keyid[:16]} does not match its public key")
        keys[keyid] = pub
    roles: dict[str, Role] = {}
    rf = f.obj("roles")
    for name in rf.keys():
        if name not in ROLES:
            raise FormatError(f"trust root names unknown role {name!r}")
        r = rf.obj(name)
        keyids = r.list("keyids", limits.signatures_max_count)
        if not all(isinstance(k, str) and k in keys for k in keyids) or not keyids:
            raise FormatError(f"trust root role {name!r} names keys it does not define")
        roles[name] = Role(tuple(keyids), r.int("threshold", 1, len(keyids)))
    for name in REQUIRED_ROLES:
        if name not in roles:
            raise FormatError(f"trust root has no {name!r} role")
    anchors: list[bytes] = []
    if "tls_anchors" in f.keys():
        listed = f.list("tls_anchors", TLS_ANCHORS_MAX)
        for a in listed:
            if (
                not isinstance(a, str)
                or not a
                or len(a) % 2
                or len(a) > 2 * TLS_ANCHOR_MAX_BYTES
                or not set(a) <= set("0123456789abcdef")
            ):
                raise FormatError("trust root tls_anchors entry is not lowercase hex DER")
            anchors.append(check_tls_anchor(bytes.fromhex(a)))
        if not anchors:
            raise FormatError("trust root tls_anchors is empty")
    root = TrustRoot(version, keys, roles, raw=bytes(data), tls_anchors=tuple(anchors))
    root.verify("root", env.payload, env.signatures, "trust root")
    return root, env
