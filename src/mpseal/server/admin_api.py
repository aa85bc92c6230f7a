"""The admin API (bearer admin token): publish, promote, pause, resume, list, revoke.

Every change re-signs the channel's timestamp before answering, so what the answer
says is what devices get. Other server processes see it within ``cache_seconds``.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route

from mpseal.errors import BadDataError, TransportError, UsageError
from mpseal.fleet import devicelogs
from mpseal.fleet.models import DEVICE_STATES
from mpseal.fleet.registry import INVENTORY_PAGE_MAX, InventoryFilter
from mpseal.fleet.releases import UPDATE_STATES
from mpseal.fleet.releasestore import (
    RESUME_REASON_MAX,
    NewDelta,
    NewRelease,
    PolicyOverrides,
    ReleaseInfo,
)
from mpseal.formats import artifact as artifact_mod
from mpseal.formats import delta as delta_mod
from mpseal.formats import encrypted
from mpseal.formats.names import APP_NAME as APP
from mpseal.formats.names import CHANNEL, GROUP, HARDWARE_ID, RELEASE_KEY, VERSION
from mpseal.formats.updatemeta import Target
from mpseal.fsutil import write_atomic
from mpseal.server import actions, auth
from mpseal.server.http import (
    ApiError,
    checked,
    json_ok,
    read_body,
    read_json,
)
from mpseal.server.service import UpdateServer

KEY_HEADER = encrypted.PUBLISH_HEADER


def _server(request: Request) -> UpdateServer:
    server: UpdateServer = request.app.state.server
    auth.admin(server, request)
    return server


def _publish_blocking(
    server: UpdateServer, blob: bytes, channel: str, key: bytes | None = None
) -> ReleaseInfo:
    root = server.roots.newest()
    verified = artifact_mod.verify(blob, root)  # signature, hash, size: refuse before storing
    man = verified.manifest
    if man.encrypted is not None:
        if key is None:
            raise ApiError(
                400,
                f"this release is encrypted: send its key (dist/<app>-<version>.key) in the "
                f"{KEY_HEADER} header",
            )
        encrypted.decrypt(man, verified.artifact.image, key)  # it opens, every file checks
    elif key is not None:
        raise ApiError(400, f"this release is not encrypted: it takes no {KEY_HEADER}")
    target = Target.for_artifact(blob)
    file_sha = hashlib.sha256(blob).hexdigest()
    path = Path(server.config.artifacts_dir) / f"{file_sha}.mpseal"
    if not path.exists():
        write_atomic(path, blob)
    server.store.put_artifact(file_sha, blob)  # where every server reaches it
    # An encrypted release's bytes change wholly with its random key: no delta to or from it.
    deltas = [] if man.encrypted else _make_deltas(server, target, blob)
    return server.store.publish(
        NewRelease(
            app=target.app,
            board=target.board,
            version=target.version,
            counter=target.counter,
            manifest_sha256=target.manifest_sha256,
            file_sha256=file_sha,
            size=len(blob),
            channel=channel,
            deltas=tuple(deltas),
            key=(man.image_sha256, key) if key is not None else None,
        )
    )


def _make_deltas(server: UpdateServer, target: Target, blob: bytes) -> list[NewDelta]:
    """Deltas to the new release from each release devices run now (the inventory), stored
    like artifacts (named by their SHA-256). One that would not be smaller is not made."""
    out = []
    for version, old_sha in server.store.field_artifacts(target.app, target.board, target.version):
        old = server.store.artifact(old_sha)
        if old is None or artifact_mod.decode(old).manifest.encrypted is not None:
            continue
        try:
            data = delta_mod.make(old, blob)
        except BadDataError:
            continue
        if len(data) >= len(blob):
            continue
        sha = hashlib.sha256(data).hexdigest()
        path = Path(server.config.artifacts_dir) / f"{sha}.mpsd"
        if not path.exists():
            write_atomic(path, data)
        server.store.put_artifact(sha, data)
        out.append(NewDelta(version, old_sha, sha, len(data)))
    return out


async def publish(request: Request) -> Response:
    server = _server(request)
    channel = checked(
        request.query_params.get("channel", server.config.default_channel), CHANNEL, "channel"
    )
    blob = await read_body(request, server.config.limits.artifact_upload_max)
    if not blob:
        raise ApiError(400, "the request body must be the artifact file")
    key = None
    if KEY_HEADER in request.headers:
        raw = request.headers[KEY_HEADER]
        if not RELEASE_KEY.fullmatch(raw):
            raise ApiError(400, f"{KEY_HEADER} must be 64 lowercase hex digits")
        key = bytes.fromhex(raw)
    try:  # the inventory this process holds, written first: deltas follow what devices run
        await server.flush_checkins()
    except TransportError:
        pass
    info = await server.run(_publish_blocking, server, blob, channel, key)
    await server.changed(channel)
    await actions.published(server, actions.actor(request), info)
    return json_ok({"release": info.to_dict()}, status=201)


async def list_releases(request: Request) -> Response:
    server = _server(request)
    channel = request.query_params.get("channel")
    if channel is not None:
        checked(channel, CHANNEL, "channel")
    infos = await server.run(server.store.releases, channel)
    return json_ok({"releases": [i.to_dict() for i in infos]})


async def _release(server: UpdateServer, request: Request) -> ReleaseInfo:
    raw = request.path_params["release_id"]
    if not raw.isdigit() or len(raw) > 9:
        raise ApiError(400, "a release id is a number")
    try:
        return await server.run(server.store.get, int(raw))
    except UsageError:
        raise ApiError(404, f"no release {raw}") from None


async def get_release(request: Request) -> Response:
    server = _server(request)
    info = await _release(server, request)
    return json_ok({"release": info.to_dict()})


SBOM_MAX = 4 * 1024 * 1024


def _sbom_sha256(server: UpdateServer, info: ReleaseInfo) -> str:
    """The SBOM hash the release's signed manifest names (build.sbom), else 404."""
    blob = server.store.artifact(info.file_sha256)
    if blob is None:
        raise ApiError(404, "the release's artifact is not stored on this server")
    sha = artifact_mod.decode(blob).manifest.build.get("sbom")
    if not isinstance(sha, str) or len(sha) != 64:
        raise ApiError(404, f"release {info.view.id} was built without an SBOM")
    return sha


