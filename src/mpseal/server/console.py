"""The fleet console: server-rendered pages (Jinja2) under ``/console``, behind the admin
login, with a little vendored htmx (``static/htmx.min.js``, htmx.org 2.0.11, BSD-2-Clause,
see ``static/htmx.LICENSE``) for polling. Nothing is fetched from elsewhere at run time.

Login: an admin token is exchanged for a session cookie (HttpOnly, SameSite=Strict,
Secure under TLS, 8 hours). The cookie is ``<token id>.<expiry>.<nonce>.<mac>``, the MAC
keyed by HMAC(console secret, the token's SHA-256): a token taken out of the server's
configuration ends its sessions, and every worker and server that shares
``MPSEAL_CONSOLE_SECRET`` (``serve`` sets one for its workers) accepts the same cookie.
Every POST carries a CSRF token (HMAC of the session's nonce) and, when the browser
sends one, an Origin that must be this server's. Threat tier (DESIGN.md): T1 — a
network or web attacker without the admin token; a stolen cookie is good until it expires.

The buttons call the same service code as the admin API and the CLI (server/actions.py),
so each action lands in the audit log with the token id of the session.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import os
import secrets
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote

from starlette.requests import Request
from starlette.responses import HTMLResponse, RedirectResponse, Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from mpseal.errors import UsageError
from mpseal.fleet import consoledata, devicelogs
from mpseal.fleet.certstore import expiry
from mpseal.fleet.registry import InventoryFilter
from mpseal.fleet.releasestore import ReleaseInfo
from mpseal.formats.names import GROUP, HARDWARE_ID, VERSION
from mpseal.server import actions
from mpseal.server.service import UpdateServer

log = logging.getLogger("mpseal.server")
HERE = Path(__file__).parent
COOKIE = "mpseal_console"
SESSION_SECONDS = 8 * 3600
SECRET_ENV = "MPSEAL_CONSOLE_SECRET"
FORM_MAX = 4096
PAGE = 50
OVERVIEW_TTL = 5.0  # seconds an overview's aggregates are reused

templates = Jinja2Templates(directory=str(HERE / "templates"))
# Scripts and styles from this server only (no inline script runs, even if a device's
# log line slipped markup through); no framing; nothing cached. Referrer-Policy
# same-origin, not no-referrer: with no-referrer Chromium sends "Origin: null" on POST.
HEADERS = {
    "Content-Security-Policy": "default-src 'self'; script-src 'self'; "
    "style-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; "
    "base-uri 'none'",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
    "Referrer-Policy": "same-origin",
    "X-Content-Type-Options": "nosniff",
}


def _fmt_time(dt: datetime | None) -> str:
    if dt is None:
        return "never"
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _plain(value: object) -> str:
    """A detail value as text: strings as they are, the rest as JSON (null, lists)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


templates.env.filters["t"] = _fmt_time
templates.env.filters["plain"] = _plain


# -- sessions --------------------------------------------------------------------------


def _secret() -> bytes:
    raw = os.environ.get(SECRET_ENV)
    if not raw:
        raw = secrets.token_hex(32)
        os.environ[SECRET_ENV] = raw  # this process and the workers it starts
    return raw.encode()


def _key(token_sha256: str) -> bytes:
    return hmac.new(_secret(), b"console session:" + token_sha256.encode(), hashlib.sha256).digest()


def _mac(key: bytes, text: str) -> str:
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()


def new_session(token_sha256: str, now: float | None = None) -> str:
    body = (
        f"{token_sha256[:16]}.{int((now or time.time()) + SESSION_SECONDS)}.{secrets.token_hex(12)}"
    )
    return f"{body}.{_mac(_key(token_sha256), body)}"


class Session:
    def __init__(self, admin_id: str, csrf: str) -> None:
        self.admin_id = admin_id
        self.csrf = csrf


def session_of(server: UpdateServer, request: Request) -> Session | None:
    raw = request.cookies.get(COOKIE, "")
    parts = raw.split(".")
    if len(parts) != 4 or len(raw) > 200:
        return None
    tid, exp, nonce, mac = parts
    if not exp.isdigit() or int(exp) < time.time():
        return None
    for h in server.config.admin_token_hashes:
        if h[:16] == tid:
            key = _key(h)
            if hmac.compare_digest(_mac(key, f"{tid}.{exp}.{nonce}"), mac):
                return Session("token:" + tid, _mac(key, "csrf:" + nonce)[:40])
    return None


def _token_ok(server: UpdateServer, token: str) -> str | None:
    digest = hashlib.sha256(token.encode()).hexdigest()
    ok = False
    for expected in server.config.admin_token_hashes:
        ok |= hmac.compare_digest(digest, expected)
    return digest if ok else None


