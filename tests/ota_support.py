"""An OTA world for tests: a project, its fleet CA, the real update server on TLS, a
hostile mirror in front of it, and virtual boards provisioned to update through the mirror.

The mirror holds a valid TLS certificate (a compromised CDN or mirror, or a network
attacker who got one): it forwards to the real server unless a test tells it to
answer a path itself — with crafted bytes, or trickling them.
"""

from __future__ import annotations

import http.server
import json
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.serialization import Encoding
from release_support import release
from server_support import ADMIN_TOKEN, HOST, free_port, running_server

from mpseal.device.sim import SIM_ID, VirtualBoard
from mpseal.device.simlink import connect
from mpseal.fleet.provision import ProvisionPlan, provision_device
from mpseal.fleet.registry import Registry
from mpseal.fleet.rollout import HaltPolicy
from mpseal.packaging.project import Project
from mpseal.pki.ca import CaOptions, init_ca, load_issuing_ca
from mpseal.pki.certs import LeafRequest, generate_key, issue, key_pem_der
from mpseal.server.config import ServerConfig, ServerLimits, admin_token_hash
from mpseal.server.run import RunOptions

APP = """\
from mpseal_guard import confirm
import mpseal_ota
def main():
    print("running {version}")
    {health}
    confirm()
    mpseal_ota.report_boot()
"""

# A rule answers (status, body) or (status, body, extra headers), or None to forward.
Answer = Callable[[str, dict[str, str]], tuple | None]


class Mirror(http.server.ThreadingHTTPServer):
    """A TLS HTTP/1.1 server that forwards to ``upstream`` unless a rule answers first."""

    daemon_threads = True

    def __init__(self, upstream: str, cert: Path, key: Path, ca_pem: Path) -> None:
        super().__init__((HOST, free_port()), _MirrorHandler)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, key)
        self.socket = ctx.wrap_socket(self.socket, server_side=True)
        self.upstream = upstream
        self.client = httpx.Client(
            base_url=upstream, timeout=30, verify=ssl.create_default_context(cafile=str(ca_pem))
        )
        self.rules: dict[str, Answer] = {}
        self.trickle: dict[str, float] = {}  # path -> bytes per second
        self.seen: list[str] = []
        self.ranges: list[tuple[str, str | None]] = []  # (path, Range header) of every GET
        # path -> writes the whole answer itself on the handler's wfile (raw bytes)
        self.raw: dict[str, Callable[[http.server.BaseHTTPRequestHandler], None]] = {}
        self.upstream_answers: list[tuple[str, int, bytes]] = []  # (path, status, body)
        self.rewrite: dict[str, Callable[[bytes], bytes]] = {}  # path -> edits the real answer
        self.requests: list[tuple[str, bytes | None]] = []  # (path, body) of every request
        self.connections = 0  # TLS connections accepted (keep-alive: one per round)
        self.forward_errors: list[str] = []  # forwards that failed once and were retried

    def process_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        self.connections += 1
        super().process_request(request, client_address)

    @property
    def url(self) -> str:
        return f"https://{HOST}:{self.server_address[1]}"

    def answer(self, path: str, status: int, body: bytes) -> None:
        self.rules[path] = lambda _p, _h: (status, body)


class _MirrorHandler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Mirror

    def log_message(self, *args: object) -> None:
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else None
        self.server.seen.append(f"{self.command} {self.path}")
        self.server.requests.append((self.path, body))
        if self.command == "GET":
            self.server.ranges.append((self.path, self.headers.get("Range")))
        raw = self.server.raw.get(self.path)
        if raw is not None:
            self.close_connection = True
            raw(self)
            return
        rule = self.server.rules.get(self.path)
        answered = rule(self.path, dict(self.headers)) if rule else None
        extra: dict[str, str] = {}
        if answered is not None:
            status, data = answered[0], answered[1]
            extra = answered[2] if len(answered) > 2 else {}
        else:
            headers = {
                k: v
                for k, v in self.headers.items()
                if k.lower() in ("authorization", "range", "content-type")
            }
            try:
                r = self.server.client.request(
                    self.command, self.path, content=body, headers=headers
                )
            except httpx.TransportError as e:  # a pooled connection the server closed as
                # idle (its keep-alive limit) as it was reused: a proxy tries a GET once more
                self.server.forward_errors.append(f"{self.command} {self.path}: {e!r}")
                if self.command != "GET":
                    raise
                r = self.server.client.request(
                    self.command, self.path, content=body, headers=headers
                )
            status, data = r.status_code, r.content
            self.server.upstream_answers.append((self.path, status, data))
            if self.path in self.server.rewrite:
                data = self.server.rewrite[self.path](data)
        self.send_response(status)
        self.send_header("Content-Length", str(len(data)))
        for k, v in extra.items():
            self.send_header(k, v)
        self.end_headers()
        rate = self.server.trickle.get(self.path)
        if rate:
            for i in range(len(data)):
                self.wfile.write(data[i : i + 1])
                self.wfile.flush()
                time.sleep(1 / rate)
        else:
            self.wfile.write(data)

    do_GET = _handle
    do_POST = _handle


