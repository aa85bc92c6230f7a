"""Factory provisioning: give each device its own identity, secrets, trust root and guard.

For one device, in this order (each step named, so an interruption is visible):

    (probe)    the firmware is probed first (device/probe.py): a board that cannot run
               the guard, the release or the secrets is refused before anything else
    read-id    read the hardware id (``machine.unique_id()``) over the transport
    issue      a new P-256 key and certificate for that id (never reused, never in the
               firmware image); recorded in the registry *before* anything is written to
               the device, so no device can hold a key the registry does not know
    write      identity (DER), CA and server anchor, config, sealed secrets, trust root,
               the boot guard: each file written atomically (tmp + rename)
    mark       /mpseal/id/provisioned.json, written last, names the certificate: a
               device is fully provisioned exactly when this marker matches the registry
    stage      (optional) a release artifact handed to the device's guard
    activate   the registry marks the device active (the update server accepts it)

Re-running is safe: a device whose marker matches its active registry entry is
skipped; any other (new, interrupted, or half-written) device is redone from
``issue`` with a fresh key, and its older certificates are revoked.

Threat tiers: unique keys limit a leak to one device, which can be revoked (T1/T2
at the server). Sealed secrets stop T0 (copied files); see crypto/secretbox.py.
The private key travels from this host to the device once, over the factory's
cable: a host that is compromised during provisioning leaks the keys it makes.

With ``keygen="device"`` (``--keygen device``) the device makes its own key instead
(device/keygen.py: os.urandom, RFC 6979 signing in MicroPython) and sends a CSR; the
host checks it and issues the certificate for its public key, so no private key ever
exists on the host. The order becomes: the old marker and key file are removed, the
device makes a fresh key and CSR, then ``issue`` records the certificate before it is
written: a device may then hold a key the registry does not know, but never a
certificate for one. Signing on the device is not constant-time (docs/certificates.md).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import hashlib
import json
import secrets as secrets_mod
from collections.abc import Callable
from dataclasses import dataclass, field
from secrets import token_urlsafe

from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding

from mpseal.crypto import secretbox
from mpseal.device.guard_install import guard_files, place_guard_rom, stage_artifact
from mpseal.device.install import SLOT_FILES, check, rom_partition
from mpseal.device.keygen import device_csr
from mpseal.device.probe import BoardFacts, needs_for
from mpseal.device.transport import DeviceError, Transport
from mpseal.errors import BadDataError, MpsealError, UsageError
from mpseal.fleet.registry import CertRecord, Identity, Registry, token_hash
from mpseal.formats import artifact as artifact_mod
from mpseal.formats import encrypted
from mpseal.pki.ca import IssuingCa
from mpseal.pki.certs import LeafRequest, generate_key, issue, key_pem_der

STEPS = ("read-id", "issue", "write", "mark", "stage", "activate")  # + "keygen" (device)
ID_DIR = "/mpseal/id"
MARKER = f"{ID_DIR}/provisioned.json"
CERT = f"{ID_DIR}/device.der"
KEY = f"{ID_DIR}/device.key.der"
CA_CERT = f"{ID_DIR}/ca.der"
ANCHOR = f"{ID_DIR}/server-anchor.der"
CONFIG = "/mpseal/config.json"
SECRETS = "/mpseal/secrets.bin"
INCOMING = "/mpseal/incoming.mpseal"
TOKEN_SECRET = "device_token"
MARKER_LIMIT = 1024

# Reads machine.unique_id() (or the virtual board's id file) as hex; old firmware too.
READ_ID = """
try:
    import machine
    _u = machine.unique_id()
    print(''.join('%02x' % b for b in _u))
except (ImportError, AttributeError):
    print(open('/mpseal/sim-id').read().strip())