class LoginNeeded(Exception):
    pass


def _server(request: Request) -> UpdateServer:
    return request.app.state.server  # type: ignore[no-any-return]


def _login_redirect(request: Request) -> Response:
    nxt = request.url.path
    if request.url.query:
        nxt += "?" + request.url.query
    return RedirectResponse("/console/login?next=" + quote(nxt, safe=""), status_code=303)


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


async def _form(request: Request) -> dict[str, str]:
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > FORM_MAX:
            raise UsageError("form too large")
    try:
        parsed = parse_qs(body.decode("utf-8"), keep_blank_values=True, max_num_fields=20)
    except (UnicodeDecodeError, ValueError):
        return {}
    return {k: v[0] for k, v in parsed.items()}


def _same_origin(request: Request) -> bool:
    origin = request.headers.get("origin")
    if origin is None or origin == "null":
        return origin is None  # "null" (a sandboxed or privacy-stripped origin): refuse
    return origin == f"{request.url.scheme}://{request.headers.get('host', '')}"


async def _checked_post(request: Request) -> tuple[UpdateServer, Session, dict[str, str]]:
    """An authenticated POST: session, same origin, CSRF token; else a 403 page."""
    server = _server(request)
    sess = session_of(server, request)
    if sess is None:
        raise LoginNeeded
    form = await _form(request)
    if not _same_origin(request) or not hmac.compare_digest(form.get("csrf", ""), sess.csrf):
        raise PermissionError("CSRF check failed: reload the page and try again")
    request.state.admin_id = sess.admin_id
    return server, sess, form


def _page(request: Request, name: str, sess: Session, code: int = 200, **ctx: Any) -> Response:
    ctx.update(csrf=sess.csrf, admin_id=sess.admin_id, path=request.url.path)
    resp = templates.TemplateResponse(request, name, ctx, status_code=code)
    resp.headers.update(HEADERS)
    return resp


def guarded(handler: Any) -> Any:
    """A console page: its session (else to the login page); errors as a page."""

    async def run(request: Request) -> Response:
        server = _server(request)
        try:
            if request.method == "GET":
                sess = session_of(server, request)
                if sess is None:
                    raise LoginNeeded
                request.state.admin_id = sess.admin_id
                return await handler(request, server, sess)  # type: ignore[no-any-return]
            return await handler(request)  # type: ignore[no-any-return]
        except LoginNeeded:
            if request.method == "GET" and request.headers.get("hx-request"):
                return Response(status_code=401, headers={"HX-Redirect": "/console/login"})
            return _login_redirect(request)
        except PermissionError as e:
            return HTMLResponse(f"<p>{_esc(str(e))}</p>", status_code=403)
        except (UsageError, LookupError) as e:
            sess = session_of(server, request)
            if sess is None:
                return _login_redirect(request)
            return _page(
                request,
                "error.html",
                sess,
                code=404 if isinstance(e, LookupError) else 400,
                message=str(e),
            )

    run.__name__ = handler.__name__
    return run


def _esc(text: str) -> str:
    return (
        text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;").replace('"', "&quot;")
    )


# -- login -----------------------------------------------------------------------------


def _next(raw: str | None) -> str:
    if raw and raw.startswith("/console") and "//" not in raw and "\\" not in raw:
        return raw
    return "/console/"


async def login_form(request: Request) -> Response:
    return templates.TemplateResponse(
        request,
        "login.html",
        {"next": _next(request.query_params.get("next")), "error": None},
        headers=HEADERS,
    )


async def login(request: Request) -> Response:
    server = _server(request)
    form = await _form(request)
    nxt = _next(form.get("next"))
    digest = _token_ok(server, form.get("token", "").strip()) if _same_origin(request) else None
    if digest is None:
        await asyncio.sleep(0.5)  # a guess costs time
        return templates.TemplateResponse(
            request,
            "login.html",
            {"next": nxt, "error": "This admin token is not accepted."},
            status_code=401,
            headers=HEADERS,
        )
    resp = RedirectResponse(nxt, status_code=303)
    resp.set_cookie(
        COOKIE,
        new_session(digest),
        max_age=SESSION_SECONDS,
        path="/console",
        httponly=True,
        samesite="strict",
        secure=_secure(request),
    )
    return resp


async def logout(request: Request) -> Response:
    await _checked_post(request)
    resp = RedirectResponse("/console/login", status_code=303)
    resp.delete_cookie(
        COOKIE, path="/console", httponly=True, samesite="strict", secure=_secure(request)
    )
    return resp


