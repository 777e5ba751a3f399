"""The WebSocket endpoint: a tab's handshake, its receive loop, the transport it writes to."""

from __future__ import annotations

import asyncio
import re
import secrets

from starlette.websockets import WebSocket, WebSocketDisconnect
from uvicorn.protocols.utils import ClientDisconnected

from server import logs
from server.db import Database
from server.errors import AuthenticationError, StoreUnavailable
from server.hub import Hub, TabLimitReached
from server.protocol import (
    CloseCode,
    ErrorCode,
    UserInfo,
)
from server.storage import sessions
from server.storage.sessions import LoginSession, format_time
from server.tab import Tab, TransportClosed
from server.web.credentials import forbidden_origin, origin_allowed, token
from server.web.hosts import allowed_hosts, host_allowed
from server.web.responses import error_response, hub_error_response
from server.web.websocket_protocol import PROTOCOL_EXTENSION, BoundedWebSocketProtocol

__all__ = ["websocket_endpoint"]

_TAB_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class _Transport:
    """Adapt a Starlette WebSocket to the hub's Transport, with one error for a lost link."""

    __slots__ = ("_protocol", "_websocket")

    def __init__(self, websocket: WebSocket) -> None:
        self._websocket = websocket
        # Under uvicorn_config, the connection's protocol writes frames without ASGI.
        self._protocol: BoundedWebSocketProtocol | None = websocket.scope.get("extensions", {}).pop(
            PROTOCOL_EXTENSION, None
        )

    def send_now(self, data: str) -> bool:
        return self._protocol is not None and self._protocol.send_text_now(data)

    def guard(self, tab: Tab) -> None:
        """Count the connection's control frames against the tab's rate limit."""
        if self._protocol is not None:
            self._protocol.admit_control = tab.admit
            self._protocol.on_overflow = tab.overflowed

    def abort(self) -> None:
        if self._protocol is not None:
            self._protocol.transport.abort()

    async def send_text(self, data: str) -> None:
        try:
            await self._websocket.send_text(data)
        except (WebSocketDisconnect, RuntimeError, OSError) as error:
            raise TransportClosed(str(error)) from error

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._websocket.close(code, reason)
        except (WebSocketDisconnect, RuntimeError, OSError) as error:
            raise TransportClosed(str(error)) from error


async def _admit(websocket: WebSocket, hub: Hub) -> tuple[str, LoginSession] | None:
    """Answer the handshake: accept it and return the tab's id and session, or refuse it
    (an HTTP answer before the upgrade) and return None."""
    database: Database = websocket.state.database
    if not host_allowed(websocket.headers, allowed_hosts(websocket.state.settings)):
        denial = error_response(400, ErrorCode.FORBIDDEN_HOST, "Not served under that host.")
        await websocket.send_denial_response(denial)
        return None
    if not origin_allowed(websocket):
        await websocket.send_denial_response(forbidden_origin())
        return None
    tab_id = websocket.query_params.get("tab") or secrets.token_urlsafe(12)
    if not _TAB_ID.fullmatch(tab_id):
        problem = "The tab id must be 1 to 64 characters from A-Z, a-z, 0-9, _ and -."
        await websocket.send_denial_response(error_response(400, ErrorCode.BAD_REQUEST, problem))
        return None
    try:
        login = await sessions.authenticate(database, token(websocket))
    except (AuthenticationError, StoreUnavailable) as error:
        # Before the accept, in the HTTP endpoints' words (Starlette's handlers do not apply).
        await websocket.send_denial_response(hub_error_response(websocket, error))
        return None
    # Everything this connection logs from here names it (uvicorn's "[accepted]" included).
    logs.bind(tab=tab_id, user=login.user_id, session=login.id)
    if (wait := hub.cooldown(login.id)) > 0:
        await asyncio.sleep(wait)  # a tab of this session was just closed for flooding
    await websocket.accept()
    return tab_id, login


def _end_if_peer_gone(protocol: object) -> None:
    """Under a cancellation: if it is the protocol's, because the peer left before its
    handshake was answered, end the endpoint quietly (uvicorn passes ClientDisconnected
    over; it logs any other exception as the app's error)."""
    if isinstance(protocol, BoundedWebSocketProtocol) and protocol.peer_gone:
        task = asyncio.current_task()
        if task is not None:
            task.uncancel()
        raise ClientDisconnected from None


async def websocket_endpoint(websocket: WebSocket) -> None:
    hub: Hub = websocket.state.hub
    protocol = websocket.scope.get("extensions", {}).get(PROTOCOL_EXTENSION)
    if isinstance(protocol, BoundedWebSocketProtocol):
        protocol.handshake_task = asyncio.current_task()
    try:
        admitted = await _admit(websocket, hub)
    except asyncio.CancelledError:
        _end_if_peer_gone(protocol)
        raise
    finally:
        if isinstance(protocol, BoundedWebSocketProtocol):
            protocol.handshake_task = None
    if admitted is None:
        return
    tab_id, login = admitted
    transport = _Transport(websocket)
    try:
        tab = await hub.join(
            transport,
            tab_id=tab_id,
            user=UserInfo(id=login.user_id, name=login.user_name),
            session_id=login.id,
            expires_at=format_time(login.expires_at),
        )
    except TabLimitReached as error:
        await websocket.close(CloseCode.TAB_LIMIT, str(error))
        return
    except StoreUnavailable:
        await websocket.close(CloseCode.TRY_AGAIN_LATER, "database unavailable")
        return
    transport.guard(tab)
    # The handshake's headers (1 KiB) are read before the accept and never again; the tab
    # may stay for hours. Emptied in place: Starlette's cached Headers shares the list.
    websocket.scope["headers"].clear()
    try:
        # Only this loop reads; the tab's writer task sends. No database session is held
        # here between messages: each switch is its own unit of work.
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                break
            text = message.get("text")
            await hub.receive(tab, text if text is not None else message.get("bytes") or b"")
            if tab.closing:
                # Read no more from a tab being closed (abuse, flood, replaced, session
                # ended): what it still sends waits in TCP, so a flooder costs nothing
                # more, while its writer sends what is queued and the close.
                await hub.drain(tab)
                break
    finally:
        await hub.leave(tab)
