"""One pattern per name (formats/names.py): the manifest, the update metadata, the server's
validators and its published OpenAPI schema accept exactly the same names."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from mpseal.errors import FormatError
from mpseal.formats import manifest, names, updatemeta
from mpseal.server.http import checked
from mpseal.server.openapi import spec

# The schema property (or path parameter) -> the validator the server runs on it.
VALIDATED_AS = {
    "app": names.APP_NAME,
    "version": names.VERSION,
    "board": names.BOARD,
    "channel": names.CHANNEL,
    "hardware_id": names.HARDWARE_ID,
    "pin": names.HARDWARE_ID,
    "group": names.GROUP,
    "manifest_sha256": names.SHA256_HEX,
    "file_sha256": names.SHA256_HEX,
    "sha256": names.SHA256_HEX,
    "action": names.AUDIT_ACTION,
}


def named_schemas(node: Any, name: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Every (property or parameter name, schema) pair in the OpenAPI document."""
    if isinstance(node, dict):
        if "name" in node and isinstance(node.get("schema"), dict):
            yield node["name"], node["schema"]
        for key, value in node.get("properties", {}).items():
            yield key, value
        for key, value in node.items():
            yield from named_schemas(value, key)
    elif isinstance(node, list):
        for item in node:
            yield from named_schemas(item, name)


def test_openapi_schema_uses_the_validators_patterns() -> None:
    seen = {}
    for name, schema in named_schemas(spec()):
        if name in VALIDATED_AS and schema.get("type") == "string":
            want = names.json_schema_pattern(VALIDATED_AS[name])
            assert schema.get("pattern") == want, f"{name}: {schema} is not {want}"
            seen[name] = True
    # Each validated field appears in the schema at least once (the walk found them).
    assert set(seen) == set(VALIDATED_AS)


def test_every_pattern_in_the_schema_comes_from_formats_names() -> None:
    ours = {names.json_schema_pattern(p) for p in vars(names).values() if isinstance(p, re.Pattern)}
    target_path = "^[a-z0-9._/-]{1,128}$"  # a whole target path: checked by check_target_path
    for name, schema in named_schemas(spec()):
        if "pattern" in schema:
            assert schema["pattern"] in ours | {target_path}, f"{name}: hand-written pattern"


def accepts(check: Any, value: str) -> bool:
    try:
        check(value)
    except FormatError:
        return False
    return True


@pytest.mark.parametrize(
    "value",
    [
        "app",
        "my_app-2.0",
        "a" * 64,
        "a" * 65,
        "",
        "-app",
        ".app",
        "app\n",
        "app name",
        "äpp",
        "app/x",
        "_",
        "9",
    ],
)
def test_app_name_manifest_and_server_agree(value: str) -> None:
    in_manifest = accepts(manifest.check_app_name, value)
    on_server = accepts(lambda v: checked(v, names.APP_NAME, "app"), value)
    assert in_manifest == on_server
    assert in_manifest == (value in {"app", "my_app-2.0", "a" * 64, "_", "9"})


@pytest.mark.parametrize("value", ["esp32", "rp2-pico_w.1", "b" * 32, "b" * 33, "", "-x", "x\n"])
def test_board_update_metadata_and_server_agree(value: str) -> None:
    in_metadata = accepts(updatemeta.check_board, value)
    on_server = accepts(lambda v: checked(v, names.BOARD, "board"), value)
    assert in_metadata == on_server == (value in {"esp32", "rp2-pico_w.1", "b" * 32})


@pytest.mark.parametrize("value", ["1.0.0", "2.0+build.7", "v" * 32, "v" * 33, "", "+1", "1\n"])
def test_version_manifest_and_server_agree(value: str) -> None:
    in_manifest = accepts(manifest.check_version, value)
    on_server = accepts(lambda v: checked(v, names.VERSION, "version"), value)
    assert in_manifest == on_server == (value in {"1.0.0", "2.0+build.7", "v" * 32})