async def put_sbom(request: Request) -> Response:
    """Store the release's CycloneDX SBOM: only the bytes whose SHA-256 the signed
    manifest names (so the SBOM served is the one the release key vouched for)."""
    server = _server(request)
    info = await _release(server, request)
    body = await read_body(request, SBOM_MAX)
    want = await server.run(_sbom_sha256, server, info)
    if hashlib.sha256(body).hexdigest() != want:
        raise ApiError(
            400, "this SBOM is not the one the release's signed manifest names (build.sbom)"
        )
    await server.run(server.store.put_artifact, want, body)
    return json_ok({"sbom": want}, status=201)


async def get_sbom(request: Request) -> Response:
    server = _server(request)
    info = await _release(server, request)
    sha = await server.run(_sbom_sha256, server, info)
    data = await server.run(server.store.artifact, sha)
    if data is None:
        raise ApiError(404, f"no SBOM was uploaded for release {info.view.id}")
    return Response(data, media_type="application/vnd.cyclonedx+json")


def _optional_number(f: Any, name: str, low: float, high: float, integer: bool = False) -> Any:
    value = f.raw().get(name)
    if value is None:
        return None
    if (
        not isinstance(value, (int, float))
        or isinstance(value, bool)
        or (integer and not isinstance(value, int))
        or not low <= value <= high
    ):
        raise ApiError(
            400,
            f"{name} must be {'an integer' if integer else 'a number'} {low:g}..{high:g} or null",
        )
    return int(value) if integer else float(value)


