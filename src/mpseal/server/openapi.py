"""The OpenAPI 3.1 description of the server, served at ``/openapi.json``.

Written by hand next to the routes it describes; ``docs/openapi.json`` is a copy,
and a test fails when the two differ (regenerate with ``python -m mpseal.server.openapi``).
"""

from __future__ import annotations

import json
import re
import sys
from typing import Any, get_args

from mpseal import __version__
from mpseal.formats import names
from mpseal.server.config import DEFAULT_CHANNEL
from mpseal.server.directory import State as DirectoryState


def _string(pattern: re.Pattern[str], **extra: Any) -> dict[str, Any]:
    """A string schema whose pattern is the validator's own (formats/names.py)."""
    return {"type": "string", "pattern": names.json_schema_pattern(pattern), **extra}


HEX64 = _string(names.SHA256_HEX)
HWID = _string(names.HARDWARE_ID)
NAME = _string(names.APP_NAME)
GROUP = _string(names.GROUP)
VERSION = _string(names.VERSION)
BOARD = _string(names.BOARD)
CHANNEL = _string(names.CHANNEL, default=DEFAULT_CHANNEL)
COUNTER = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
EVENTS = ["downloaded", "staged", "refused", "booted", "confirmed", "rolled_back"]


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _json_body(schema_name: str, required: bool = True) -> dict[str, Any]:
    """A request body of JSON in the named schema."""
    return {"required": required, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _binary(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/octet-stream": {"schema": {"type": "string", "format": "binary"}}},
    }


def _errors(*codes: int) -> dict[str, Any]:
    return {str(c): {"$ref": f"#/components/responses/E{c}"} for c in codes}


def _path_param(name: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "name": name,
        "in": "path",
        "required": True,
        "schema": schema,
        "description": description,
    }


DEVICE: list[dict[str, list[str]]] = [{"deviceCert": []}, {"deviceToken": []}]
ADMIN: list[dict[str, list[str]]] = [{"adminToken": []}]
RELEASE_ID = _path_param("release_id", {"type": "integer", "minimum": 1}, "Release id")


def _schemas() -> dict[str, Any]:
    target = {
        "type": "object",
        "required": ["app", "board", "version", "counter", "manifest_sha256", "size", "path"],
        "properties": {
            "app": NAME,
            "board": BOARD,
            "version": VERSION,
            "counter": COUNTER,
            "manifest_sha256": HEX64,
            "size": {"type": "integer", "minimum": 1},
            "path": {"type": "string", "pattern": "^[a-z0-9._/-]{1,128}$"},
        },
    }
    counts = {
        "type": "object",
        "properties": {
            k: {"type": "integer"}
            for k in (
                "attempts",
                "updated",
                "failed",
                "refused",
                "rolled_back",
                "trial_timeouts",
                "in_progress",
                "cohort",
            )
        },
    }
    policy = {
        "type": "object",
        "properties": {
            "min_attempts": {"type": ["integer", "null"], "minimum": 1},
            "max_failure_ratio": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "min_cohort_share": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        },
    }
    when = {"type": ["string", "null"], "format": "date-time"}
    device = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "hardware_id": HWID,
            "board": BOARD,
            "state": {"type": "string", "enum": ["provisioning", "active", "revoked"]},
            "group": GROUP,
            "app": {"type": ["string", "null"]},
            "version": {"type": ["string", "null"]},
            "counter": {"type": ["integer", "null"]},
            "channel": {"type": ["string", "null"]},
            "last_check_at": when,
            "last_report_at": when,
            "last_event": {"type": ["string", "null"]},
            "cert_expires": when,
        },
    }
    release = {
        "type": "object",
        "properties": {
            "id": {"type": "integer"},
            "app": NAME,
            "board": BOARD,
            "channel": CHANNEL,
            "version": VERSION,
            "counter": COUNTER,
            "manifest_sha256": HEX64,
            "file_sha256": HEX64,
            "size": {"type": "integer"},
            "state": {"type": "string", "enum": ["active", "paused", "halted"]},
            "percent": {"type": "number", "minimum": 0, "maximum": 100},
            "groups": {"type": "array", "items": {"type": "string"}},
            "pins": {"type": "array", "items": HWID},
            "halt_reason": {
                "type": ["string", "null"],
                "description": "Why the server halted it (null unless state is halted)",
            },
            "created_at": {"type": "string", "format": "date-time"},
            "counts": _ref("Counts"),
            "counts_since_resume": {
                "description": "What the automatic halt counts since an admin last resumed "
                "it after a halt (null: never resumed after one)",
                "anyOf": [_ref("Counts"), {"type": "null"}],
            },
            "halts": {"type": "array", "items": _ref("Halt"), "description": "Oldest first"},
            "halt_policy": _ref("HaltPolicy"),
            "deltas": {
                "type": "array",
                "items": {
                    "type": "object",
                    "properties": {"from": VERSION, "sha256": HEX64, "size": {"type": "integer"}},
                },
            },
        },
    }
    return {
        "Error": {
            "type": "object",
            "required": ["error"],
            "properties": {"error": {"type": "string", "maxLength": 300}},
        },
        "CheckRequest": {
            "type": "object",
            "required": ["hardware_id", "board", "app", "version", "counter", "timestamp_version"],
            "properties": {
                "hardware_id": HWID,
                "board": BOARD,
                "app": NAME,
                "version": VERSION,
                "counter": COUNTER,
                "timestamp_version": {"type": "integer", "minimum": 0},
                "channel": CHANNEL,
            },
        },
        "CheckResponse": {
            "type": "object",
            "required": ["update", "timestamp", "root_version"],
            "properties": {
                "update": {"type": "boolean"},
                "target": _ref("Target"),
                "delta": _ref("DeltaOffer"),
                "key": {
                    "type": "string",
                    "pattern": names.json_schema_pattern(names.KEY_RECORD),
                    "description": "An encrypted release's key record (formats/encrypted.py): "
                    "its key wrapped for this device's hardware id",
                },
                "timestamp": {"type": "string", "example": "timestamp/stable.mpst"},
                "root_version": {"type": "integer", "minimum": 1},
            },
        },
        "Target": target,
        "DeltaOffer": {
            "type": "object",
            "required": ["path", "size", "from"],
            "description": "A delta (docs/formats.md) from the running version; "
            "the device falls back to the target's full artifact",
            "properties": {
                "path": {"type": "string", "pattern": names.json_schema_pattern(names.DELTA_PATH)},
                "size": {"type": "integer", "minimum": 1},
                "from": VERSION,
            },
        },
        "ReportRequest": {
            "type": "object",
            "required": ["hardware_id", "event"],
            "properties": {
                "hardware_id": HWID,
                "event": {"type": "string", "enum": EVENTS},
                "version": {"anyOf": [VERSION, {"const": ""}]},
                "reason": {"type": "string", "maxLength": 200},
                "app": NAME,
                "board": BOARD,
                "channel": CHANNEL,
            },
        },
        "ReportResponse": {
            "type": "object",
            "required": ["recorded"],
            "properties": {"recorded": {"const": True}},
        },
        "LogUpload": {
            "type": "object",
            "required": ["lines"],
            "properties": {
                "hardware_id": HWID,
                "lines": {
                    "type": "array",
                    "maxItems": 50,
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "prefixItems": [
                            {"type": "string", "enum": ["guard", "app"]},
                            {"type": "string"},
                        ],
                    },
                },
            },
        },
        "LogResponse": {
            "type": "object",
            "required": ["recorded"],
            "properties": {"recorded": {"type": "integer", "minimum": 0}},
        },
        "HaltPolicy": policy,
        "Halt": {
            "type": "object",
            "properties": {
                "halted_at": {"type": "string", "format": "date-time"},
                "reason": {"type": "string"},
                "resumed_at": when,
                "resumed_by": {"type": ["string", "null"], "description": "admin token id"},
                "resume_reason": {"type": ["string", "null"]},
            },
        },
        "StateRequest": {
            "type": "object",
            "additionalProperties": False,
            "properties": {"reason": {"type": "string", "maxLength": 200}},
        },
        "AuditEntry": {
            "type": "object",
            "properties": {
                "seq": {"type": "integer", "minimum": 1},
                "at": {"type": "string", "format": "date-time"},
                "actor": {
                    "type": "string",
                    "description": "token:<id>, server, or local:<user>@<host>",
                },
                "action": _string(names.AUDIT_ACTION),
                "target": {"type": "string"},
                "detail": {"type": "object"},
                "hash": HEX64,
            },
        },
        "AuditPage": {
            "type": "object",
            "properties": {
                "entries": {"type": "array", "items": _ref("AuditEntry")},
                "next": {"type": ["integer", "null"]},
            },
        },
        "AuditVerified": {
            "type": "object",
            "required": ["ok"],
            "properties": {
                "ok": {"type": "boolean"},
                "rows": {"type": "integer"},
                "head": HEX64,
                "error": {"type": "string", "description": "The first row that does not fit"},
            },
        },
        "LogLine": {
            "type": "object",
            "properties": {
                "id": {"type": "integer"},
                "at": {"type": "string", "format": "date-time"},
                "source": {"type": "string", "enum": ["guard", "app"]},
                "line": {"type": "string", "maxLength": 200},
            },
        },
        "LogPage": {
            "type": "object",
            "properties": {
                "hardware_id": HWID,
                "lines": {"type": "array", "items": _ref("LogLine")},
                "next": {"type": ["integer", "null"]},
            },
        },
        "Device": device,
        "DevicePage": {
            "type": "object",
            "properties": {
                "devices": {"type": "array", "items": _ref("Device")},
                "next": {"type": ["integer", "null"]},
            },
        },
        "GroupRequest": {"type": "object", "required": ["group"], "properties": {"group": GROUP}},
        "Health": {
            "type": "object",
            "properties": {
                "ok": {"type": "boolean"},
                "ready": {"type": "boolean"},
                "database": {"type": "string", "enum": ["up", "down", "unknown"]},
                "schema_ready": {"type": "boolean"},
                "directory": {
                    "type": "object",
                    "description": "This process's device directory (credentials held in "
                    "memory, PostgreSQL): its state and how many it holds",
                    "properties": {
                        "state": {
                            "type": "string",
                            "enum": list(get_args(DirectoryState)),
                        },
                        "credentials": {"type": "integer", "minimum": 0},
                    },
                },
                "pid": {
                    "type": "integer",
                    "description": "The server process that answered (the counts are its own)",
                },
                "checks_at_once": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Checks this process answered in the HTTP protocol",
                },
                "reports_at_once": {
                    "type": "integer",
                    "minimum": 0,
                    "description": "Reports this process took in the HTTP protocol",
                },
            },
        },
        "Counts": counts,
        "Release": release,
        "ReleaseEnvelope": {"type": "object", "properties": {"release": _ref("Release")}},
        "ReleaseList": {
            "type": "object",
            "properties": {"releases": {"type": "array", "items": _ref("Release")}},
        },
        "PromoteRequest": {
            "type": "object",
            "minProperties": 1,
            "maxProperties": 1,
            "properties": {
                "percent": {"type": "number", "minimum": 0, "maximum": 100},
                "group": GROUP,
                "pin": HWID,
            },
        },
        "RevokeRequest": {
            "type": "object",
            "properties": {"reason": {"type": "string", "maxLength": 200}},
        },
        "RevokeResponse": {
            "type": "object",
            "properties": {
                "hardware_id": HWID,
                "state": {"type": "string"},
                "certificates_revoked": {"type": "integer"},
            },
        },
    }


