"""POST /v1/device/logs: a device hands over lines of its boot guard's log and its app's.

Body: ``{"hardware_id": ..., "lines": [["guard"|"app", "text"], ...]}``, at most
``devicelogs.LINES_MAX`` lines and ``devicelogs.BODY_MAX`` bytes; each line is cut to
``LINE_MAX`` printable characters. At most ``BATCHES_PER_MINUTE`` batches per device
(429 with Retry-After beyond: the device keeps its lines and sends them later). Threat
tier (DESIGN.md): T1 — a device credential cannot flood the store (bounded batches, rate
limit, newest ``KEEP_PER_DEVICE`` lines kept) or inject markup (lines are shown escaped).
"""

from __future__ import annotations

import time

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mpseal.fleet import devicelogs
from mpseal.server import auth
from mpseal.server.http import ApiError, json_ok, read_json
from mpseal.server.service import UpdateServer

_buckets: dict[tuple[int, int], tuple[float, float]] = {}  # (server, device) -> (tokens, at)


def _wait(server: UpdateServer, device_id: int) -> float:
    rate = devicelogs.BATCHES_PER_MINUTE / 60.0
    burst = float(devicelogs.BATCH_BURST)
    now = time.monotonic()
    key = (id(server), device_id)
    tokens, at = _buckets.get(key, (burst, now))
    tokens = min(burst, tokens + (now - at) * rate)
    if tokens < 1.0:
        _buckets[key] = (tokens, now)
        return (1.0 - tokens) / rate
    _buckets[key] = (tokens - 1.0, now)
    if len(_buckets) > server.config.limits.cache_entries_max:
        _buckets.clear()
    return 0.0


async def upload(request: Request) -> Response:
    server: UpdateServer = request.app.state.server
    dev = await auth.device(server, request)
    f = await read_json(request, devicelogs.BODY_MAX, "log upload")
    raw = f.raw()
    hw = raw.get("hardware_id")
    if hw is not None and hw != dev.hardware_id:
        raise ApiError(403, "hardware_id is not this device's")
    lines = raw.get("lines")
    if not isinstance(lines, list) or len(lines) > devicelogs.LINES_MAX:
        raise ApiError(
            400, f"lines must be a list of at most {devicelogs.LINES_MAX} [source, text] pairs"
        )
    batch: list[tuple[str, str]] = []
    for item in lines:
        if (
            not isinstance(item, list)
            or len(item) != 2
            or item[0] not in devicelogs.SOURCES
            or not isinstance(item[1], str)
        ):
            raise ApiError(400, 'each line is ["guard" or "app", text]')
        batch.append((item[0], item[1]))
    wait = _wait(server, dev.id)
    if wait > 0:
        raise ApiError(
            429, "too many log uploads from this device", {"Retry-After": str(max(1, round(wait)))}
        )
    n = await server.run(devicelogs.append, server.registry, dev.id, batch)
    return json_ok({"recorded": n})


ROUTES = [Route("/v1/device/logs", upload, methods=["POST"])]