"""

FLAT_PROBE = "import os\nprint(hasattr(os, 'mkdir'))"

StepHook = Callable[[str, str], None]  # (hardware id or "", step) -> None


@dataclass(frozen=True)
class ProvisionPlan:
    board: str
    profile: str
    trust_root: bytes
    ca: IssuingCa
    server_anchor: bytes | None = None
    config: dict[str, object] = field(default_factory=dict)
    secrets: dict[str, str] = field(default_factory=dict)
    artifact: bytes | None = None
    cert_days: int = 5 * 365
    group: str = "default"
    guard: bool = True
    device_token: bool = True  # a random bearer token per device, sealed with its secrets
    app: str = ""  # the app the device runs: its update checks name it (config.json "app")
    channel: str = "stable"  # the release channel it follows (config.json "channel")
    keygen: str = "host"  # "device": the device makes its key, the host only sees a CSR
    # An encrypted artifact's key (formats/encrypted.py): staged wrapped for each device's id
    release_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class IssuedIdentity:
    hardware_id: str
    key_der: bytes
    cert_der: bytes
    record: CertRecord


@dataclass
class DeviceResult:
    hardware_id: str
    outcome: str  # provisioned | skipped
    fingerprint: str
    steps: list[str]
    bytes_written: int = 0


def issue_identity(
    ca: IssuingCa,
    hardware_id: str,
    days: int,
    device_public_key: ec.EllipticCurvePublicKey | None = None,
) -> IssuedIdentity:
    """A certificate for a new host-made key, or for the key the device made (no key_der)."""
    if device_public_key is None:
        key = generate_key()
        public = key.public_key()
    else:
        key, public = None, device_public_key
    # The name is not the hardware id: the certificate sits on the device's filesystem, and
    # the id is the key to its sealed secrets (docs/provisioning.md). The registry maps the
    # certificate's fingerprint to the device.
    name = "mpseal-device-" + secrets_mod.token_hex(8)
    cert = issue(ca, LeafRequest(name=name, role="client", days=days), public)
    cert_der = cert.public_bytes(Encoding.DER)
    record = CertRecord(
        role="device",
        subject=cert.subject.rfc4514_string()[:255],
        serial=format(cert.serial_number, "x"),
        fingerprint=hashlib.sha256(cert_der).hexdigest(),
        not_after=cert.not_valid_after_utc,
    )
    return IssuedIdentity(hardware_id, key_pem_der(key)[1] if key else b"", cert_der, record)


def _secret_fingerprints(secrets: dict[str, str]) -> tuple[tuple[str, str], ...]:
    return tuple(
        (name, hashlib.sha256(value.encode()).hexdigest())
        for name, value in sorted(secrets.items())
    )


def device_files(
    plan: ProvisionPlan, ident: IssuedIdentity, secrets: dict[str, str]
) -> dict[str, bytes]:
    """Everything one device receives, by device path (the marker is written separately)."""
    files: dict[str, bytes] = {}
    if plan.guard:
        files.update(guard_files(plan.board, plan.profile, plan.trust_root))
    files[CERT] = ident.cert_der
    if ident.key_der:  # a device-made key is on the device already, and stays there
        files[KEY] = ident.key_der
    files[CA_CERT] = plan.ca.cert.public_bytes(Encoding.DER)
    if plan.server_anchor:
        files[ANCHOR] = plan.server_anchor
    # What the app and its update client read: which device, board, app and channel this
    # is (--config may set app and channel itself); hardware_id and board are not settable.
    settings: dict[str, object] = {"channel": plan.channel}
    if plan.app:
        settings["app"] = plan.app
    # Never the hardware id: it opens the sealed secrets beside this file; the device reads
    # it from the chip at run time (machine.unique_id()).
    config = {k: v for k, v in plan.config.items() if k != "hardware_id"}
    files[CONFIG] = json.dumps({**settings, **config, "board": plan.board}, sort_keys=True).encode()
    if secrets:
        files[SECRETS] = secretbox.seal(
            json.dumps(secrets, sort_keys=True).encode(), ident.hardware_id
        )
    return files


def settings_digests(plan: ProvisionPlan) -> dict[str, str]:
    """What a re-run compares: each part the plan puts on a device besides its identity.

    Kept in the registry (host side), never on the device: it covers the secrets' values.
    A part a re-run does not give (no --config, --secrets, --anchor, --artifact) is not
    compared: running provision again to resume needs no repeat of every option.
    """

    def digest(value: object) -> str:
        if isinstance(value, bytes):
            return hashlib.sha256(value).hexdigest()
        return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()

    parts: dict[str, object] = {
        "device": [plan.board, plan.profile, plan.guard, plan.app, plan.device_token],
        "channel": plan.channel,
        "group": plan.group,
        "trust_root": plan.trust_root,
        "ca": plan.ca.cert.public_bytes(Encoding.DER),
    }
    if plan.config:
        parts["config"] = plan.config
    if plan.secrets:
        parts["secrets"] = _secret_fingerprints(plan.secrets)
    if plan.server_anchor:
        parts["anchor"] = plan.server_anchor
    if plan.artifact:
        parts["artifact"] = plan.artifact
    return {name: digest(value) for name, value in parts.items()}


def _last_settings(registry: Registry, hardware_id: str) -> dict[str, str]:
    for event in reversed(registry.events(hardware_id)):
        if event.kind == "provisioned":
            try:
                last = json.loads(event.detail).get("settings")
            except (ValueError, AttributeError):
                return {}
            return last if isinstance(last, dict) else {}
    return {}


def _settings_changed(registry: Registry, hardware_id: str, wanted: dict[str, str]) -> list[str]:
    """The parts of ``wanted`` that differ from the device's last provisioning."""
    last = _last_settings(registry, hardware_id)
    if not last:
        return []  # provisioned by an older mpseal: nothing to compare with
    return [name for name, value in wanted.items() if last.get(name) != value]