def _paths() -> dict[str, Any]:
    return {
        "/v1/device/check": {
            "post": {
                "summary": "Ask for an update",
                "security": DEVICE,
                "tags": ["device"],
                "requestBody": _json_body("CheckRequest"),
                "responses": {
                    "200": _json(_ref("CheckResponse"), "The decision"),
                    **_errors(400, 401, 403, 404, 413),
                },
            }
        },
        "/v1/device/report": {
            "post": {
                "summary": "Report update progress",
                "security": DEVICE,
                "tags": ["device"],
                "requestBody": _json_body("ReportRequest"),
                "responses": {
                    "200": _json(_ref("ReportResponse"), "Stored (only then answered)"),
                    **_errors(400, 401, 403, 413, 429, 503),
                },
            }
        },
        "/v1/device/logs": {
            "post": {
                "summary": "Hand over log lines (the guard's and the app's; at most 50 lines, "
                "16 KB, 6 batches a minute; each line kept as 200 printable characters)",
                "security": DEVICE,
                "tags": ["device"],
                "requestBody": _json_body("LogUpload"),
                "responses": {
                    "200": _json(_ref("LogResponse"), "Stored (only then answered)"),
                    **_errors(400, 401, 403, 413, 429, 503),
                },
            }
        },
        "/v1/timestamp/{channel}.mpst": {
            "get": {
                "summary": "The channel's signed timestamp",
                "security": DEVICE,
                "tags": ["device"],
                "parameters": [_path_param("channel", CHANNEL, "Channel")],
                "responses": {
                    "200": _binary("Signed timestamp (MPST envelope)"),
                    **_errors(400, 401, 403, 404),
                },
            }
        },
        "/v1/roots/{version}.mpsr": {
            "get": {
                "summary": "Trust root version N",
                "security": DEVICE,
                "tags": ["device"],
                "parameters": [
                    _path_param("version", {"type": "integer", "minimum": 1}, "Trust root version")
                ],
                "responses": {
                    "200": _binary("Signed trust root (MPSR envelope)"),
                    **_errors(400, 401, 403, 404),
                },
            }
        },
        "/v1/artifacts/{sha256}.mpseal": {
            "get": {
                "summary": "An artifact; HTTP Range resumes a download",
                "security": DEVICE,
                "tags": ["device"],
                "parameters": [
                    _path_param("sha256", HEX64, "SHA-256 of the artifact file"),
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "example": "bytes=1024-"},
                    },
                ],
                "responses": {
                    "200": _binary("The whole file"),
                    "206": _binary("The range asked"),
                    "302": {"description": "Served by the configured CDN"},
                    "416": {"description": "Range not satisfiable"},
                    **_errors(400, 401, 403, 404),
                },
            }
        },
        "/v1/deltas/{sha256}.mpsd": {
            "get": {
                "summary": "A delta made at publish time; HTTP Range resumes a download",
                "security": DEVICE,
                "tags": ["device"],
                "parameters": [
                    _path_param("sha256", HEX64, "SHA-256 of the delta file"),
                    {
                        "name": "Range",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "example": "bytes=1024-"},
                    },
                ],
                "responses": {
                    "200": _binary("The whole file"),
                    "206": _binary("The range asked"),
                    "416": {"description": "Range not satisfiable"},
                    **_errors(400, 401, 403, 404),
                },
            }
        },
        "/v1/admin/releases": {
            "post": {
                "summary": "Publish an artifact (verified against the trust root)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [
                    {"name": "channel", "in": "query", "schema": CHANNEL},
                    {
                        "name": "X-Mpseal-Release-Key",
                        "in": "header",
                        "description": "An encrypted release's key (dist/<app>-<version>.key); "
                        "required for one, refused for a plain release",
                        "schema": _string(names.RELEASE_KEY),
                    },
                ],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/octet-stream": {
                            "schema": {"type": "string", "format": "binary"}
                        }
                    },
                },
                "responses": {
                    "201": _json(
                        _ref("ReleaseEnvelope"), "Published, not offered to anyone until promoted"
                    ),
                    **_errors(400, 401, 409, 413),
                },
            },
            "get": {
                "summary": "Every release with its device counts",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [{"name": "channel", "in": "query", "schema": CHANNEL}],
                "responses": {
                    "200": _json(_ref("ReleaseList"), "Releases, oldest first"),
                    **_errors(400, 401),
                },
            },
        },
        "/v1/admin/releases/{release_id}": {
            "get": {
                "summary": "One release",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "responses": {
                    "200": _json(_ref("ReleaseEnvelope"), "The release"),
                    **_errors(400, 401, 404),
                },
            }
        },
        "/v1/admin/releases/{release_id}/sbom": {
            "put": {
                "summary": "Store the release's CycloneDX SBOM (only the one whose SHA-256 "
                "the signed manifest names in build.sbom)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "requestBody": {
                    "required": True,
                    "content": {"application/vnd.cyclonedx+json": {"schema": {"type": "object"}}},
                },
                "responses": {
                    "201": _json({"type": "object", "properties": {"sbom": HEX64}}, "Stored"),
                    **_errors(400, 401, 404, 413),
                },
            },
            "get": {
                "summary": "The release's CycloneDX SBOM",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "responses": {
                    "200": {
                        "description": "CycloneDX 1.6 JSON",
                        "content": {
                            "application/vnd.cyclonedx+json": {"schema": {"type": "object"}}
                        },
                    },
                    **_errors(400, 401, 404),
                },
            },
        },
        "/v1/admin/releases/{release_id}/promote": {
            "post": {
                "summary": "Widen a rollout: percent, a device group, or one pinned device",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "requestBody": _json_body("PromoteRequest"),
                "responses": {
                    "200": _json(_ref("ReleaseEnvelope"), "Promoted"),
                    **_errors(400, 401, 404, 409),
                },
            }
        },
        "/v1/admin/releases/{release_id}/pause": {
            "post": {
                "summary": "Stop offering the release (not a halted one: resume that)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "requestBody": _json_body("StateRequest", required=False),
                "responses": {
                    "200": _json(_ref("ReleaseEnvelope"), "Paused"),
                    **_errors(401, 404, 409),
                },
            }
        },
        "/v1/admin/releases/{release_id}/resume": {
            "post": {
                "summary": "Offer a paused release again, or one the server halted: that "
                "needs a reason (409 without), kept in its halts and the audit log; its halt "
                "then counts from the resume",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "requestBody": _json_body("StateRequest", required=False),
                "responses": {
                    "200": _json(_ref("ReleaseEnvelope"), "Active"),
                    **_errors(400, 401, 404, 409),
                },
            }
        },
        "/v1/admin/releases/{release_id}/policy": {
            "post": {
                "summary": "The release's own halt policy (null: the server's setting)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [RELEASE_ID],
                "requestBody": _json_body("HaltPolicy"),
                "responses": {
                    "200": _json(_ref("ReleaseEnvelope"), "Set"),
                    **_errors(400, 401, 404),
                },
            }
        },
        "/v1/admin/devices": {
            "get": {
                "summary": "The device inventory, one keyset page (next: the 'after' of the next)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [
                    {"name": n, "in": "query", "schema": sch}
                    for n, sch in (
                        ("state", {"type": "string"}),
                        ("group", GROUP),
                        ("app", NAME),
                        ("version", VERSION),
                        ("event", {"type": "string"}),
                        ("seen_after", {"type": "string", "format": "date-time"}),
                        ("seen_before", {"type": "string", "format": "date-time"}),
                        ("expiring_before", {"type": "string", "format": "date-time"}),
                        ("after", {"type": "integer", "minimum": 0}),
                        ("limit", {"type": "integer", "minimum": 1, "maximum": 5000}),
                    )
                ],
                "responses": {
                    "200": _json(_ref("DevicePage"), "Devices by id"),
                    **_errors(400, 401),
                },
            }
        },
        "/v1/admin/devices.jsonl": {
            "get": {
                "summary": "The whole inventory (same filters), streamed as JSON lines",
                "security": ADMIN,
                "tags": ["admin"],
                "responses": {
                    "200": {
                        "description": "One Device per line",
                        "content": {"application/x-ndjson": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401),
                },
            }
        },
        "/v1/admin/devices/{hardware_id}/group": {
            "post": {
                "summary": "Move a device to a rollout group",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [_path_param("hardware_id", HWID, "Hardware id")],
                "requestBody": _json_body("GroupRequest"),
                "responses": {"200": {"description": "Moved"}, **_errors(400, 401, 404)},
            }
        },
        "/v1/admin/audit-log": {
            "get": {
                "summary": "The audit log of admin actions, newest first, one keyset page "
                "(next: the 'before' of the next page)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [
                    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 500, "default": 50},
                    },
                    {
                        "name": "action",
                        "in": "query",
                        "schema": _string(names.AUDIT_ACTION),
                    },
                ],
                "responses": {
                    "200": _json(_ref("AuditPage"), "Entries"),
                    **_errors(400, 401),
                },
            }
        },
        "/v1/admin/audit-log/verify": {
            "get": {
                "summary": "Check the audit log's hash chain (head: the head recorded earlier)",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [{"name": "head", "in": "query", "schema": HEX64}],
                "responses": {
                    "200": _json(_ref("AuditVerified"), "The answer"),
                    **_errors(400, 401),
                },
            }
        },
        "/v1/admin/devices/{hardware_id}/logs": {
            "get": {
                "summary": "A device's log lines (its guard's and its app's), newest first, "
                "one keyset page",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [
                    _path_param("hardware_id", HWID, "Hardware id"),
                    {"name": "before", "in": "query", "schema": {"type": "integer", "minimum": 1}},
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {
                            "type": "integer",
                            "minimum": 1,
                            "maximum": 1000,
                            "default": 100,
                        },
                    },
                ],
                "responses": {
                    "200": _json(_ref("LogPage"), "Lines"),
                    **_errors(400, 401, 404),
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "Liveness (200 while the process runs) and what it knows of the database",
                "tags": ["operations"],
                "responses": {"200": _json(_ref("Health"), "Alive")},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Readiness: 200 when the database answers and its schema is current",
                "tags": ["operations"],
                "responses": {
                    "200": _json(_ref("Health"), "Ready"),
                    "503": _json(_ref("Health"), "Not ready; Retry-After"),
                },
            }
        },
        "/v1/admin/devices/{hardware_id}/revoke": {
            "post": {
                "summary": "Revoke a device and its certificates",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [_path_param("hardware_id", HWID, "Hardware id")],
                "requestBody": _json_body("RevokeRequest", required=False),
                "responses": {
                    "200": _json(_ref("RevokeResponse"), "Revoked"),
                    **_errors(400, 401, 404),
                },
            }
        },
    }


