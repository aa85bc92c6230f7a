"""The one exception tree of mpseal.

    MpsealError
    ├── BadDataError          untrusted bytes are wrong: corrupt, altered, hostile
    │   ├── FormatError       cannot be parsed (truncated, wrong magic, oversized field)
    │   ├── IntegrityError    parses, but a hash or size does not match what was signed
    │   ├── SignatureError    signature missing, invalid, below threshold or by an unknown key
    │   └── PolicyError       authentic, but not acceptable here (wrong board, rollback, expired)
    ├── TransportError        talking to a device, server or tool failed; retrying may help
    │   ├── ToolError         an external program (mpy-cross, micropython) failed or is missing
    │   ├── LinkError         the serial line to a board failed (mpseal.device.transport)
    │   └── DeviceError       code run on a board raised there (mpseal.device.transport)
    └── UsageError            the caller asked for something that cannot be done as asked
        └── ConfigError       the project's configuration is wrong or incomplete

Callers catch the branch they can handle. Every message says what is wrong and,
where there is one, what to do next. Nothing is told apart by message text.
"""

from __future__ import annotations


class MpsealError(Exception):
    """Base of every error mpseal raises on purpose."""


class BadDataError(MpsealError):
    """Untrusted data (an artifact, a manifest, a device reply, a request) is bad."""


class FormatError(BadDataError):
    """The bytes cannot be parsed: truncated, wrong magic, oversized or malformed field."""


class IntegrityError(BadDataError):
    """The bytes parse, but a hash or a size does not match what was signed."""


class SignatureError(BadDataError):
    """A signature is missing, invalid, below the threshold, or made by an unknown key."""


class PolicyError(BadDataError):
    """The data is authentic but not acceptable here (wrong board, rollback, expired)."""


class TransportError(MpsealError):
    """Talking to a device, a server or an external tool failed."""


class ToolError(TransportError):
    """An external program failed or is not installed."""


class StorageError(TransportError):
    """A local file or folder could not be written: disk full, read-only, no permission."""


class UsageError(MpsealError):
    """The caller asked for something that cannot be done as asked."""


class ConfigError(UsageError):
    """The project configuration (mpseal.toml, keys, trust root) is wrong or incomplete."""
