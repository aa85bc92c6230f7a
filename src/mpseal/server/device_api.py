"""The device API of docs/updates.md: check, timestamp, roots, artifacts, report.

Every call authenticates the device first (a revoked one gets 403 everywhere). A check
costs at most one indexed device lookup; releases and the channel's timestamp come
from short in-memory caches.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from starlette.requests import Request
from starlette.responses import FileResponse, RedirectResponse, Response
from starlette.routing import Route

from mpseal.errors import FormatError
from mpseal.fleet.releases import FAILED_EVENTS, REPORT_EVENTS
from mpseal.fleet.releasestore import Report
from mpseal.fleet.rollout import DeviceView, ReleaseView, Running, choose, in_rollout
from mpseal.formats import encrypted, jsondoc
from mpseal.formats.names import APP_NAME, BOARD, CHANNEL, HARDWARE_ID, SHA256_HEX, VERSION
from mpseal.fsutil import write_atomic
from mpseal.server import auth
from mpseal.server.batch import settle
from mpseal.server.http import (
    ApiError,
    checked,
    json_bytes,
    json_encoded,
    parse_json,
    read_json,
)
from mpseal.server.roots import ROOT_NAME
from mpseal.server.service import UpdateServer
from mpseal.server.timestamps import CurrentTimestamp

ARTIFACT_NAME = re.compile(rf"({SHA256_HEX.pattern})\.mpseal")
DELTA_NAME = re.compile(rf"({SHA256_HEX.pattern})\.mpsd")
TIMESTAMP_NAME = re.compile(rf"({CHANNEL.pattern})\.mpst")  # one timestamp per channel
REASON_MAX = 200
_RECORDED = json_bytes({"recorded": True})
NO_STORE = {"Cache-Control": "no-store"}
# Artifacts are named by their SHA-256 and roots by their version: never changed, so any
# cache (a CDN in front of several servers) may keep them.
IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


def _server(request: Request) -> UpdateServer:
    server: UpdateServer = request.app.state.server
    return server


def _hardware_id(f: jsondoc.Fields, device_hw: str) -> str:
    hw = checked(f.req_str("hardware_id", 64), HARDWARE_ID, "hardware_id")
    if hw != device_hw:
        raise ApiError(403, "hardware_id is not the one of the authenticated device")
    return hw


def _channel(f: jsondoc.Fields, default: str) -> str:
    value = f.str("channel", 32, optional=True)
    return default if value is None else checked(value, CHANNEL, "channel")


async def check(request: Request) -> Response:
    server = _server(request)
    dev = await auth.device(server, request)
    f = await read_json(request, server.config.limits.json_body_max, "check request")
    running, channel = _check_request(server, dev, f)
    ts = await server.timestamp(channel)
    if ts is None:
        raise ApiError(404, f"no channel {channel!r} on this server")
    releases = await server.channel_releases(channel, running.app, running.board)
    return json_encoded(_check_answer(server, dev, running, channel, ts, releases))


def check_now(
    server: UpdateServer, tls: Mapping[str, Any] | None, authorization: str | None, body: bytes
) -> bytes | None:
    """The body of ``check``'s answer when all it needs is in this process's memory (the
    device, the channel's timestamp and releases, all current): no waiting, so the server
    may answer it in the protocol, with no ASGI request. None otherwise, and for anything
    ``check`` answers with an error: then ``check`` runs and answers (the same rules)."""
    if len(body) > server.config.limits.json_body_max:
        return None
    try:
        dev = server.device_now(*auth.credential_of(tls, authorization))
        if dev is None:
            return None
        running, channel = _check_request(server, dev, parse_json(body, "check request"))
        ts = server.timestamp_now(channel)
        releases = server.channel_releases_now(channel, running.app, running.board)
        if ts is None or ts[0] is None or releases is None:
            return None
        answer = _check_answer(server, dev, running, channel, ts[0], releases[0])
    except Exception:  # noqa: BLE001 - check answers it, with its error
        return None
    server.checks_at_once += 1
    return answer


def _check_request(server: UpdateServer, dev: DeviceView, f: jsondoc.Fields) -> tuple[Running, str]:
    """What the device says it runs, and the channel it asks about."""
    _hardware_id(f, dev.hardware_id)
    running = Running(
        app=checked(f.req_str("app", 64), APP_NAME, "app"),
        board=checked(f.req_str("board", 32), BOARD, "board"),
        version=checked(f.req_str("version", 32), VERSION, "version"),
        counter=f.int("counter", 0, 2**31 - 1),
    )
    f.int("timestamp_version", 0, 2**53 - 1)
    return running, _channel(f, server.config.default_channel)


def _check_answer(
    server: UpdateServer,
    dev: DeviceView,
    running: Running,
    channel: str,
    ts: CurrentTimestamp,
    releases: list[ReleaseView],
) -> bytes:
    chosen = choose(releases, dev, running, ts.targets)
    server.note_checkin(dev.id, running.app, running.version, running.counter, channel)
    if chosen is None:  # most checks: the same bytes for every device of the channel
        return _no_update(channel, ts.root_version)
    answer = _answer(channel, ts.root_version, True)
    answer["target"] = ts.targets[chosen.manifest_sha256]
    if chosen.key is not None:  # encrypted: its key, wrapped for this device alone
        image_sha256, key = chosen.key
        answer["key"] = encrypted.wrap(key, dev.hardware_id, image_sha256).hex()
    delta = chosen.delta_from(running.version)
    if delta is not None:  # a hint: the device rebuilds and checks the signed release
        answer["delta"] = {
            "path": f"deltas/{delta[1]}.mpsd",
            "size": delta[2],
            "from": delta[0],
        }
    return json_bytes(answer)


def _answer(channel: str, root_version: int, update: bool) -> dict[str, object]:
    return {
        "update": update,
        "timestamp": f"timestamp/{channel}.mpst",
        "root_version": root_version,
    }


@lru_cache(maxsize=1024)
def _no_update(channel: str, root_version: int) -> bytes:
    """The answer to a check with nothing to offer, encoded once (a check's JSON encoding
    was ~4 % of a worker's samples under keep-alive checks)."""
    return json_bytes(_answer(channel, root_version, False))


async def timestamp(request: Request) -> Response:
    server = _server(request)
    await auth.device(server, request)
    m = TIMESTAMP_NAME.fullmatch(request.path_params["name"])
    if not m:
        raise ApiError(400, "a timestamp is named <channel>.mpst")
    ts = await server.timestamp(m.group(1))
    if ts is None:
        raise ApiError(404, f"no channel {m.group(1)!r} on this server")
    return Response(ts.data, media_type="application/octet-stream", headers=NO_STORE)


async def root(request: Request) -> Response:
    server = _server(request)
    await auth.device(server, request)
    m = ROOT_NAME.fullmatch(request.path_params["name"])
    if not m:
        raise ApiError(400, "a trust root is named <version>.mpsr")
    data = await server.run(server.roots.read, int(m.group(1)))
    if data is None:
        raise ApiError(404, f"no trust root version {m.group(1)}")
    return Response(data, media_type="application/octet-stream", headers=IMMUTABLE)


def _cache_artifact(server: UpdateServer, name: str, path: Path) -> bool:
    """Fetch an artifact (or delta) another server published from the database into this
    server's folder (a cache: the database is where every server finds it)."""
    data = server.store.artifact(name.split(".")[0])
    if data is None:
        return False
    if not path.is_file():
        write_atomic(path, data)
    return True


async def artifact(request: Request) -> Response:
    """The artifact file, with HTTP Range (resume); or a redirect to the configured CDN."""
    server = _server(request)
    await auth.device(server, request)
    name = request.path_params["name"]
    if not ARTIFACT_NAME.fullmatch(name):
        raise ApiError(400, "an artifact is named <64 hex digits>.mpseal")
    base = server.config.artifact_base_url
    if base:
        return RedirectResponse(f"{base.rstrip('/')}/{name}", status_code=302)
    path = Path(server.config.artifacts_dir) / name
    if not path.is_file() and not await server.run(_cache_artifact, server, name, path):
        raise ApiError(404, f"no artifact {name}")
    return FileResponse(path, media_type="application/octet-stream", headers=IMMUTABLE)


async def delta(request: Request) -> Response:
    """A delta file (formats/delta.py), with HTTP Range (resume); named by its SHA-256."""
    server = _server(request)
    await auth.device(server, request)
    name = request.path_params["name"]
    if not DELTA_NAME.fullmatch(name):
        raise ApiError(400, "a delta is named <64 hex digits>.mpsd")
    path = Path(server.config.artifacts_dir) / name
    if not path.is_file() and not await server.run(_cache_artifact, server, name, path):
        raise ApiError(404, f"no delta {name}")
    return FileResponse(path, media_type="application/octet-stream", headers=IMMUTABLE)


def _offered_board(dev: DeviceView, board: str | None, version: str) -> str | None:
    """The board whose releases a report may be about (the registered one), or None when
    it can be about none (no version, no board, or another board than the device's)."""
    board = board or dev.board
    if not version or not board or (dev.board and board != dev.board):
        return None
    return board


def _offered_in(releases: list[ReleaseView], dev: DeviceView, version: str) -> int | None:
    """The promoted release of this version among the channel's, if the device is in its
    rollout (pinned, in a group, or in the cohort). An older client names no app: the one
    release of that version for the board, if one."""
    found = [r for r in releases if r.version == version and r.promoted]
    if len(found) != 1 or not in_rollout(found[0], dev):
        return None
    return found[0].id


async def _offered_release(server: UpdateServer, dev: DeviceView, r: _ReportRequest) -> int | None:
    """The release this report is about, if it was offered to this device: its app,
    board (the registered one) and channel, promoted, and the device in its rollout.
    Else None: the report is kept, not counted."""
    board = _offered_board(dev, r.board, r.version)
    if board is None:
        return None
    return _offered_in(await server.channel_releases(r.channel, r.app or "", board), dev, r.version)


@dataclass(frozen=True)
class _ReportRequest:
    event: str
    version: str
    reason: str
    app: str | None
    board: str | None
    channel: str

    def report(self, device_id: int, release_id: int | None) -> Report:
        return Report(
            device_id, self.event, self.version, self.reason, release_id, self.app, self.channel
        )


def _report_request(server: UpdateServer, dev: DeviceView, f: jsondoc.Fields) -> _ReportRequest:
    """What the device reports, checked."""
    _hardware_id(f, dev.hardware_id)
    event = f.req_str("event", 16)
    if event not in REPORT_EVENTS:
        raise FormatError(f"report event must be one of {', '.join(REPORT_EVENTS)}")
    version = f.str("version", 32, optional=True) or ""
    if version or event != "refused":  # a refusal before any version was read has none
        checked(version, VERSION, "version")
    reason = " ".join((f.str("reason", REASON_MAX, optional=True) or "").split())
    app = f.str("app", 64, optional=True)
    board = f.str("board", 32, optional=True)
    if app is not None:
        checked(app, APP_NAME, "app")
    if board is not None:
        checked(board, BOARD, "board")
    return _ReportRequest(
        event, version, reason, app, board, _channel(f, server.config.default_channel)
    )


def _stored(server: UpdateServer, key: tuple[str, str], report: Report) -> None:
    """A report was stored: a release it failed is not offered to the device again."""
    if report.event in FAILED_EVENTS and report.release_id is not None:
        server.devices.invalidate(key)  # (the directory: as stored)


async def report(request: Request) -> Response:
    """Acknowledged only once stored. The answer names no release (devices learn nothing
    of other releases from it); a device over its report rate gets 429 with Retry-After."""
    server = _server(request)
    key = auth.credential(request)
    dev = await auth.device_of(server, key)
    f = await read_json(request, server.config.limits.json_body_max, "report")
    r = _report_request(server, dev, f)
    wait = server.report_wait(dev.id)
    if wait > 0:
        raise ApiError(
            429, "too many reports from this device", {"Retry-After": str(max(1, round(wait)))}
        )
    entry = r.report(dev.id, await _offered_release(server, dev, r))
    await server.report(entry)
    _stored(server, key, entry)
    return json_encoded(_RECORDED)


def report_now(
    server: UpdateServer, tls: Mapping[str, Any] | None, authorization: str | None, body: bytes
) -> asyncio.Future[bytes] | None:
    """``report`` with no ASGI request, when all it needs before the store is in this
    process's memory (the device, the channel's releases): the storing of the report,
    whose result is the answer's body (its error, the app's error answer: http.error_for).
    None otherwise, and for anything ``report`` answers with an error before storing (a
    bad report, a device over its rate): then ``report`` runs and answers (the same rules).
    A report's rate token is taken only here, once nothing else can send it to the app."""
    if len(body) > server.config.limits.json_body_max:
        return None
    try:
        key = auth.credential_of(tls, authorization)
        dev = server.device_now(*key)
        if dev is None:
            return None
        r = _report_request(server, dev, parse_json(body, "report"))
        board = _offered_board(dev, r.board, r.version)
        release_id = None
        if board is not None:
            releases = server.channel_releases_now(r.channel, r.app or "", board)
            if releases is None:
                return None
            release_id = _offered_in(releases[0], dev, r.version)
    except Exception:  # noqa: BLE001 - report answers it, with its error
        return None
    if server.report_wait(dev.id) > 0:
        return None  # report answers the 429 (no token was taken)
    server.reports_at_once += 1
    entry = r.report(dev.id, release_id)
    answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def stored(error: BaseException | None) -> None:  # as report's end, with no task
        if error is None and not answer.done():
            _stored(server, key, entry)
        settle(answer, _RECORDED, error)

    server.report_later(entry, stored)
    return answer


ROUTES = [
    Route("/v1/device/check", check, methods=["POST"]),
    Route("/v1/device/report", report, methods=["POST"]),
    Route("/v1/timestamp/{name}", timestamp, methods=["GET"]),
    Route("/v1/roots/{name}", root, methods=["GET"]),
    Route("/v1/artifacts/{name}", artifact, methods=["GET", "HEAD"]),
    Route("/v1/deltas/{name}", delta, methods=["GET", "HEAD"]),
]