async def set_policy(request: Request) -> Response:
    """A release's own halt policy (null fields: the server's)."""
    server = _server(request)
    info = await _release(server, request)
    f = await read_json(request, server.config.limits.json_body_max, "policy request")
    known = {"min_attempts", "max_failure_ratio", "min_cohort_share"}
    unknown: set[str] = set(f.keys()) - known
    if unknown:
        raise ApiError(400, f"unknown policy field {min(unknown)!r}")
    overrides = PolicyOverrides(
        _optional_number(f, "min_attempts", 1, 10**9, integer=True),
        _optional_number(f, "max_failure_ratio", 0, 1),
        _optional_number(f, "min_cohort_share", 0, 1),
    )
    updated = await actions.set_policy(server, actions.actor(request), info, overrides)
    return json_ok({"release": updated.to_dict()})


async def promote(request: Request) -> Response:
    server = _server(request)
    info = await _release(server, request)
    f = await read_json(request, server.config.limits.json_body_max, "promote request")
    present: set[str] = set(f.keys())
    given = [k for k in ("percent", "group", "pin") if k in present]
    if len(given) != 1:
        raise ApiError(400, "promote takes exactly one of percent, group or pin")
    percent: float | None = None
    group: str | None = None
    pin: str | None = None
    if given[0] == "percent":
        value = f.raw()["percent"]
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0 <= value <= 100:
            raise ApiError(400, "percent must be a number 0..100")
        percent = float(value)
    elif given[0] == "group":
        group = checked(f.req_str("group", 64), GROUP, "group")
    else:
        pin = checked(f.req_str("pin", 64), HARDWARE_ID, "pin")
    updated = await actions.promote(
        server, actions.actor(request), info, percent=percent, group=group, pin=pin
    )
    return json_ok({"release": updated.to_dict()})


async def _set_state(request: Request, state: str) -> Response:
    """Pause or resume; an optional JSON body ``{"reason": TEXT}`` goes to the audit log.
    A release the server halted is resumed only with a reason (else 409, saying so)."""
    server = _server(request)
    info = await _release(server, request)
    f = await read_json(
        request, server.config.limits.json_body_max, f"{state} request", allow_empty=True
    )
    unknown: set[str] = set(f.keys()) - {"reason"}
    if unknown:
        raise ApiError(400, f"unknown field {min(unknown)!r}")
    reason = f.str("reason", RESUME_REASON_MAX, optional=True) or ""
    updated = await actions.set_state(
        server, actions.actor(request), info, state, devicelogs.clean(reason)
    )
    return json_ok({"release": updated.to_dict()})


async def pause(request: Request) -> Response:
    return await _set_state(request, "paused")


async def resume(request: Request) -> Response:
    return await _set_state(request, "active")


async def revoke_device(request: Request) -> Response:
    server = _server(request)
    hw = checked(request.path_params["hardware_id"], HARDWARE_ID, "hardware id")
    f = await read_json(
        request, server.config.limits.json_body_max, "revoke request", allow_empty=True
    )
    reason = f.str("reason", 200, optional=True) or ""
    if await server.run(server.registry.find_device, hw) is None:
        raise ApiError(404, f"no device {hw} in the registry")
    n = await actions.revoke(server, actions.actor(request), hw, reason)
    return json_ok({"hardware_id": hw, "state": "revoked", "certificates_revoked": n})