# -- pages -----------------------------------------------------------------------------

_overview_cache: dict[int, tuple[float, dict[str, object]]] = {}


async def overview(request: Request, server: UpdateServer, sess: Session) -> Response:
    now = time.monotonic()
    hit = _overview_cache.get(id(server))
    if hit is None or now - hit[0] > OVERVIEW_TTL:
        data = await server.run(consoledata.fleet_overview, server.registry)
        _overview_cache[id(server)] = (now, data)
    else:
        data = hit[1]
    infos = await server.run(server.store.releases, None)
    releases = [(i, consoledata.counts_of(i)) for i in reversed(infos[-PAGE:])]
    if request.headers.get("hx-request"):
        return _page(request, "overview_live.html", sess, fleet=data, releases=releases)
    return _page(request, "overview.html", sess, fleet=data, releases=releases)


async def _release(server: UpdateServer, raw: str) -> ReleaseInfo:
    if not raw.isdigit() or len(raw) > 9:
        raise LookupError("a release id is a number")
    try:
        return await server.run(server.store.get, int(raw))
    except UsageError:
        raise LookupError(f"no release {raw}") from None


async def _release_ctx(server: UpdateServer, info: ReleaseInfo) -> dict[str, Any]:
    samples = await server.run(consoledata.samples, server.registry, info.view.id)
    return {
        "r": info,
        "counts": consoledata.counts_of(info),
        "chart": chart_svg(samples, consoledata.counts_of(info), info.view.state),
    }


async def release_page(request: Request, server: UpdateServer, sess: Session) -> Response:
    info = await _release(server, request.path_params["release_id"])
    return _page(request, "release.html", sess, **await _release_ctx(server, info))


async def release_live(request: Request, server: UpdateServer, sess: Session) -> Response:
    info = await _release(server, request.path_params["release_id"])
    return _page(request, "release_live.html", sess, **await _release_ctx(server, info))


async def release_action(request: Request) -> Response:
    server, sess, form = await _checked_post(request)
    info = await _release(server, request.path_params["release_id"])
    what = request.path_params["action"]
    who = sess.admin_id
    if what == "promote":
        try:
            percent = float(form.get("percent", ""))
        except ValueError:
            raise UsageError("percent must be a number 0..100") from None
        if not 0 <= percent <= 100:
            raise UsageError("percent must be a number 0..100")
        await actions.promote(server, who, info, percent=percent)
    elif what in ("pause", "resume"):
        await actions.set_state(
            server,
            who,
            info,
            "paused" if what == "pause" else "active",
            devicelogs.clean(form.get("reason", "")),
        )
    else:
        raise LookupError(f"no action {what}")
    await sample_now(server)
    return RedirectResponse(f"/console/releases/{info.view.id}", status_code=303)


def _device_filter(request: Request) -> tuple[InventoryFilter, dict[str, str]]:
    q = request.query_params
    given: dict[str, str] = {}
    for name, pattern in (("group", GROUP), ("version", VERSION)):
        v = q.get(name, "")
        if v:
            if not pattern.fullmatch(v):
                raise UsageError(f"{name} {v!r} is not valid")
            given[name] = v
    state = q.get("state", "")
    if state:
        if state not in ("provisioning", "active", "revoked"):
            raise UsageError("state must be provisioning, active or revoked")
        given["state"] = state
    seen = q.get("silent_days", "")
    seen_before = None
    if seen:
        if not seen.isdigit() or int(seen) > 3650:
            raise UsageError("silent_days must be a number of days")
        given["silent_days"] = seen
        seen_before = datetime.now(UTC) - timedelta(days=int(seen))
    return InventoryFilter(
        state=given.get("state"),
        group=given.get("group"),
        version=given.get("version"),
        seen_before=seen_before,
    ), given


async def devices_page(request: Request, server: UpdateServer, sess: Session) -> Response:
    flt, given = _device_filter(request)
    raw = request.query_params.get("after", "0")
    after = int(raw) if raw.isdigit() and len(raw) < 19 else 0
    rows = await server.run(server.registry.inventory, flt, after, PAGE)
    nxt = rows[-1]["id"] if len(rows) == PAGE else None
    return _page(request, "devices.html", sess, rows=rows, given=given, next=nxt, after=after)


async def _device(server: UpdateServer, hw: str) -> Any:
    if not HARDWARE_ID.fullmatch(hw):
        raise LookupError("not a hardware id")
    dev = await server.run(server.registry.find_device, hw)
    if dev is None:
        raise LookupError(f"no device {hw}")
    return dev


