"""An async Python client of the host API (server/web/host_api.py), for the host app to call.

    async with HostClient("http://127.0.0.1:8000", api_key) as hub:
        await hub.upsert_user("alice")
        await hub.mirror_platforms("alice", [PlatformMirrored(...), ...])
        minted = await hub.mint_session("alice", user_agent=..., ip=...)
        # set minted.token as the page's hub_session cookie (or send it as a bearer token)

Every method returns the decoded answer (the structs of server/protocol.py) or raises
HostApiError with the hub's status, error code and sentence.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from types import TracebackType
from typing import Any, TypeVar

import httpx
import msgspec

from server.api import (
    HoldRequest,
    PlatformCreate,
    PlatformList,
    PlatformMirrored,
    PlatformsMirror,
    PlatformUpdate,
    SessionList,
    SessionMint,
    SessionMinted,
    SessionsRevoked,
    UserState,
    UserUpsert,
    UserView,
)
from server.errors import HostApiError

# The client, its one exception, and the bodies its methods take and return.
__all__ = [
    "HostApiError",
    "HostClient",
    "PlatformCreate",
    "PlatformList",
    "PlatformMirrored",
    "PlatformUpdate",
    "SessionList",
    "SessionMinted",
    "SessionsRevoked",
    "UserState",
    "UserView",
]

T = TypeVar("T")
_encoder = msgspec.json.Encoder()


class HostClient:
    """Call the hub's host API with the API key; one connection pool per client."""

    def __init__(
        self,
        base_url: str,
        api_key: str,
        *,
        timeout: float = 10.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        self._http = httpx.AsyncClient(
            base_url=base_url.rstrip("/") + "/api/host",
            headers={"Authorization": f"Bearer {api_key}"},
            timeout=timeout,
            transport=transport,
        )

    async def __aenter__(self) -> HostClient:
        return self

    async def __aexit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def upsert_user(
        self, name: str, password: str | None = None, *, end_sessions: bool = True
    ) -> UserView:
        """Create the user, or set its password; None keeps it (or leaves it without one).

        A new password ends the user's live sessions unless ``end_sessions`` is false.
        """
        body = UserUpsert(password=password, end_sessions=end_sessions)
        return await self._call("PUT", f"/users/{name}", UserView, body)

    async def platforms(self, name: str) -> PlatformList:
        """Return every platform of the user and the state its tabs see."""
        return await self._call("GET", f"/users/{name}/platforms", PlatformList)

    async def mirror_platforms(
        self, name: str, platforms: Sequence[PlatformMirrored]
    ) -> PlatformList:
        """Make the user's platforms exactly ``platforms``, matched by account."""
        body = PlatformsMirror(platforms=tuple(platforms))
        return await self._call("PUT", f"/users/{name}/platforms", PlatformList, body)

    async def add_platform(self, name: str, platform: PlatformCreate) -> PlatformList:
        """Connect a platform account to the user."""
        return await self._call("POST", f"/users/{name}/platforms", PlatformList, platform)

    async def change_platform(
        self, name: str, platform_id: int, change: PlatformUpdate
    ) -> PlatformList:
        """Rename a platform, (de)activate it or make it the default."""
        path = f"/users/{name}/platforms/{platform_id}"
        return await self._call("PATCH", path, PlatformList, change)

    async def remove_platform(self, name: str, platform_id: int) -> PlatformList:
        """Delete a platform connection."""
        path = f"/users/{name}/platforms/{platform_id}"
        return await self._call("DELETE", path, PlatformList)

    async def state(self, name: str) -> UserState:
        """Read the user's version, active platform, platforms and the hold in force."""
        return await self._call("GET", f"/users/{name}/state", UserState)

    async def hold(self, name: str, reason: str, ttl_s: float) -> UserState:
        """Hold the user's switches while a job runs: refused as busy with ``reason``."""
        body = _checked(lambda: HoldRequest(reason=reason, ttl_s=ttl_s))
        return await self._call("PUT", f"/users/{name}/hold", UserState, body)

    async def release(self, name: str) -> UserState:
        """Release the user's hold."""
        return await self._call("DELETE", f"/users/{name}/hold", UserState)

    async def mint_session(
        self, name: str, *, user_agent: str | None = None, ip: str | None = None
    ) -> SessionMinted:
        """Open a login session for a person the host app has authenticated."""
        body = _checked(lambda: SessionMint(user_agent=user_agent, ip=ip))
        return await self._call("POST", f"/users/{name}/sessions", SessionMinted, body)

    async def sessions(self, name: str) -> SessionList:
        """Return the user's live sessions, newest first."""
        return await self._call("GET", f"/users/{name}/sessions", SessionList)

    async def revoke_session(
        self, name: str, session_id: int, *, reason: str = "revoked"
    ) -> SessionsRevoked:
        """End one session of the user; its tabs end, told ``reason`` ("logout" when the
        person logged out of the host app, "revoked" otherwise)."""
        path = f"/users/{name}/sessions/{session_id}"
        return await self._call("DELETE", path, SessionsRevoked, params={"reason": reason})

    async def revoke_sessions(self, name: str, *, reason: str = "revoked") -> SessionsRevoked:
        """End every session of the user; all its tabs end, told ``reason``."""
        path = f"/users/{name}/sessions"
        return await self._call("DELETE", path, SessionsRevoked, params={"reason": reason})

    async def _call(
        self,
        method: str,
        path: str,
        kind: type[T],
        body: Any = None,
        params: dict[str, str] | None = None,
    ) -> T:
        content = None if body is None else _encoder.encode(body)
        headers = {"content-type": "application/json"} if content is not None else {}
        try:
            response = await self._http.request(
                method, path, content=content, headers=headers, params=params
            )
        except httpx.TimeoutException as failure:
            # Nothing is known of the call's fate: it may have been applied.
            raise HostApiError(
                504, "timeout", f"The hub did not answer in time: {failure!r}"
            ) from failure
        except httpx.TransportError as failure:
            raise HostApiError(
                503, "unreachable", f"The hub cannot be reached: {failure!r}"
            ) from failure
        if response.status_code >= 400:
            try:
                error = response.json()
            except ValueError:
                error = {"error": "unknown", "message": response.text[:200]}
            raise HostApiError(response.status_code, error.get("error"), error.get("message"))
        try:
            decoded: T = msgspec.json.decode(response.content, type=kind)
        except msgspec.DecodeError as failure:  # not the hub, or a hub of another version
            raise HostApiError(
                response.status_code,
                "bad_answer",
                f"The answer is not a {kind.__name__}: {failure}",
            ) from failure
        return decoded


def _checked(build: Callable[[], T]) -> T:
    """Build a body, refusing bad arguments as the hub would: HostApiError 422 bad_request."""
    try:
        return build()
    except (ValueError, msgspec.ValidationError) as failure:
        raise HostApiError(422, "bad_request", str(failure)) from failure
