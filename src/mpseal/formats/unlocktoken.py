"""The service unlock token ``MPSU``: one boot in a looser profile for one device.

An envelope (envelope.py) whose payload is
``{"type": "mpseal-unlock", "device": "<hardware id>", "n": 3, "profile": "dev"}``,
signed by a threshold of the trust root's offline ``root`` role (``mpseal
unlock-token`` writes it). The guard (runtime/mpseal_stage.check_unlock) takes
it once: ``n`` must be above the number of the last token that device used. This
host parser gives the same verdicts (tests/test_differential.py).

Threat tier: T0 (a service technician with the file); minting one needs the root key.
"""

from __future__ import annotations

from dataclasses import dataclass

from mpseal.errors import FormatError, PolicyError
from mpseal.formats import envelope, jsondoc
from mpseal.formats.trustroot import TrustRoot
from mpseal.limits import DEFAULT_LIMITS, Limits

MAGIC = b"MPSU"
MAX_LENGTH = 2048  # runtime mpseal_release.MAX_UNLOCK
PROFILES = ("dev", "field")


@dataclass(frozen=True)
class UnlockToken:
    device: str
    n: int
    profile: str


def parse(
    data: bytes, root: TrustRoot, device: str, used: int, limits: Limits = DEFAULT_LIMITS
) -> UnlockToken:
    """The token, if it is signed by ``root``'s root role, for ``device`` and above ``used``."""
    if len(data) > MAX_LENGTH:
        raise FormatError(f"unlock token is larger than {MAX_LENGTH} bytes")
    env = envelope.decode(data, MAGIC, "unlock token", MAX_LENGTH, limits.signatures_max_count)
    root.verify("root", env.payload, env.signatures, "unlock token")
    f = jsondoc.Fields(jsondoc.loads(env.payload, "unlock token"), "unlock token")
    if f.req_str("type") != "mpseal-unlock":
        raise FormatError("unlock token payload is not of type mpseal-unlock")
    if f.req_str("device", 64) != device:
        raise PolicyError("unlock token is for another device")
    n = f.int("n", 0, 2**31 - 1)
    profile = f.req_str("profile", 16)
    if n <= used:
        raise PolicyError(f"unlock token {n} was already used (device is at {used})")
    if profile not in PROFILES:
        raise FormatError(f"unlock token profile {profile!r} is not dev or field")
    return UnlockToken(device, n, profile)