def marker_bytes(ident: IssuedIdentity) -> bytes:
    # The certificate's fingerprint only: the registry says whose it is (no hardware id
    # on the filesystem that holds the sealed secrets).
    return json.dumps({"fingerprint": ident.record.fingerprint}, sort_keys=True).encode()


def _certificate_of(registry: Registry, fingerprint: str, device_id: int) -> bool:
    from sqlalchemy import select

    from mpseal.fleet.models import Certificate

    with registry.session() as s:
        cert = s.scalar(select(Certificate).where(Certificate.fingerprint == fingerprint.lower()))
        return cert is not None and cert.device_id == device_id


def read_hardware_id(transport: Transport) -> str:
    out = transport.exec(READ_ID).strip()
    hw = out.splitlines()[-1] if out else ""
    if not 4 <= len(hw) <= 64 or any(c not in "0123456789abcdef" for c in hw):
        raise BadDataError(f"the device's hardware id {hw[:70]!r} is not hex; is it a board?")
    return hw


def device_path(path: str, flat: bool) -> str:
    """On a flat filesystem (the micro:bit has no folders) /mpseal/id/x.der is mpseal_id_x.der."""
    return "/" + path.strip("/").replace("/", "_") if flat else path


def _read_marker(transport: Transport, flat: bool) -> dict[str, object] | None:
    try:
        value = json.loads(transport.read_file(device_path(MARKER, flat), MARKER_LIMIT))
    except (MpsealError, ValueError, UnicodeDecodeError):  # missing, unreadable, or garbage
        return None
    return value if isinstance(value, dict) else None


def check_board(transport: Transport, plan: ProvisionPlan) -> BoardFacts | None:
    """Probe the firmware; refuse (nothing written) a board that cannot take this plan.

    Identity files alone (--no-guard, no artifact) need nothing of the firmware but a
    hardware id, which read-id checks before anything is written: no probe then, which
    spares the heap of the small boards this mode is for (the micro:bit's 8 KB)."""
    if not plan.guard and plan.artifact is None:
        return None
    files = guard_files(plan.board, plan.profile, plan.trust_root) if plan.guard else {}
    needs = needs_for(
        plan.board,
        plan.artifact,
        files,
        guard=plan.guard,
        secrets=plan.guard and bool(plan.secrets or plan.device_token),
        tls=plan.guard and "server" in plan.config,
        identity=True,
        release_key=plan.release_key,
    )
    return check(transport, needs, [*files, *SLOT_FILES])[0]


