"""Every read of untrusted bytes has a limit; the limits live here, in one place."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    """Upper bounds for untrusted inputs. Pass a custom instance to loosen or tighten."""

    manifest_max_length: int = 64 * 1024
    signatures_max_count: int = 8
    image_max_length: int = 16 * 1024 * 1024
    artifact_max_length: int = 16 * 1024 * 1024 + 128 * 1024
    root_max_length: int = 16 * 1024
    timestamp_max_length: int = 8 * 1024
    timestamp_max_targets: int = 64
    target_path_max_length: int = 128
    file_name_max_length: int = 120
    files_max_count: int = 4096
    config_max_length: int = 256 * 1024
    device_reply_max_length: int = 1024 * 1024


DEFAULT_LIMITS = Limits()
