"""Run the server with uvicorn: one process, or several sharing one socket and database.

TLS is terminated by uvicorn. With a fleet CA (``client_ca``) the handshake asks for a
client certificate (``CERT_OPTIONAL``: devices without one still use a bearer token),
OpenSSL checks it chains to the CA, and ``TlsHttpToolsProtocol`` hands the leaf to the
app through the ASGI TLS extension (``scope["extensions"]["tls"]["client_cert_chain"]``),
where its SHA-256 fingerprint is looked up in the registry.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from mpseal.errors import ConfigError
from mpseal.server.config import SETTINGS_ENV, ServerSettings


class TlsHttpToolsProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol plus the ASGI TLS extension (client certificate)."""

    _tls: dict[str, Any] | None = None

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None:
            self._tls = None
            return
        der = ssl_object.getpeercert(binary_form=True)
        self._tls = {"client_cert_chain": [ssl.DER_cert_to_PEM_cert(der)] if der else [],
                     "client_cert_name": None, "client_cert_error": None,
                     "tls_version": None, "cipher_suite": None, "server_cert": None}

    def on_message_begin(self) -> None:
        super().on_message_begin()
        if self._tls is not None:
            scope: dict[str, Any] = self.scope  # type: ignore[assignment]
            scope["extensions"] = {"tls": self._tls}


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


def uvicorn_kwargs(options: RunOptions) -> dict[str, Any]:
    if (options.tls_cert is None) != (options.tls_key is None):
        raise ConfigError("give both --tls-cert and --tls-key, or neither")
    if options.client_ca is not None and options.tls_cert is None:
        raise ConfigError("--client-ca needs TLS: give --tls-cert and --tls-key too")
    kw: dict[str, Any] = {"host": options.host, "port": options.port, "http": TlsHttpToolsProtocol,
                          "loop": "uvloop", "lifespan": "on", "access_log": options.access_log,
                          "log_level": "warning", "backlog": options.backlog,
                          "server_header": False, "timeout_keep_alive": 30,
                          "proxy_headers": False}
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
    for flag, path in (("--tls-cert", options.tls_cert), ("--tls-key", options.tls_key),
                       ("--client-ca", options.client_ca)):
        if path is not None and not Path(path).is_file():
            raise ConfigError(f"{flag} {path}: no such file")

    def no_passphrase() -> str:
        raise ConfigError(f"--tls-key {options.tls_key} is passphrase-protected; "
                          "give the server an unencrypted key file (mode 0600)")

    try:
        ctx.load_cert_chain(str(options.tls_cert), str(options.tls_key), password=no_passphrase)
    except ssl.SSLError as e:
        if e.reason == "KEY_VALUES_MISMATCH":
            raise ConfigError(f"--tls-key {options.tls_key} does not belong to --tls-cert "
                              f"{options.tls_cert}") from None
        raise ConfigError(f"--tls-cert {options.tls_cert} / --tls-key {options.tls_key}: not a "
                          f"PEM certificate and its PEM private key ({e.reason or e})") from None
    if options.client_ca is not None:
        try:
            ctx.load_verify_locations(cafile=str(options.client_ca))
        except ssl.SSLError as e:
            raise ConfigError(f"--client-ca {options.client_ca}: not a PEM CA certificate "
                              f"({e.reason or e})") from None


def serve(settings: ServerSettings, options: RunOptions, passphrase: bytes | None = None,
          announce: Callable[[], None] | None = None) -> None:
    """Run until interrupted. The schema is migrated once here, before any worker starts.

    ``announce`` is called once everything was checked, just before the server starts.
    """
    from mpseal.fleet.registry import Registry
    from mpseal.server.roots import RootStore
    from mpseal.server.timestamps import check_timestamp_key

    kw = uvicorn_kwargs(options)
    config = settings.load(passphrase)  # fails here, once, on a bad key or trust root
    check_timestamp_key(RootStore(config.roots_dir, config.trust_root_file).newest(),
                        config.timestamp_signer)
    Registry.open(settings.database_url, upgrade=True).engine.dispose()
    if announce is not None:
        announce()
    if options.workers <= 1:
        from mpseal.server.app import create_app

        uvicorn.run(create_app(config), **kw)
        return
    os.environ[SETTINGS_ENV] = ServerSettings(**{**settings.__dict__, "migrate": False}).to_env()
    if passphrase is not None:
        os.environ["MPSEAL_PASSPHRASE"] = passphrase.decode()
    uvicorn.run("mpseal.server.app:create_app_from_env", factory=True, workers=options.workers,
                **kw)