@dataclass
class World:
    project: Path
    ca_dir: Path
    db_url: str
    server_url: str
    mirror: Mirror
    tmp: Path
    boards: list[VirtualBoard] = field(default_factory=list)
    clients: list[httpx.Client] = field(default_factory=list)
    server_ssl: ssl.SSLContext | None = None  # the server's live TLS context

    @property
    def proj(self) -> Project:
        return Project.load(self.project)

    def admin(self) -> httpx.Client:
        client = httpx.Client(
            base_url=self.server_url,
            timeout=30,
            verify=ssl.create_default_context(cafile=str(self.ca_dir / "root.pem")),
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        )
        self.clients.append(client)  # closed at teardown: an open keep-alive delays shutdown
        return client

    def release(self, version: str, counter: int, health: str = "pass") -> bytes:
        """Build ``version``; its main() runs ``health`` before confirming the trial."""
        return release(
            self.project, version, counter, APP.format(version="{version}", health=health)
        )

    def publish(self, blob: bytes, channel: str = "stable", **promote: object) -> int:
        with self.admin() as admin:
            r = admin.post(f"/v1/admin/releases?channel={channel}", content=blob)
            assert r.status_code == 201, r.text
            rid = r.json()["release"]["id"]
            r = admin.post(f"/v1/admin/releases/{rid}/promote", json=promote or {"percent": 100})
            assert r.status_code == 200, r.text
        return int(rid)

    def board(
        self,
        first: bytes,
        group: str = "default",
        hardware_id: str | None = None,
        config: dict[str, object] | None = None,
        keygen: str = "host",
        release_key: bytes | None = None,
    ) -> VirtualBoard:
        """A new virtual board, provisioned (guard, identity, token) to update via the mirror,
        running ``first`` committed; ``hardware_id`` replaces its random one."""
        board = VirtualBoard.create(self.tmp / f"board{len(self.boards)}")
        if hardware_id is not None:
            board.put(hardware_id.encode() + b"\n", SIM_ID)
        self.boards.append(board)
        proj = self.proj
        plan = ProvisionPlan(
            board="unix",
            profile="field",
            trust_root=proj.trust_root().raw,
            ca=load_issuing_ca(self.ca_dir),
            server_anchor=(self.ca_dir / "root.der").read_bytes(),
            config={"server": self.mirror.url, "app": proj.config.name, **(config or {})},
            artifact=first,
            group=group,
            keygen=keygen,
            release_key=release_key,
        )
        transport, link = connect(board)
        try:
            provision_device(transport, plan, Registry.open(self.db_url))
        finally:
            transport.close()
            link.close()
        report = board.boot()
        assert report.ran(), report.output
        return board

    def ota(self, board: VirtualBoard, clock: int = 0) -> dict[str, object]:
        """One update round; ``clock``: the board's clock moved on by so many seconds."""
        res = board.command("ota", *(("clock", str(clock)) if clock else ()), timeout=300)
        replies = res.replies()
        assert replies, res.stdout + res.stderr
        return replies[-1]  # type: ignore[return-value]


def _server_cert(ca_dir: Path, out: Path) -> tuple[Path, Path]:
    ca = load_issuing_ca(ca_dir)
    key = generate_key()
    cert = issue(
        ca, LeafRequest(name="127.0.0.1", role="server", sans=("IP:127.0.0.1",)), key.public_key()
    )
    cert_pem, key_pem = out / "server.pem", out / "server-key.pem"
    cert_pem.write_bytes(cert.public_bytes(Encoding.PEM) + ca.cert.public_bytes(Encoding.PEM))
    key_pem.write_bytes(key_pem_der(key)[0])
    return cert_pem, key_pem