def _inventory_filter(request: Request) -> InventoryFilter:
    q = request.query_params
    unknown = set(q.keys()) - {
        "state",
        "group",
        "app",
        "version",
        "event",
        "seen_after",
        "seen_before",
        "expiring_before",
        "after",
        "limit",
    }
    if unknown:
        raise ApiError(400, f"unknown filter {min(unknown)!r}")

    def when(name: str) -> datetime | None:
        raw = q.get(name)
        if raw is None:
            return None
        try:
            dt = datetime.fromisoformat(raw)
        except ValueError:
            raise ApiError(400, f"{name} must be an ISO 8601 date and time") from None
        return dt if dt.tzinfo else dt.replace(tzinfo=UTC)

    state = q.get("state")
    if state is not None and state not in DEVICE_STATES:
        raise ApiError(400, f"state must be one of {', '.join(DEVICE_STATES)}")
    event = q.get("event")
    if event is not None and event not in UPDATE_STATES:
        raise ApiError(400, f"event must be one of {', '.join(UPDATE_STATES)}")
    opt = {
        name: checked(q[name], pattern, name) if name in q else None
        for name, pattern in (("group", GROUP), ("app", APP), ("version", VERSION))
    }
    return InventoryFilter(
        state=state,
        event=event,
        seen_after=when("seen_after"),
        seen_before=when("seen_before"),
        expiring_before=when("expiring_before"),
        **opt,
    )


def _int_param(request: Request, name: str, default: int, high: int) -> int:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 12 or int(raw) > high:
        raise ApiError(400, f"{name} must be a number 0..{high}")
    return int(raw)


async def list_devices(request: Request) -> Response:
    """One page of the inventory; ``next`` is the ``after`` of the next page (null: done)."""
    server = _server(request)
    flt = _inventory_filter(request)
    after = _int_param(request, "after", 0, 2**62)
    limit = _int_param(request, "limit", 1000, INVENTORY_PAGE_MAX) or 1
    rows = await server.run(server.registry.inventory, flt, after, limit)
    nxt = rows[-1]["id"] if len(rows) == limit else None
    return json_ok({"devices": rows, "next": nxt})


async def export_devices(request: Request) -> Response:
    """The whole (filtered) inventory as JSON lines, streamed page by page."""
    server = _server(request)
    flt = _inventory_filter(request)

    async def lines() -> AsyncIterator[bytes]:
        after = 0
        while True:
            rows = await server.run(server.registry.inventory, flt, after, INVENTORY_PAGE_MAX)
            if rows:
                yield b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in rows)
            if len(rows) < INVENTORY_PAGE_MAX:
                return
            after = int(rows[-1]["id"])  # type: ignore[call-overload]

    return StreamingResponse(lines(), media_type="application/x-ndjson")


async def set_group(request: Request) -> Response:
    server = _server(request)
    hw = checked(request.path_params["hardware_id"], HARDWARE_ID, "hardware id")
    f = await read_json(request, server.config.limits.json_body_max, "group request")
    group = checked(f.req_str("group", 64), GROUP, "group")
    if await server.run(server.registry.find_device, hw) is None:
        raise ApiError(404, f"no device {hw} in the registry")
    old = await actions.set_group(server, actions.actor(request), hw, group)
    return json_ok({"hardware_id": hw, "group": group, "previous_group": old})


ROUTES = [
    Route("/v1/admin/releases", publish, methods=["POST"]),
    Route("/v1/admin/releases", list_releases, methods=["GET"]),
    Route("/v1/admin/releases/{release_id}", get_release, methods=["GET"]),
    Route("/v1/admin/releases/{release_id}/promote", promote, methods=["POST"]),
    Route("/v1/admin/releases/{release_id}/sbom", put_sbom, methods=["PUT"]),
    Route("/v1/admin/releases/{release_id}/sbom", get_sbom, methods=["GET"]),
    Route("/v1/admin/releases/{release_id}/pause", pause, methods=["POST"]),
    Route("/v1/admin/releases/{release_id}/resume", resume, methods=["POST"]),
    Route("/v1/admin/releases/{release_id}/policy", set_policy, methods=["POST"]),
    Route("/v1/admin/devices/{hardware_id}/revoke", revoke_device, methods=["POST"]),
    Route("/v1/admin/devices", list_devices, methods=["GET"]),
    Route("/v1/admin/devices.jsonl", export_devices, methods=["GET"]),
    Route("/v1/admin/devices/{hardware_id}/group", set_group, methods=["POST"]),
]