def _renewal_paths() -> dict[str, Any]:
    """Online renewal (server/enroll.py; docs/certificates.md)."""
    der = {"schema": {"type": "string", "format": "binary"}}
    return {
        "/v1/device/reenroll": {
            "post": {
                "summary": "A new certificate for a key the device made (EST simplereenroll); "
                "needs the device's current certificate (mutual TLS)",
                "security": DEVICE,
                "tags": ["device"],
                "requestBody": {"required": True, "content": {"application/pkcs10": der}},
                "responses": {
                    "200": {
                        "description": "The certificate (DER)",
                        "content": {"application/pkix-cert": der},
                    },
                    **_errors(400, 401, 403, 404, 413, 429),
                },
            }
        },
        "/v1/device/certificate": {
            "get": {
                "summary": "The certificate this connection presented (a renewal's proof)",
                "security": DEVICE,
                "tags": ["device"],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"hardware_id": HWID, "fingerprint": HEX64},
                        },
                        "Seen",
                    ),
                    **_errors(401, 403),
                },
            }
        },
        "/v1/device/recover/challenge": {
            "post": {
                "summary": "A one-time challenge for a device whose certificate expired "
                "(bearer token, no client certificate)",
                "security": DEVICE,
                "tags": ["device"],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"challenge": {"type": "string"}}},
                        "Good for 5 minutes",
                    ),
                    **_errors(401, 403, 404),
                },
            }
        },
        "/v1/device/recover": {
            "post": {
                "summary": "A new certificate for a device whose certificate expired: its last "
                "certificate, a CSR, and the challenge signed by the expired key",
                "security": DEVICE,
                "tags": ["device"],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["certificate", "csr", "challenge", "signature"],
                                "properties": {
                                    "certificate": {"type": "string"},
                                    "csr": {"type": "string"},
                                    "challenge": {"type": "string"},
                                    "signature": {"type": "string"},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The certificate (DER)",
                        "content": {"application/pkix-cert": der},
                    },
                    **_errors(400, 401, 403, 404, 409, 413, 429),
                },
            }
        },
        "/v1/admin/certificates/expiry": {
            "get": {
                "summary": "Active devices whose last certificate lapses soon, is past its "
                "renewal point, or expired; soonest first",
                "security": ADMIN,
                "tags": ["admin"],
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": "number", "minimum": lo}}
                    for n, lo in (("within_days", 0), ("lapsed_days", 0), ("limit", 1))
                ],
                "responses": {
                    "200": _json({"type": "object"}, "Lapsing certificates"),
                    **_errors(400, 401),
                },
            }
        },
    }


def spec() -> dict[str, Any]:
    responses = {
        f"E{code}": _json(_ref("Error"), text)
        for code, text in (
            (400, "Bad request: a one-line reason"),
            (401, "No or wrong credentials"),
            (403, "The device is revoked or unknown"),
            (404, "Not found"),
            (409, "Conflicts with the current state"),
            (413, "Request body too large"),
            (429, "Too many reports from this device; Retry-After says when to try again"),
            (503, "The database is unavailable; retry"),
        )
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "mpseal update server",
            "version": __version__,
            "description": "Device API (docs/updates.md) and admin API of 'mpseal serve'.",
        },
        "paths": {**_paths(), **_renewal_paths()},
        "components": {
            "schemas": _schemas(),
            "responses": responses,
            "securitySchemes": {
                "deviceCert": {
                    "type": "mutualTLS",
                    "description": "Device client certificate from the fleet CA; "
                    "identified by its SHA-256 fingerprint",
                },
                "deviceToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Per-device token (its SHA-256 is registered)",
                },
                "adminToken": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "Admin token (the server keeps its SHA-256)",
                },
            },
        },
    }


def render() -> str:
    return json.dumps(spec(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(render())