NO_CHECK_TIME = 0x200000  # X509_V_FLAG_NO_CHECK_TIME


@contextmanager
def ota_world(
    tmp: Path,
    db_url: str,
    project: Path,
    renewal: bool = False,
    clock: Callable[[], object] | None = None,
) -> Iterator[World]:
    """``renewal``: the server asks devices for their certificate (mutual TLS, client CA
    ca-chain.pem) and renews them online from the CA folder; ``clock`` is its now. As the
    clock moves, the server's OpenSSL does not judge client certificates' dates against
    the machine's (the application checks them on ``clock``: the registry's not_after)."""
    ca_dir = tmp / "ca"
    init_ca(ca_dir, CaOptions(name="ota test fleet"))
    cert, key = _server_cert(ca_dir, tmp)
    cfg = project / "mpseal.toml"
    cfg.write_text(cfg.read_text().replace('profile = "dev"', 'profile = "field"'))
    proj = Project.load(project)
    config = ServerConfig(
        database_url=db_url,
        artifacts_dir=tmp / "artifacts",
        roots_dir=proj.roots_dir,
        timestamp_signer=proj.timestamp_signer(),
        admin_token_hashes=(admin_token_hash(ADMIN_TOKEN),),
        cache_seconds=0.1,
        maintenance_seconds=3600,
        # Tests run many rounds per device in seconds: no report rate limit in the way.
        limits=ServerLimits(report_rate_per_minute=60_000.0, report_burst=10_000),
        halt_policy=HaltPolicy(min_attempts=2, max_failure_ratio=0.2, trial_window_seconds=3600),
    )
    options = RunOptions(tls_cert=cert, tls_key=key)
    contexts: list[ssl.SSLContext] = []
    if renewal:
        from dataclasses import replace

        from mpseal.pki.online import FolderCa

        config = replace(
            config,
            renewal_ca=FolderCa(ca_dir),
            clock=clock,  # type: ignore[arg-type]
            renewals_per_hour=10_000,
        )
        options = replace(options, client_ca=ca_dir / "ca-chain.pem")

    def ssl_setup(ctx: ssl.SSLContext) -> None:
        if renewal:
            ctx.verify_flags |= NO_CHECK_TIME  # type: ignore[assignment]
        contexts.append(ctx)

    Registry.open(db_url)
    with running_server(config, options, ssl_setup) as server:
        mirror = Mirror(server.url, cert, key, ca_dir / "root.pem")
        thread = threading.Thread(target=mirror.serve_forever, daemon=True)
        thread.start()
        world = World(
            project,
            ca_dir,
            db_url,
            server.url,
            mirror,
            tmp,
            server_ssl=contexts[0] if contexts else None,
        )
        try:
            yield world
        finally:
            mirror.shutdown()
            mirror.client.close()
            for client in world.clients:
                client.close()


def guard_log(board: VirtualBoard) -> list[str]:
    return board.status()["log"]  # type: ignore[return-value]


def offer_json(target: dict[str, object], root_version: int = 1) -> bytes:
    return json.dumps(
        {
            "update": True,
            "target": target,
            "timestamp": "timestamp/stable.mpst",
            "root_version": root_version,
        }
    ).encode()


def stolen_timestamp(
    world: World,
    targets: tuple,
    version: int = 10**6,
    expires_in: int = 3600,
    issued: int | None = None,
) -> bytes:
    """A timestamp signed with the server's (stolen) online key."""
    from mpseal.formats.updatemeta import Timestamp, sign_timestamp

    now = int(time.time()) if issued is None else issued
    ts = Timestamp(
        version=version,
        issued=now,
        expires=now + expires_in,
        root_version=world.proj.trust_root().version,
        targets=targets,
    )
    return sign_timestamp(ts, [world.proj.timestamp_signer()])


def serve_offer(world: World, blob: bytes, ts: bytes, target: dict[str, object]) -> None:
    """The attacker answers the check, the timestamp and the artifact path itself."""
    world.mirror.answer("/v1/device/check", 200, offer_json(target))
    world.mirror.answer("/v1/timestamp/stable.mpst", 200, ts)
    world.mirror.answer("/v1/" + str(target["path"]), 200, blob)
