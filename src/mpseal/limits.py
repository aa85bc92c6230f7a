"""Every read of untrusted bytes has a limit; the limits live here, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds for untrusted inputs. Pass a custom instance to loosen or tighten.

    The fields a device also enforces are the device's own limits (the runtime's
    constants, which tests/test_limits.py reads and compares): a host that accepted
    more would build and verify artifacts every device refuses."""

    manifest_max_length: int = 16 * 1024  # runtime mpseal_release.MAX_MANIFEST
    signatures_max_count: int = 8  # mpseal_release.MAX_SIGS
    image_max_length: int = 4 * 1024 * 1024  # mpseal_release.MAX_IMAGE, guard max_image
    artifact_max_length: int = 4 * 1024 * 1024 + 64 * 1024  # mpseal_meta.MAX_SIZE
    root_max_length: int = 16 * 1024  # mpseal_release.MAX_ROOT
    timestamp_max_length: int = 8 * 1024  # mpseal_meta.MAX_TS
    timestamp_max_targets: int = 64  # mpseal_meta.MAX_TARGETS
    target_path_max_length: int = 128  # mpseal_meta.MAX_PATH
    file_name_max_length: int = 120  # mpseal_meta.MAX_FILE_NAME
    files_max_count: int = 4096  # mpseal_meta.MAX_FILES
    config_max_length: int = 256 * 1024
    device_reply_max_length: int = 1024 * 1024
    # delta files (formats/delta.py, runtime/mpseal_delta.py: the same numbers)
    delta_max_ops: int = 65536
    delta_max_op: int = 1024 * 1024
    delta_wbits_min: int = 9
    delta_wbits_max: int = 12


DEFAULT_LIMITS = Limits()
