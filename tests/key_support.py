"""Signing keys and a trust root for the update-metadata tests (host and device side)."""

from __future__ import annotations

from mpseal.crypto.keys import PrivateKeySigner
from mpseal.formats import trustroot


class Keys:
    """Root, release and timestamp keys, and trust root version 1 naming them."""

    def __init__(self, timestamp_keys: int = 1, threshold: int = 1) -> None:
        self.root = PrivateKeySigner.generate()
        self.release = PrivateKeySigner.generate()
        self.timestamp = [PrivateKeySigner.generate() for _ in range(timestamp_keys)]
        doc = trustroot.build(
            1,
            {
                "root": [self.root.public_key],
                "release": [self.release.public_key],
                "timestamp": [k.public_key for k in self.timestamp],
            },
            {"timestamp": threshold},
        )
        self.trust = trustroot.parse(trustroot.sign(doc, [self.root]))
