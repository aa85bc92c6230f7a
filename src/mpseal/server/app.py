"""The ASGI application: ``create_app(config)``, served by uvicorn (see ``run.py``)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from functools import partial
from typing import Any

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from mpseal.errors import MpsealError
from mpseal.server import admin_api, admin_logs, console, device_api, device_logs, enroll
from mpseal.server.config import ServerConfig, ServerSettings
from mpseal.server.http import ApiError, handle_error
from mpseal.server.openapi import spec
from mpseal.server.service import UpdateServer

# (the ASGI TLS extension, the Authorization header, the body) -> the answer's JSON, or
# its coming (a report being stored: its error, the app's error answer), or None: the app's
NowHandler = Callable[
    [Mapping[str, Any] | None, str | None, bytes], bytes | asyncio.Future[bytes] | None
]


async def openapi(_: Request) -> Response:
    return JSONResponse(spec())


async def health(request: Request) -> Response:
    """Liveness: this process answers (200 also while the database is down), and what it
    knows of the database."""
    server: UpdateServer = request.app.state.server
    return JSONResponse(
        {
            "ok": True,
            "database": _db_state(server),
            "schema_ready": server.schema_ready,
            "directory": server.directory.status(),
            "pid": os.getpid(),  # the counters below are this process's
            "checks_at_once": server.checks_at_once,
            "reports_at_once": server.reports_at_once,
        }
    )


async def ready(request: Request) -> Response:
    """Readiness: 200 when the database answers and the schema is current, else 503."""
    server: UpdateServer = request.app.state.server
    up = await server.ping()
    ok = up and server.schema_ready
    return JSONResponse(
        {"ready": ok, "database": _db_state(server), "schema_ready": server.schema_ready},
        status_code=200 if ok else 503,
        headers=None if ok else {"Retry-After": "5"},
    )


def _db_state(server: UpdateServer) -> str:
    return {True: "up", False: "down", None: "unknown"}[server.db_up]


class DeviceFastPath:
    """The hot device calls straight to their handlers, around Starlette's middleware and
    router (a third of a check's cost under load); everything else goes through Starlette.
    Same handlers, same error answers."""

    def __init__(self, app: Starlette) -> None:
        self.app = app
        self.state = app.state
        self.routes = {
            ("POST", "/v1/device/check"): device_api.check,
            ("POST", "/v1/device/report"): device_api.report,
        }
        # POSTs the protocol may answer itself, with no ASGI request, when the handler
        # has the answer at once, or its coming (a report being stored; run.py,
        # TlsHttpToolsProtocol): by the request's raw URL
        server: UpdateServer = app.state.server
        self.now_routes: dict[bytes, NowHandler] = {
            b"/v1/device/check": partial(device_api.check_now, server),
            b"/v1/device/report": partial(device_api.report_now, server),
        }

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        handler = (
            self.routes.get((scope["method"], scope["path"])) if scope["type"] == "http" else None
        )  # lifespan has no method
        if handler is None:
            await self.app(scope, receive, send)
            return
        scope["app"] = self.app
        request = Request(scope, receive)
        try:
            response = await handler(request)
        except Exception as exc:  # noqa: BLE001 - answered like Starlette's handlers do
            response = await handle_error(request, exc)
        await response(scope, receive, send)


def create_app(config: ServerConfig) -> DeviceFastPath:
    server = UpdateServer(config)

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await server.start()
        console_task = await console.start(server)
        try:
            yield
        finally:
            console_task.cancel()
            await server.stop()

    routes = [
        Route("/openapi.json", openapi, methods=["GET"]),
        Route("/healthz", health, methods=["GET"]),
        Route("/readyz", ready, methods=["GET"]),
        *device_api.ROUTES,
        *admin_api.ROUTES,
        *admin_logs.ROUTES,
        *enroll.ROUTES,
        *device_logs.ROUTES,
        *console.ROUTES,
    ]
    handlers: dict[Any, Any] = {
        HTTPException: handle_error,
        ApiError: handle_error,
        MpsealError: handle_error,
        Exception: handle_error,
    }
    app = Starlette(routes=routes, lifespan=lifespan, exception_handlers=handlers)
    app.state.server = server
    return DeviceFastPath(app)


def create_app_from_env() -> DeviceFastPath:
    """The factory each uvicorn worker process calls (``mpseal serve --workers N``)."""
    import os

    settings = ServerSettings.from_env()
    passphrase = os.environ.get("MPSEAL_PASSPHRASE")
    return create_app(settings.load(passphrase.encode() if passphrase else None))
