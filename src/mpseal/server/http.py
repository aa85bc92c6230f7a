"""Requests in, responses out: bounded body reads, one-line JSON errors, strict fields.

Every error a client can cause becomes a 4xx with ``{"error": "<one line>"}``; anything
unexpected a 500 with no detail (the traceback goes to the server log only).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response

from mpseal.errors import BadDataError, ConfigError, FormatError, TransportError, UsageError
from mpseal.formats import jsondoc

log = logging.getLogger("mpseal.server")

MESSAGE_MAX = 300
RETRY_AFTER = 10  # seconds, in a 503 while the database is down


class ApiError(Exception):
    """An answer to the client: an HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def one_line(text: str) -> str:
    line = " ".join(str(text).split())
    return line[:MESSAGE_MAX] or "error"


def error_response(status: int, message: str, headers: Mapping[str, str] | None = None) -> Response:
    return JSONResponse({"error": one_line(message)}, status_code=status, headers=headers)


def api_error_for(exc: Exception) -> ApiError:
    """Map mpseal's exception tree to HTTP: bad data 400, conflicts 409, database 503."""
    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, BadDataError):
        return ApiError(400, str(exc))
    if isinstance(exc, ConfigError):  # the server's own setup, not the request
        log.error("server configuration: %s", exc)
        return ApiError(503, "the update server is misconfigured; see its log")
    if isinstance(exc, UsageError):
        return ApiError(409, str(exc))
    if isinstance(exc, TransportError):  # the database: logged by UpdateServer.run
        return ApiError(503, f"service unavailable: {exc}", {"Retry-After": str(RETRY_AFTER)})
    raise exc


async def handle_error(request: Request, exc: Exception) -> Response:
    return error_for(exc, request.method, request.url.path)


def error_for(exc: Exception, method: str, path: str) -> Response:
    """The answer to a request that raised ``exc`` (the app's and the protocol's)."""
    if isinstance(exc, ClientDisconnect):  # the client left mid-request: nobody to answer
        return error_response(400, "client disconnected")
    if isinstance(exc, HTTPException):
        return error_response(exc.status_code, exc.detail or "error", exc.headers)
    try:
        err = api_error_for(exc)
    except Exception:
        log.exception("unexpected error on %s %s", method, path)
        return error_response(500, "internal server error")
    return error_response(err.status, err.message, err.headers)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing more than ``limit`` bytes before reading them all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit() or len(declared) > 15:
            raise ApiError(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise ApiError(413, f"request body over the {limit}-byte limit")
    # The ASGI messages as they come (what Request.stream() does, without its async
    # generator: a device's check is one message, and this is on every check's path).
    if request._stream_consumed:
        raise RuntimeError("Stream consumed")
    chunks: list[bytes] = []
    size = 0
    receive = request.receive
    more = True
    while more:
        message = await receive()
        if message["type"] != "http.request":  # http.disconnect: the client left
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        more = message.get("more_body", False)
        size += len(chunk)
        if size > limit:
            raise ApiError(413, f"request body over the {limit}-byte limit")
        chunks.append(chunk)
    request._stream_consumed = True  # as Request.stream() leaves it: read once
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def read_json(
    request: Request, limit: int, what: str, allow_empty: bool = False
) -> jsondoc.Fields:
    body = await read_body(request, limit)
    if allow_empty and not body.strip():
        return jsondoc.Fields({}, what)
    return parse_json(body, what)


def parse_json(body: bytes, what: str) -> jsondoc.Fields:
    """A request body that must be one JSON object, as its fields; else a 400."""
    try:
        obj = json.loads(body)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, f"{what} is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ApiError(400, f"{what} is not a JSON object")
    return jsondoc.Fields(obj, what)


def checked(value: str, pattern: re.Pattern[str], what: str) -> str:
    if not pattern.fullmatch(value):
        raise FormatError(f"{what} {value[:40]!r} has characters or a length not allowed")
    return value


class _Json(Response):
    """What JSONResponse sends (the same bytes and headers), built in one step without
    Response's generic header handling: every device check is answered with one."""

    media_type = "application/json"

    def __init__(self, body: bytes, status_code: int = 200) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        self.raw_headers = [
            (b"content-length", b"%d" % len(body)),
            (b"content-type", b"application/json"),
        ]


def json_bytes(obj: Any) -> bytes:
    """``obj`` as JSONResponse encodes it."""
    return json.dumps(
        obj, ensure_ascii=False, allow_nan=False, indent=None, separators=(",", ":")
    ).encode("utf-8")


def json_ok(obj: Any, status: int = 200) -> Response:
    return _Json(json_bytes(obj), status)


def json_encoded(body: bytes) -> Response:
    """A 200 answer whose JSON is already encoded (by ``json_bytes``)."""
    return _Json(body)
