"""The one home of the name patterns: app, version, board, channel, group, hardware id, ...

Each is matched whole (``re.fullmatch``: a ``$`` would let a trailing newline through).
The manifest and update-metadata parsers, the server's request validators and its
OpenAPI schema (:func:`json_schema_pattern`) all read them from here, so a name one
accepts the others accept too. The device runtime keeps its own copies (``runtime/``
imports nothing from the host).
"""

from __future__ import annotations

import re

APP_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")
GROUP = APP_NAME  # a rollout group is named like an app
VERSION = re.compile(r"[0-9A-Za-z][0-9A-Za-z.+-]{0,31}")
BOARD = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
CHANNEL = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
HARDWARE_ID = re.compile(r"[0-9A-Za-z_.:-]{1,64}")
SHA256_HEX = re.compile(r"[0-9a-f]{64}")
RELEASE_KEY = SHA256_HEX  # an encrypted release's key, as publish sends it (formats/encrypted.py)
KEY_RECORD = re.compile(r"[0-9a-f]{80}")  # its key wrapped for one device, in the check reply
FILE_SEGMENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")  # one part of a file in the image
MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,63}")  # the entry module of a manifest
DELTA_PATH = re.compile(r"deltas/[0-9a-f]{64}[.]mpsd")  # where the server offers a delta
TARGET_SEGMENT = re.compile(r"[a-z0-9._-]+")  # one part of a target path in update metadata
AUDIT_ACTION = re.compile(r"[a-z][a-z-]{0,31}")  # an audit log action: publish, resume, ...


def json_schema_pattern(pattern: re.Pattern[str]) -> str:
    """The same pattern for a JSON Schema ``pattern`` (ECMA-262: searched, so anchored)."""
    return f"^{pattern.pattern}$"