async def _device_ctx(server: UpdateServer, hw: str) -> dict[str, Any]:
    dev = await _device(server, hw)
    status = await server.run(server.registry.inventory, InventoryFilter(), dev.id - 1, 1)
    return {
        "d": dev,
        "status": status[0] if status and status[0]["id"] == dev.id else {},
        "certs": await server.run(consoledata.certificates_of, server.registry, dev.id),
        "history": await server.run(consoledata.device_history, server.registry, dev.id),
        "logs": await server.run(devicelogs.recent, server.registry, dev.id, 200),
    }


async def device_page(request: Request, server: UpdateServer, sess: Session) -> Response:
    ctx = await _device_ctx(server, request.path_params["hardware_id"])
    return _page(request, "device.html", sess, **ctx)


async def device_live(request: Request, server: UpdateServer, sess: Session) -> Response:
    ctx = await _device_ctx(server, request.path_params["hardware_id"])
    return _page(request, "device_live.html", sess, **ctx)


async def device_revoke(request: Request) -> Response:
    server, sess, form = await _checked_post(request)
    dev = await _device(server, request.path_params["hardware_id"])
    if form.get("confirm") != dev.hardware_id:
        raise UsageError("type the device's hardware id to confirm the revocation")
    await actions.revoke(
        server,
        sess.admin_id,
        dev.hardware_id,
        devicelogs.clean(form.get("reason", "")) or "revoked in the console",
    )
    return RedirectResponse(f"/console/devices/{dev.hardware_id}", status_code=303)


async def certificates_page(request: Request, server: UpdateServer, sess: Session) -> Response:
    now = datetime.now(UTC)
    timeline = await server.run(consoledata.expiry_timeline, server.registry, now)
    soonest, more = await server.run(
        expiry, server.registry, now, timedelta(days=30), timedelta(days=3650), PAGE
    )
    return _page(
        request,
        "certificates.html",
        sess,
        timeline=timeline,
        bars=bars_svg(timeline),
        soonest=soonest,
        more=more,
        now=now,
    )


async def audit_page(request: Request, server: UpdateServer, sess: Session) -> Response:
    log_ = actions.audit_log(server)
    raw = request.query_params.get("before", "")
    before = int(raw) if raw.isdigit() and len(raw) < 19 else None
    entries = await server.run(log_.page, before, PAGE)
    verified = error = None
    if request.query_params.get("verify"):
        try:
            verified = await server.run(log_.verify)
        except Exception as e:  # noqa: BLE001 - shown as the verification's answer
            error = str(e)
    nxt = entries[-1].seq if len(entries) == PAGE else None
    return _page(
        request, "audit.html", sess, entries=entries, verified=verified, error=error, next=nxt
    )


# -- charts (inline SVG, drawn here) -----------------------------------------------------

COLOURS = {
    "offered": "#6b7280",
    "staged": "#2563eb",
    "confirmed": "#15803d",
    "rolled_back": "#b91c1c",
    "refused": "#c2410c",
}
LABELS = {
    "offered": "offered",
    "staged": "staged / in trial",
    "confirmed": "confirmed",
    "rolled_back": "rolled back",
    "refused": "refused",
}


def chart_svg(samples: list[consoledata.Sample], now_counts: dict[str, int], state: str) -> str:
    """The rollout over time: one line per series, the latest counts as the last point."""
    w, h, left, bottom, top, right = 720, 260, 48, 28, 12, 12
    points = [(s.at, s.counts) for s in samples]
    now = datetime.now(UTC)
    points.append((now, now_counts))
    t0 = points[0][0]
    span = max((now - t0).total_seconds(), 1.0)
    top_value = max(1, *(max(c.values()) for _, c in points))
    sx = (w - left - right) / span
    sy = (h - top - bottom) / top_value

    def xy(at: datetime, v: int) -> str:
        return f"{left + (at - t0).total_seconds() * sx:.1f},{h - bottom - v * sy:.1f}"

    parts = [
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="chart-title" '
        f'class="chart" preserveAspectRatio="xMidYMid meet">',
        '<title id="chart-title">Rollout over time: devices offered, staged, '
        "confirmed, rolled back and refused</title>",
        f'<line x1="{left}" y1="{h - bottom}" x2="{w - right}" y2="{h - bottom}" '
        'stroke="#9ca3af"/>',
        f'<line x1="{left}" y1="{top}" x2="{left}" y2="{h - bottom}" stroke="#9ca3af"/>',
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end" class="axis">{top_value}</text>',
        f'<text x="{left - 6}" y="{h - bottom}" text-anchor="end" class="axis">0</text>',
        f'<text x="{left}" y="{h - 8}" class="axis">{t0:%H:%M:%S}</text>',
        f'<text x="{w - right}" y="{h - 8}" text-anchor="end" class="axis">'
        f"{now:%H:%M:%S} UTC</text>",
    ]
    for key in consoledata.SERIES:
        path = " ".join(xy(at, c[key]) for at, c in points)
        dash = ' stroke-dasharray="6 4"' if key == "offered" else ""
        parts.append(
            f'<polyline fill="none" stroke="{COLOURS[key]}" stroke-width="2.5"'
            f'{dash} points="{path}"><title>{LABELS[key]}: {now_counts[key]}'
            "</title></polyline>"
        )
    parts.append("</svg>")
    return "".join(parts)


