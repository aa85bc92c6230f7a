"""Run the server with uvicorn: one process, or several sharing one socket and database.

TLS is terminated by uvicorn. With a fleet CA (``client_ca``) the handshake asks for a
client certificate (``CERT_OPTIONAL``: devices without one still use a bearer token),
OpenSSL checks it chains to the CA, and ``TlsHttpToolsProtocol`` hands the leaf to the
app through the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``),
where its SHA-256 fingerprint is looked up in the registry.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import os
import resource
import secrets
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol

from mpseal.errors import ConfigError, TransportError
from mpseal.server.config import SETTINGS_ENV, ServerSettings

if TYPE_CHECKING:
    from mpseal.server.app import NowHandler

log = logging.getLogger("mpseal.server")


@dataclass(frozen=True)
class ConnectionLimits:
    """What one connection may cost the server (per worker process)."""

    head_bytes_max: int = 16 * 1024  # request line and headers
    headers_max: int = 64
    header_timeout: float = 10.0  # a request's head must arrive within this
    connections_max: int = 2048  # beyond this the oldest connection waiting for a head goes


# A body larger than this is never answered in the protocol (a check's is ~200 bytes)
NOW_BODY_MAX = 4096


class _HeadTooLarge(Exception):
    pass


class _NoOneWaits:
    """A cycle's ``message_event`` that nothing waits on: uvicorn sets it when the
    connection is lost (an ``asyncio.Event`` a report cost as much as a dict's work)."""

    def set(self) -> None:
        pass


class _Waiting:
    """A request the protocol answers once its handler's future is done (a report being
    stored): to uvicorn, a cycle under way, so a request pipelined behind it waits."""

    message_event = _NoOneWaits()  # set by uvicorn when the connection is lost

    def __init__(self, keep_alive: bool) -> None:
        self.keep_alive = keep_alive  # uvicorn's shutdown turns it off
        self.response_complete = False
        self.disconnected = False  # set by uvicorn when the connection is lost


def _close_with(status: str, message: str) -> bytes:
    body = b'{"error":"' + message.encode() + b'"}'
    return (
        f"HTTP/1.1 {status}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\nconnection: close\r\n\r\n"
    ).encode() + body


_431 = _close_with("431 Request Header Fields Too Large", "request headers too large or too many")
_408 = _close_with("408 Request Timeout", "request headers not sent in time")


class _OneWrite:
    """The transport as uvicorn's response writer sees it: a response's status line and
    headers are held until its body's first bytes, so a small answer goes out in one
    send() (one segment, one wake-up of the client) where uvicorn writes two. What a
    step leaves held (a streamed body not ready yet) goes out on the loop's next turn.
    Sampled under keep-alive checks (py-spy, 200,000 devices): uvicorn's two writes were
    26 % of a worker's samples, the one write 13 %."""

    __slots__ = ("_held", "_loop", "_transport")

    def __init__(self, transport: Any, loop: Any) -> None:
        self._transport = transport
        self._loop = loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self._transport.write(held + data)
        elif data[:9] == b"HTTP/1.1 ":  # a status line and headers: wait for the body
            self._held = data
            self._loop.call_soon(self.flush)
        else:
            self._transport.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self._transport.is_closing():
                self._transport.write(held)

    def close(self) -> None:
        self.flush()
        self._transport.close()

    def __getattr__(self, name: str) -> Any:  # is_closing, get_extra_info, ...
        return getattr(self._transport, name)


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ASGI TLS extension (client certificate), and
    limits against slow or endless clients: the size and count of a request's headers, the
    time its head may take (also on a connection that never sends anything), and the
    number of connections (the oldest one waiting for a head is closed to make room)."""

    _tls: dict[str, Any] | None = None

    def __init__(self, *args: Any, limits: ConnectionLimits | None = None, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.limits = limits or ConnectionLimits()
        # The app's POSTs answered here when their handler has the answer at once (app.py,
        # DeviceFastPath.now_routes): no ASGI cycle, task or Request for them. Not with
        # an access log or a concurrency limit (the ASGI cycle writes and enforces those).
        now_routes = getattr(self.app, "now_routes", None)
        self._now_routes: dict[bytes, NowHandler] = {}
        if isinstance(now_routes, dict) and not self.access_log and self.limit_concurrency is None:
            self._now_routes = now_routes
        self._now: NowHandler | None = None  # this request's handler, while its body arrives
        self._now_body: list[bytes] = []
        self._now_size = 0
        self._now_keep_alive = True
        self._shutting_down = False
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._head_since = time.monotonic()
        self._head_timer: Any = None
        self._head_open = False  # a kept-alive connection's next head began, no timer yet
        self._too_large = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        self._writer = _OneWrite(transport, self.loop)
        self._head_started()
        if len(self.connections) > self.limits.connections_max:
            self._make_room()
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            self._tls = None
            return
        der = ssl_object.getpeercert(binary_form=True)
        self._tls = {
            "client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
            "client_cert_name": None,
            "client_cert_error": None,
            "tls_version": None,
            "cipher_suite": None,
            "server_cert": None,
        }

    def _make_room(self) -> None:
        waiting = [c for c in self.connections if c is not self and getattr(c, "_in_head", False)]
        victim = min(waiting, key=lambda c: c._head_since) if waiting else self  # type: ignore[union-attr]
        victim.transport.close()  # everyone busy with a request: refuse the new one

    def _head_started(self) -> None:
        self._in_head = True
        self._head_bytes = 0
        self._header_count = 0
        self._head_since = time.monotonic()
        if self._head_timer is not None:
            self._head_timer.cancel()
        self._head_timer = self.loop.call_later(self.limits.header_timeout, self._head_late)

    def _head_late(self) -> None:
        self._head_timer = None
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes:
                self._writer.flush()
                self.transport.write(_408)
            self.transport.close()

    def _head_done(self) -> None:
        self._in_head = False
        self._head_open = False
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def data_received(self, data: bytes) -> None:
        if self._in_head:
            self._head_bytes += len(data)
        super().data_received(data)
        if self._in_head and not self.transport.is_closing():
            if self._head_bytes > self.limits.head_bytes_max:
                self._reject_head()
            elif self._head_open and self._head_timer is None:  # a head still incomplete
                wait = self._head_since + self.limits.header_timeout - time.monotonic()
                self._head_timer = self.loop.call_later(max(0.0, wait), self._head_late)

    def _reject_head(self) -> None:
        self._head_done()
        self._writer.flush()
        self.transport.write(_431)
        self.transport.close()

    def send_400_response(self, msg: str) -> None:
        if self._too_large:
            self._reject_head()
        else:
            self._writer.flush()
            super().send_400_response(msg)

    def connection_lost(self, exc: Exception | None) -> None:
        self._head_done()
        super().connection_lost(exc)

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._head_timer is None:  # a request on a kept-alive connection begins: its
            # head is timed from now, the timer armed only if this data_received call
            # ends before the head does (a check's head comes whole: no timer per request)
            self._head_since = time.monotonic()
            self._head_open = True
        if self._tls is not None:
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope["extensions"] = {"tls": self._tls}

    def on_header(self, name: bytes, value: bytes) -> None:
        self._header_count += 1
        if self._header_count > self.limits.headers_max:
            self._too_large = True
            raise _HeadTooLarge
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self._head_done()
        handler = self._now_routes.get(self.url) if self._now_routes else None
        if (
            handler is not None
            and self.parser.get_method() == b"POST"
            and not self.expect_100_continue
            and (self.cycle is None or self.cycle.response_complete)
            and not self.pipeline
            and not self.parser.should_upgrade()
        ):  # the answer may be ready once the body is here: no ASGI cycle yet
            self._now = handler
            self._now_body = []
            self._now_size = 0
            self._now_keep_alive = (
                self.parser.get_http_version() != "1.0" and self.parser.should_keep_alive()
            )
            return
        self._start_cycle()

    def _start_cycle(self) -> None:
        """The request goes to the ASGI app, as uvicorn sends it."""
        super().on_headers_complete()
        cycle = self.cycle
        if cycle is not None:  # None: an upgrade request (answered 400 by uvicorn)
            cycle.transport = self._writer  # type: ignore[assignment]
            if self._shutting_down:  # a request begun before the shutdown: answered, closed
                cycle.keep_alive = False

    def shutdown(self) -> None:
        self._shutting_down = True
        if self._now is not None:  # a check's body still arriving: it is answered (as
            self._now_keep_alive = False  # uvicorn finishes a request under way), then closed
            return
        super().shutdown()

    def on_body(self, body: bytes) -> None:
        if self._now is not None:
            self._now_size += len(body)
            if self._now_size <= NOW_BODY_MAX:
                self._now_body.append(body)
                return
            self._now = None  # no answer at once for so large a body: the app reads it
            self._start_cycle()
            body = b"".join([*self._now_body, body])
            self._now_body = []
        super().on_body(body)

    def on_message_complete(self) -> None:
        handler, self._now = self._now, None
        if handler is None:
            super().on_message_complete()
        else:
            body = b"".join(self._now_body)
            self._now_body = []
            answer = handler(self._tls, self._authorization(), body)
            if isinstance(answer, bytes):
                self._answer_now(answer, self._now_keep_alive)
            elif answer is not None:  # its answer comes later: the connection waits for it
                waiting = _Waiting(self._now_keep_alive)
                self.cycle = waiting  # type: ignore[assignment]
                answer.add_done_callback(functools.partial(self._answer_later, waiting, self.url))
            else:  # the app answers it, from the same body
                self._start_cycle()
                if body and self.cycle is not None:
                    super().on_body(body)
                super().on_message_complete()
        self._in_head = True  # the next request's head; uvicorn's keep-alive timer runs
        self._head_bytes = 0
        self._header_count = 0
        self._head_since = time.monotonic()

    def _authorization(self) -> str | None:
        for name, value in self.headers:  # as Starlette's request.headers.get: the first
            if name == b"authorization":
                return value.decode("latin-1")
        return None

    def _answer_now(self, body: bytes, keep_alive: bool) -> None:
        """A 200 JSON answer, the bytes uvicorn writes for the app's (http.py, _Json)."""
        headers = b"content-length: %d\r\ncontent-type: application/json\r\n" % len(body)
        self._write(200, headers, body, keep_alive)

    def _answer_later(self, waiting: _Waiting, url: bytes, done: asyncio.Future[bytes]) -> None:
        """The answer of a request whose handler's future is done: its body in a 200 JSON
        answer, or its error as the app answers it (http.error_for)."""
        waiting.response_complete = True
        error = None if done.cancelled() else done.exception()
        if waiting.disconnected or self.transport.is_closing():
            return  # the device left: it asks again (a report stored twice counts once)
        if done.cancelled() or not (error is None or isinstance(error, Exception)):
            self.transport.close()  # the server stopping under it: no answer to give
        elif error is None:
            self._answer_now(done.result(), waiting.keep_alive)
        else:
            from mpseal.server.http import error_for  # (starlette: not on the CLI's start-up)

            response = error_for(error, "POST", url.decode("latin-1"))
            head = b"".join(name + b": " + value + b"\r\n" for name, value in response.raw_headers)
            self._write(response.status_code, head, bytes(response.body), waiting.keep_alive)

    def _write(self, status: int, headers: bytes, body: bytes, keep_alive: bool) -> None:
        """An answer as uvicorn writes the app's: status line, default headers, the
        answer's own; then, as the cycle would, the keep-alive timer or the pipeline."""
        self._writer.flush()
        parts = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            parts += [name, b": ", value, b"\r\n"]
        parts.append(headers)
        if not keep_alive:
            parts.append(b"connection: close\r\n")
        parts += [b"\r\n", body]
        self.transport.write(b"".join(parts))
        if not keep_alive:
            self.transport.close()
        self.on_response_complete()


@dataclass(frozen=True)
class RunOptions:
    host: str = "127.0.0.1"
    port: int = 8443
    workers: int = 1
    tls_cert: Path | None = None
    tls_key: Path | None = None
    client_ca: Path | None = None  # fleet CA: ask devices for a client certificate
    access_log: bool = False
    backlog: int = 2048
    keep_alive_timeout: float = 30.0  # an idle kept-alive connection is closed after this
    limits: ConnectionLimits = field(default_factory=ConnectionLimits)


def uvicorn_kwargs(options: RunOptions) -> dict[str, Any]:
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    if options.client_ca is not None and options.tls_cert is None:
        raise ConfigError("--client-ca needs TLS: give --tls-cert and --tls-key too")
    protocol = functools.partial(TlsHttpToolsProtocol, limits=options.limits)
    kw: dict[str, Any] = {
        "host": options.host,
        "port": options.port,
        "http": protocol,
        "loop": "uvloop",
        "lifespan": "on",
        "access_log": options.access_log,
        "log_level": "info",
        "backlog": options.backlog,
        "server_header": False,
        "timeout_keep_alive": options.keep_alive_timeout,
        "proxy_headers": False,
    }
    if options.tls_cert is not None:
        check_tls_files(options)
        kw.update(ssl_certfile=str(options.tls_cert), ssl_keyfile=str(options.tls_key))
    if options.client_ca is not None:
        kw.update(ssl_ca_certs=str(options.client_ca), ssl_cert_reqs=ssl.CERT_OPTIONAL)
    return kw


def check_tls_files(options: RunOptions) -> None:
    """Load the TLS certificate, key and client CA once, so a wrong file is a one-line
    ConfigError before anything says 'serving' (uvicorn would raise in its worker)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    for flag, path in (
        ("--tls-cert", options.tls_cert),
        ("--tls-key", options.tls_key),
        ("--client-ca", options.client_ca),
    ):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag} {path}: no such file")

    def no_passphrase() -> str:
        raise ConfigError(
            f"--tls-key {options.tls_key} is passphrase-protected; "
            "give the server an unencrypted key file (mode 0600)"
        )

    try:
        ctx.load_cert_chain(str(options.tls_cert), str(options.tls_key), password=no_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(
                f"--tls-key {options.tls_key} does not belong to --tls-cert {options.tls_cert}"
            ) from None
        raise ConfigError(
            f"--tls-cert {options.tls_cert} / --tls-key {options.tls_key}: not a "
            f"PEM certificate and its PEM private key ({e.reason or e})"
        ) from None
    if options.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(options.client_ca))
        except ssl.SSLError as e:
            raise ConfigError(
                f"--client-ca {options.client_ca}: not a PEM CA certificate ({e.reason or e})"
            ) from None


def serve(
    settings: ServerSettings,
    options: RunOptions,
    passphrase: bytes | None = None,
    announce: Callable[[], None] | None = None,
) -> None:
    """Run until interrupted. The schema is migrated once here, before any worker starts.

    ``announce`` is called once everything was checked, just before the server starts.
    """
    from mpseal.fleet.registry import Registry
    from mpseal.server.roots import RootStore
    from mpseal.server.timestamps import check_timestamp_key

    if settings.artifact_base_url:
        raise ConfigError(
            "--artifact-base-url: the device client does not follow redirects (it keeps one "
            "pinned TLS connection to this server for a whole update round); put the CDN in "
            "front of the whole server instead: artifacts are served with immutable cache "
            "headers"
        )
    kw = uvicorn_kwargs(options)
    config = settings.load(passphrase)  # fails here, once, on a bad key or trust root
    check_timestamp_key(
        RootStore(config.roots_dir, config.trust_root_file).newest(), config.timestamp_signer
    )
    raise_fd_limit()
    try:  # once here, before any worker starts; else each worker retries until it can
        Registry.open(settings.database_url, upgrade=True).engine.dispose()
        migrated = True
    except TransportError as e:
        log.error("starting without the database (%s): it is retried until it answers", e)
        migrated = False
    if announce is not None:
        announce()
    if options.workers <= 1:
        from mpseal.server.app import create_app

        uvicorn.run(create_app(replace(config, migrate=not migrated)), **kw)
        return
    os.environ[SETTINGS_ENV] = ServerSettings(
        **{**settings.__dict__, "migrate": not migrated}
    ).to_env()
    if passphrase is not None:
        os.environ["MPSEAL_PASSPHRASE"] = passphrase.decode()
    # one console secret for every worker: a session made by one is good on the others
    os.environ.setdefault("MPSEAL_CONSOLE_SECRET", secrets.token_hex(32))
    uvicorn.run(
        "mpseal.server.app:create_app_from_env", factory=True, workers=options.workers, **kw
    )


def raise_fd_limit() -> None:
    """As many open files as the system allows: each connection is one."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass
