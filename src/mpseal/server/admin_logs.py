"""The admin read API for logs (bearer admin token): the audit log of admin actions and
each device's log lines, as JSON pages, newest first.

Keyset pages: ``next`` is the ``before`` of the next (older) page, null on the last one,
so a page costs the same at any depth. The audit log's chain is checked by
``GET /v1/admin/audit-log/verify`` (the same walk as ``mpseal audit-log verify``).
"""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from mpseal.errors import IntegrityError
from mpseal.fleet import devicelogs
from mpseal.fleet.auditlog import PAGE_MAX as AUDIT_PAGE_MAX
from mpseal.formats.names import AUDIT_ACTION, HARDWARE_ID, SHA256_HEX
from mpseal.server import actions, auth
from mpseal.server.http import ApiError, checked, json_ok
from mpseal.server.service import UpdateServer


def _server(request: Request) -> UpdateServer:
    server: UpdateServer = request.app.state.server
    auth.admin(server, request)
    return server


def _only(request: Request, *names: str) -> None:
    unknown = set(request.query_params.keys()) - set(names)
    if unknown:
        raise ApiError(400, f"unknown parameter {min(unknown)!r}")


def _int(request: Request, name: str, default: int | None, low: int, high: int) -> int | None:
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not raw.isdigit() or len(raw) > 18 or not low <= int(raw) <= high:
        raise ApiError(400, f"{name} must be a number {low}..{high}")
    return int(raw)


async def audit_log(request: Request) -> Response:
    """One page of the audit log, newest first (``action``: only that action)."""
    server = _server(request)
    _only(request, "before", "limit", "action")
    before = _int(request, "before", None, 1, 2**62)
    limit = _int(request, "limit", 50, 1, AUDIT_PAGE_MAX) or 50
    action = request.query_params.get("action")
    if action is not None:
        checked(action, AUDIT_ACTION, "action")
    entries = await server.run(actions.audit_log(server).page, before, limit, action)
    nxt = entries[-1].seq if len(entries) == limit else None
    return json_ok({"entries": [e.to_dict() for e in entries], "next": nxt})


async def verify_audit_log(request: Request) -> Response:
    """Walk the chain: ``ok`` with its rows and head, or ``ok: false`` and the first row
    that does not fit; ``head``: the head recorded earlier (also finds rows cut off the end)."""
    server = _server(request)
    _only(request, "head")
    head = request.query_params.get("head")
    if head is not None:
        checked(head, SHA256_HEX, "head")
    try:
        done = await server.run(actions.audit_log(server).verify, head)
    except IntegrityError as e:
        return json_ok({"ok": False, "error": str(e)})
    return json_ok({"ok": True, "rows": done.rows, "head": done.head})


async def device_logs(request: Request) -> Response:
    """One page of a device's log lines (its guard's and its app's), newest first."""
    server = _server(request)
    _only(request, "before", "limit")
    hw = checked(request.path_params["hardware_id"], HARDWARE_ID, "hardware id")
    before = _int(request, "before", None, 1, 2**62)
    limit = _int(request, "limit", 100, 1, devicelogs.PAGE_MAX) or 100
    dev = await server.run(server.registry.find_device, hw)
    if dev is None:
        raise ApiError(404, f"no device {hw} in the registry")
    lines = await server.run(devicelogs.page, server.registry, dev.id, before, limit)
    nxt = lines[-1].id if len(lines) == limit else None
    return json_ok({"hardware_id": hw, "lines": [ln.to_dict() for ln in lines], "next": nxt})


ROUTES = [
    Route("/v1/admin/audit-log", audit_log, methods=["GET"]),
    Route("/v1/admin/audit-log/verify", verify_audit_log, methods=["GET"]),
    Route("/v1/admin/devices/{hardware_id}/logs", device_logs, methods=["GET"]),
]