def bars_svg(timeline: list[tuple[datetime, int]]) -> str:
    w, h, bottom, top = 720, 200, 36, 16
    n = max(1, len(timeline))
    top_value = max(1, *(c for _, c in timeline)) if timeline else 1
    bw = w / n
    parts = [
        f'<svg viewBox="0 0 {w} {h}" role="img" aria-labelledby="bars-title" class="chart">',
        '<title id="bars-title">Device certificates ending in each of the next weeks</title>',
    ]
    for i, (start, count) in enumerate(timeline):
        bh = (h - top - bottom) * count / top_value
        x = i * bw + 4
        colour = "#b91c1c" if i == 0 else ("#c2410c" if i < 4 else "#2563eb")
        parts.append(
            f'<rect x="{x:.1f}" y="{h - bottom - bh:.1f}" width="{bw - 8:.1f}" '
            f'height="{bh:.1f}" fill="{colour}"><title>week of {start:%Y-%m-%d}: '
            f"{count}</title></rect>"
        )
        parts.append(
            f'<text x="{x + (bw - 8) / 2:.1f}" y="{h - bottom - bh - 3:.1f}" '
            f'text-anchor="middle" class="axis">{count}</text>'
        )
        parts.append(
            f'<text x="{x + (bw - 8) / 2:.1f}" y="{h - 20}" text-anchor="middle" '
            f'class="axis">{start:%m-%d}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


# -- release samples ---------------------------------------------------------------------


async def sample_now(server: UpdateServer) -> None:
    infos = await server.run(server.store.releases, None)
    await server.run(consoledata.sample_releases, server.registry, infos)


async def console_loop(server: UpdateServer) -> None:
    """Sample the rollouts every SAMPLE_MIN_GAP s; drop device log lines past retention;
    write a ``config`` audit row when the server's keys or CAs changed."""
    rounds = 0
    while True:
        await asyncio.sleep(consoledata.SAMPLE_MIN_GAP)
        if not server.schema_ready or server.db_up is False:
            continue
        try:
            if rounds % 12 == 0:
                await actions.note_config(server)
            await sample_now(server)
            rounds += 1
            if rounds % 60 == 1:
                await server.run(
                    devicelogs.prune, server.registry, server.config.event_retention_days
                )
        except Exception:
            log.exception("console sampling failed")


async def start(server: UpdateServer) -> asyncio.Task[None]:
    """At start: the session secret, and a ``config`` audit row if the keys or CAs
    changed (when the database answers; else the loop does it later)."""
    _secret()
    if server.schema_ready and server.db_up:
        try:
            await actions.note_config(server)
        except Exception:
            log.exception("recording the server's keys in the audit log failed")
    return asyncio.create_task(console_loop(server))


async def home(_: Request) -> Response:
    return RedirectResponse("/console/", status_code=307)


ROUTES = [
    Route("/console", home, methods=["GET"]),
    Route("/console/login", login_form, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/logout", guarded(logout), methods=["POST"]),
    Route("/console/", guarded(overview), methods=["GET"]),
    Route("/console/releases/{release_id}", guarded(release_page), methods=["GET"]),
    Route("/console/releases/{release_id}/live", guarded(release_live), methods=["GET"]),
    Route("/console/releases/{release_id}/{action}", guarded(release_action), methods=["POST"]),
    Route("/console/devices", guarded(devices_page), methods=["GET"]),
    Route("/console/devices/{hardware_id}", guarded(device_page), methods=["GET"]),
    Route("/console/devices/{hardware_id}/live", guarded(device_live), methods=["GET"]),
    Route("/console/devices/{hardware_id}/revoke", guarded(device_revoke), methods=["POST"]),
    Route("/console/certificates", guarded(certificates_page), methods=["GET"]),
    Route("/console/audit", guarded(audit_page), methods=["GET"]),
    Mount("/console/static", StaticFiles(directory=str(HERE / "static")), name="static"),
]
