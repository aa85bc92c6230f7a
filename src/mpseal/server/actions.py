"""Admin actions as one piece of service code, called by the admin API (and so the CLI)
and by the console: each does the change, tells the server, and appends the audit row.

Who acted is ``request.state.admin_id``, set by ``auth.admin`` (an admin token) or by
the console's session (made from one): a token id, never the token.
"""

from __future__ import annotations

import hashlib
from typing import Any

from starlette.requests import Request

from mpseal.fleet.auditlog import AuditLog
from mpseal.fleet.releasestore import ReleaseInfo
from mpseal.server.service import UpdateServer


def actor(request: Request) -> str:
    return str(getattr(request.state, "admin_id", "") or "unknown")


def audit_log(server: UpdateServer) -> AuditLog:
    log: AuditLog | None = getattr(server, "_audit_log", None)
    if log is None:
        log = AuditLog(server.registry)
        server._audit_log = log  # type: ignore[attr-defined]
    return log


async def record(
    server: UpdateServer, who: str, action: str, target: str, detail: dict[str, Any] | None = None
) -> None:
    await server.run(audit_log(server).append, who, action, target, detail or {})


def _release_target(info: ReleaseInfo) -> str:
    v = info.view
    return f"release {v.id} ({v.app} {v.version} {v.board} {v.channel})"


def config_state(server: UpdateServer) -> dict[str, Any]:
    """The keys and CAs this server works with, by fingerprint: which admin tokens it
    accepts (their ids), its newest trust root, its timestamp key, its renewal CA."""
    from cryptography.hazmat.primitives.serialization import Encoding

    state: dict[str, Any] = {
        "admin_tokens": sorted("token:" + h[:16] for h in server.config.admin_token_hashes),
        "trust_root_version": server.roots.newest().version,
        "timestamp_key": server.config.timestamp_signer.public_key.keyid,
        "renewal_ca": None,
    }
    ca = server.config.renewal_ca
    if ca is not None:
        der = ca.get().cert.public_bytes(Encoding.DER)
        state["renewal_ca"] = hashlib.sha256(der).hexdigest()[:32]
    return state


async def note_config(server: UpdateServer) -> bool:
    """A ``config`` row (actor ``server``) when the keys or CAs differ from the last one
    recorded: trust-root adoption, a new timestamp key or renewal CA, admin tokens added
    or taken away. True if one was written."""
    now = await server.run(config_state, server)
    last = await server.run(audit_log(server).last, "config")
    before = last.detail if last is not None else {}
    changed = sorted(k for k in now if before.get(k) != now[k])
    if not changed:
        return False
    await record(server, "server", "config", "keys and CAs", {**now, "changed": changed})
    return True


async def halted(server: UpdateServer, info: ReleaseInfo, reason: str) -> None:
    await record(server, "server", "halt", _release_target(info), {"reason": reason})


async def published(server: UpdateServer, who: str, info: ReleaseInfo) -> None:
    await record(
        server,
        who,
        "publish",
        _release_target(info),
        {"file_sha256": info.file_sha256, "size": info.size},
    )


async def promote(
    server: UpdateServer,
    who: str,
    info: ReleaseInfo,
    *,
    percent: float | None = None,
    group: str | None = None,
    pin: str | None = None,
) -> ReleaseInfo:
    updated = await server.run(
        lambda: server.store.promote(info.view.id, percent=percent, group=group, pin=pin)
    )
    await server.changed(info.view.channel)
    given = {
        k: v for k, v in (("percent", percent), ("group", group), ("pin", pin)) if v is not None
    }
    await record(server, who, "promote", _release_target(info), given)
    return updated


async def set_state(
    server: UpdateServer, who: str, info: ReleaseInfo, state: str, reason: str = ""
) -> ReleaseInfo:
    """Pause or resume. Resuming a release the server halted needs a ``reason`` (see
    ``ReleaseStore.set_state``); the audit row keeps it with the halt's own reason."""
    updated = await server.run(
        lambda: server.store.set_state(info.view.id, state, who=who, reason=reason)
    )
    if info.view.state == "halted":
        server.resumed(info.view.id)
    await server.changed(info.view.channel)
    detail: dict[str, Any] = {
        "from": info.view.state,
        "to": updated.view.state,
        "halt_reason": info.halt_reason,
    }
    if reason.strip():
        detail["reason"] = reason.strip()
    await record(
        server, who, "pause" if state == "paused" else "resume", _release_target(info), detail
    )
    return updated


async def set_policy(
    server: UpdateServer, who: str, info: ReleaseInfo, overrides: Any
) -> ReleaseInfo:
    updated = await server.run(server.store.set_policy, info.view.id, overrides)
    await record(
        server,
        who,
        "policy",
        _release_target(info),
        {
            "min_attempts": overrides.min_attempts,
            "max_failure_ratio": overrides.max_failure_ratio,
            "min_cohort_share": overrides.min_cohort_share,
        },
    )
    return updated


async def revoke(server: UpdateServer, who: str, hardware_id: str, reason: str) -> int:
    n = await server.run(server.registry.revoke_device, hardware_id, reason)
    await server.devices_changed()  # this process at once; the others within cache_seconds
    await record(
        server,
        who,
        "revoke",
        f"device {hardware_id}",
        {"reason": reason, "certificates_revoked": n},
    )
    return n


async def set_group(server: UpdateServer, who: str, hardware_id: str, group: str) -> str:
    old = await server.run(server.registry.set_group, hardware_id, group)
    await server.devices_changed()
    await record(server, who, "group", f"device {hardware_id}", {"from": old, "to": group})
    return old