def provision_device(
    transport: Transport,
    plan: ProvisionPlan,
    registry: Registry,
    on_step: StepHook | None = None,
    force: bool = False,
) -> DeviceResult:
    def step(hw: str, name: str) -> None:
        done.append(name)
        if on_step:
            on_step(hw, name)

    done: list[str] = []
    facts = check_board(transport, plan)
    hw = read_hardware_id(transport)
    flat = transport.exec(FLAT_PROBE).strip().endswith("False")
    if flat and (plan.guard or plan.artifact is not None):
        raise UsageError(
            f"device {hw} has a flat filesystem (old firmware): it cannot run the "
            "boot guard; provision it with --no-guard and no artifact"
        )
    step(hw, "read-id")
    known = registry.find_device(hw)
    if known is not None and known.state == "revoked":
        raise UsageError(f"device {hw} is revoked; it cannot be provisioned again")
    marker = _read_marker(transport, flat)
    wanted = settings_digests(plan)
    if not force and known is not None and known.state == "active" and marker:
        fp = str(marker.get("fingerprint", ""))
        if _certificate_of(registry, fp, known.id) and registry.is_allowed(fingerprint=fp):
            changed = _settings_changed(registry, hw, wanted)
            if not changed:
                return DeviceResult(hw, "skipped", fp, done)
            # A new --config/--anchor/--artifact/...: redone cleanly, as after --force.
            step(hw, "changed " + ",".join(changed))

    device_key = None
    if plan.keygen == "device":
        if flat:
            raise UsageError(
                f"device {hw} has a flat filesystem (old firmware): it cannot "
                "make its own key; provision it with --keygen host"
            )
        if marker is not None:  # an older identity: invalid from now on
            transport.remove(device_path(MARKER, flat))
            marker = None
        with contextlib.suppress(DeviceError):  # a re-run gets a fresh key, as on the host
            transport.remove(KEY)
        made = device_csr(transport, plan.board, [("CN", hw)])
        device_key = ec.EllipticCurvePublicKey.from_encoded_point(ec.SECP256R1(), made.public_key)
        step(hw, "keygen")
    ident = issue_identity(plan.ca, hw, plan.cert_days, device_key)
    secrets = dict(plan.secrets)
    if plan.device_token:  # for servers the device reaches without its client certificate
        secrets[TOKEN_SECRET] = token_urlsafe(24)
    registry.record_identities(
        [
            Identity(
                hardware_id=hw,
                board=plan.board,
                cert=ident.record,
                group=plan.group,
                secrets=_secret_fingerprints(secrets),
                token_hash=token_hash(secrets[TOKEN_SECRET]) if plan.device_token else None,
            )
        ],
        supersede=True,
    )
    step(hw, "issue")

    marker_path = device_path(MARKER, flat)
    if marker is not None:  # an older identity: invalid from now on, even if writing stops
        transport.remove(marker_path)
    files = device_files(plan, ident, secrets)
    for path, data in files.items():
        transport.write_file(device_path(path, flat), data)
    if plan.guard and facts is not None:  # its boot modules in place in a ROMFS partition
        size = artifact_mod.decode(plan.artifact).manifest.image_size if plan.artifact else 0
        place_guard_rom(transport, plan.board, rom_partition(facts), size)
    step(hw, "write")

    transport.write_file(marker_path, marker_bytes(ident))
    if transport.read_file(marker_path, MARKER_LIMIT) != marker_bytes(ident):
        raise BadDataError(f"device {hw}: the provisioning marker did not read back")
    step(hw, "mark")

    if plan.artifact is not None:
        man = artifact_mod.decode(plan.artifact).manifest
        record = None
        if man.encrypted is not None:  # its key, wrapped for this device's id only
            if plan.release_key is None:
                raise UsageError("the artifact is encrypted: provisioning needs its key")
            record = encrypted.wrap(plan.release_key, hw, man.image_sha256)
        stage_artifact(transport, plan.artifact, key_record=record)
        step(hw, "stage")

    registry.mark_active(
        hw,
        {
            "fingerprint": ident.record.fingerprint,
            "at": dt.datetime.now(dt.UTC).isoformat(),
            "settings": {**_last_settings(registry, hw), **wanted},
        },
    )
    step(hw, "activate")
    return DeviceResult(
        hw, "provisioned", ident.record.fingerprint, done, sum(len(d) for d in files.values())
    )
