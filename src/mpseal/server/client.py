"""The admin API from the operator's side (httpx), for ``mpseal release`` and ``mpseal device``.

Foreign errors stop here: a connection or protocol failure is a ``TransportError``, a
refused artifact a ``BadDataError``, a rejected token or a conflict a ``UsageError``;
each carries the server's one-line reason.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Self, cast
from urllib.parse import quote

import httpx

from mpseal.errors import BadDataError, TransportError, UsageError
from mpseal.formats import encrypted
from mpseal.fsutil import read_limited
from mpseal.limits import DEFAULT_LIMITS
from mpseal.packaging.package import read_release_key

RESPONSE_MAX = 16 * 1024 * 1024


@dataclass(frozen=True)
class ReleaseRef:
    version: str
    app: str | None = None
    board: str | None = None
    channel: str | None = None


class AdminClient:
    def __init__(
        self,
        server: str,
        token: str,
        ca: Path | None = None,
        timeout: float = 60.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        if not server.startswith(("http://", "https://")):
            raise UsageError(f"--server must be an http:// or https:// URL, not {server!r}")
        if not token:
            raise UsageError("no admin token: set MPSEAL_ADMIN_TOKEN")
        verify: ssl.SSLContext | bool = True
        if ca:
            try:
                verify = ssl.create_default_context(cafile=str(ca))
            except (OSError, ssl.SSLError) as e:
                raise UsageError(
                    f"--ca {ca} is not a readable PEM CA certificate ({e}); pass the server's CA"
                ) from None
        self._http = httpx.Client(
            base_url=server.rstrip("/"),
            timeout=timeout,
            verify=verify,
            headers={"Authorization": f"Bearer {token}"},
            transport=transport,
        )

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any]:
        try:
            resp = self._http.request(method, path, **kw)
        except httpx.HTTPError as e:
            raise TransportError(f"cannot reach the update server: {e}") from None
        if len(resp.content) > RESPONSE_MAX:
            raise TransportError("the update server's answer is larger than expected")
        try:
            body = resp.json()
        except ValueError:
            body = None
        message = body.get("error") if isinstance(body, dict) else None
        message = message or f"HTTP {resp.status_code}"
        if resp.status_code in (401, 403):
            raise UsageError(f"the server refused the admin token: {message}")
        if resp.status_code in (400, 413):
            raise BadDataError(f"the server refused the request: {message}")
        if resp.status_code in (404, 409):
            raise UsageError(message)
        if resp.status_code >= 300 or not isinstance(body, dict):
            raise TransportError(f"update server error: {message}")
        return cast(dict[str, Any], body)

    def publish(self, path: Path, channel: str) -> dict[str, Any]:
        """Upload the artifact (an encrypted one with the key `mpseal build` wrote beside it),
        then its SBOM if `mpseal build` wrote one beside it."""
        blob = read_limited(path, DEFAULT_LIMITS.artifact_max_length, "artifact")
        headers = {"Content-Type": "application/octet-stream"}
        key = read_release_key(path)
        if key is not None:
            headers[encrypted.PUBLISH_HEADER] = key.hex()
        rel = _obj(
            self._call(
                "POST",
                "/v1/admin/releases",
                params={"channel": channel},
                content=blob,
                headers=headers,
            )["release"]
        )
        sbom = path.with_suffix(".cdx.json")
        if sbom.is_file():
            data = read_limited(sbom, 4 * 1024 * 1024, "SBOM")
            self._call(
                "PUT",
                f"/v1/admin/releases/{rel['id']}/sbom",
                content=data,
                headers={"Content-Type": "application/vnd.cyclonedx+json"},
            )
            rel["sbom"] = True
        return rel

    def sbom(self, release_id: int) -> bytes:
        """The release's SBOM as the server stores it."""
        try:
            resp = self._http.get(f"/v1/admin/releases/{release_id}/sbom")
        except httpx.HTTPError as e:
            raise TransportError(f"cannot reach the update server: {e}") from None
        if resp.status_code != 200:
            raise UsageError(
                f"no SBOM for release {release_id}: HTTP {resp.status_code} {resp.text[:200]}"
            )
        return resp.content

    def releases(self, channel: str | None = None) -> list[dict[str, Any]]:
        params = {"channel": channel} if channel else {}
        return list(self._call("GET", "/v1/admin/releases", params=params)["releases"])

    def resolve(self, ref: ReleaseRef) -> dict[str, Any]:
        """The one release matching a version (and app, board, channel if given)."""
        found = [
            r
            for r in self.releases(ref.channel)
            if r["version"] == ref.version
            and (ref.app is None or r["app"] == ref.app)
            and (ref.board is None or r["board"] == ref.board)
        ]
        if not found:
            raise UsageError(f"no release {ref.version} on the server")
        if len(found) > 1:
            names = ", ".join(f"{r['app']}/{r['board']}/{r['channel']}" for r in found)
            raise UsageError(
                f"version {ref.version} matches several releases ({names}); "
                "narrow it with --app, --board or --channel"
            )
        return found[0]

    def promote(self, release_id: int, **change: object) -> dict[str, Any]:
        return _obj(
            self._call("POST", f"/v1/admin/releases/{release_id}/promote", json=change)["release"]
        )

    def set_state(self, release_id: int, action: str, reason: str = "") -> dict[str, Any]:
        if action not in ("pause", "resume"):
            raise UsageError(f"unknown release action {action!r}")
        body = {"reason": reason} if reason else None
        return _obj(
            self._call("POST", f"/v1/admin/releases/{release_id}/{action}", json=body)["release"]
        )

    def set_policy(self, release_id: int, policy: dict[str, object]) -> dict[str, Any]:
        return _obj(
            self._call("POST", f"/v1/admin/releases/{release_id}/policy", json=policy)["release"]
        )

    def inventory(self, filters: dict[str, str], page: int = 1000) -> Iterator[dict[str, Any]]:
        """Every device matching ``filters``, fetched page by page (keyset cursor)."""
        after = 0
        while True:
            body = self._call(
                "GET",
                "/v1/admin/devices",
                params={**filters, "after": str(after), "limit": str(page)},
            )
            rows = body.get("devices")
            if not isinstance(rows, list):
                raise TransportError("the update server's answer is not what was expected")
            yield from (_obj(r) for r in rows)
            nxt = body.get("next")
            if nxt is None:
                return
            after = int(nxt)

    def set_group(self, hardware_id: str, group: str) -> dict[str, Any]:
        return self._call(
            "POST", f"/v1/admin/devices/{quote(hardware_id, safe='')}/group", json={"group": group}
        )

    def _pages(
        self, path: str, key: str, params: dict[str, str], page: int
    ) -> Iterator[dict[str, Any]]:
        """Rows of a newest-first keyset listing (``next``: the ``before`` of the next page)."""
        before: int | None = None
        while True:
            q = {**params, "limit": str(page)}
            if before is not None:
                q["before"] = str(before)
            body = self._call("GET", path, params=q)
            rows = body.get(key)
            if not isinstance(rows, list):
                raise TransportError("the update server's answer is not what was expected")
            yield from (_obj(r) for r in rows)
            nxt = body.get("next")
            if nxt is None or not rows:
                return
            before = int(nxt)

    def audit_log(self, action: str | None = None, page: int = 500) -> Iterator[dict[str, Any]]:
        """The audit log, newest first (``action``: only that action)."""
        params = {"action": action} if action else {}
        return self._pages("/v1/admin/audit-log", "entries", params, page)

    def verify_audit_log(self, head: str | None = None) -> dict[str, Any]:
        return self._call(
            "GET", "/v1/admin/audit-log/verify", params={"head": head} if head else {}
        )

    def device_logs(self, hardware_id: str, page: int = 1000) -> Iterator[dict[str, Any]]:
        """A device's log lines, newest first."""
        return self._pages(
            f"/v1/admin/devices/{quote(hardware_id, safe='')}/logs", "lines", {}, page
        )

    def revoke(self, hardware_id: str, reason: str) -> dict[str, Any]:
        return self._call(
            "POST",
            f"/v1/admin/devices/{quote(hardware_id, safe='')}/revoke",
            json={"reason": reason},
        )


def _obj(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise TransportError("the update server's answer is not what was expected")
    return cast(dict[str, Any], value)
