"""The page's HTTP endpoints: log in and out, extend, state, switch, platform management."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from pathlib import Path

from starlette.requests import Request
from starlette.responses import FileResponse, Response

from server.api import (
    LoginRequest,
    PlatformCreate,
    PlatformList,
    PlatformUpdate,
    SessionsRevoked,
    SessionView,
    StateResponse,
    decode_body,
)
from server.db import Database
from server.errors import AuthenticationError, BadMessage, Overloaded, StoreUnavailable
from server.hub import Hub
from server.limits import LoginThrottle
from server.protocol import (
    PLATFORMS_CAUSE,
    ErrorCode,
    Rejected,
    RejectReason,
    SessionEndReason,
    SessionInfo,
    Switch,
    UserInfo,
)
from server.settings import Settings
from server.storage import holds, platforms, sessions
from server.storage.sessions import LoginSession, format_time
from server.web.credentials import COOKIE, forbidden_origin, origin_allowed, token
from server.web.responses import (
    error_response,
    json_response,
    retry_later,
)

__all__ = [
    "CLIENT_DIR",
    "end_session",
    "extend",
    "index",
    "login",
    "logout",
    "logout_all",
    "platforms_add",
    "platforms_change",
    "platforms_list",
    "platforms_remove",
    "session_revoke",
    "state",
    "switch",
]


def _client_dir() -> Path:
    """client/ of a source checkout, else the copy an installed package carries."""
    package = Path(__file__).resolve().parent.parent
    source = package.parent / "client"
    if (source / "navigation.js").is_file():
        return source
    return package / "_client"


CLIENT_DIR = _client_dir()

_REJECT_STATUS = {
    RejectReason.STALE: 409,
    RejectReason.INACTIVE_PLATFORM: 409,
    RejectReason.UNKNOWN_PLATFORM: 404,
    RejectReason.RATE_LIMITED: 429,
    RejectReason.UNAVAILABLE: 503,
    RejectReason.BAD_REQUEST: 422,
    RejectReason.BUSY: 423,
}


async def index(request: Request) -> Response:
    return FileResponse(CLIENT_DIR / "index.html")


async def login(request: Request) -> Response:
    if not origin_allowed(request, by_cookie=False):
        return forbidden_origin()
    database: Database = request.state.database
    throttle: LoginThrottle = request.state.login_throttle
    address = request.client.host if request.client else None
    body = decode_body(await request.body(), LoginRequest)
    # Charged before the password is checked, whatever it is, and refunded if it is right:
    # concurrent guesses meet the limit as sequential ones do, and a throttled guesser
    # learns nothing.
    if (wait := await throttle.charge(body.username, address)) > 0:
        return retry_later(
            429,
            ErrorCode.RATE_LIMITED,
            f"Too many failed logins; try again in {math.ceil(wait)} s.",
            wait,
        )
    try:
        async with throttle.checking():
            token, login = await sessions.log_in(
                database,
                body.username,
                body.password,
                user_agent=request.headers.get("user-agent"),
                ip=address,
            )
    except AuthenticationError as error:
        return error_response(401, ErrorCode.INVALID_CREDENTIALS, str(error))
    except Overloaded:
        await throttle.refund(body.username, address)  # not a guess that was checked
        raise
    except StoreUnavailable:
        await throttle.refund(body.username, address, shared=False)
        raise
    await throttle.refund(body.username, address)
    hub: Hub = request.state.hub
    hub.session_opened(login.user_id, login.displaced)
    response = json_response(200, _session_view(login))
    settings: Settings = request.state.settings
    response.set_cookie(
        COOKIE,
        token,
        max_age=int(settings.session_absolute_s),
        path="/",
        httponly=True,
        samesite="lax",
        secure=settings.cookie_secure,
    )
    return response


async def logout(request: Request) -> Response:
    return await _end_sessions(request, everywhere=False)


async def logout_all(request: Request) -> Response:
    return await _end_sessions(request, everywhere=True)


async def _end_sessions(request: Request, *, everywhere: bool) -> Response:
    if not origin_allowed(request):
        return forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, token(request), touch=False)
    if everywhere:
        tabs = hub.open_tabs(user_id=login.user_id)
        ended = await sessions.revoke_all(database, login.user_id, SessionEndReason.LOGOUT)
    else:
        tabs = hub.open_tabs(session_id=login.id)
        await sessions.revoke(database, login.id, SessionEndReason.LOGOUT)
        ended = [login.id]
    for session_id in ended:  # those the commit has not closed yet
        hub.end_session(session_id, SessionEndReason.LOGOUT)
    response = json_response(200, {"sessions": len(ended), "tabs": tabs})
    response.delete_cookie(COOKIE, path="/")
    return response


async def session_revoke(request: Request) -> Response:
    """End one of the person's own sessions: another device's, or this one. Its tabs get
    ``session_ended`` (revoked) at once, on every hub process. Another person's session, or
    one that has ended, is 404, as an unknown platform is."""
    if not origin_allowed(request):
        return forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, token(request), touch=False)
    session_id = await sessions.by_handle(database, login.user_id, request.path_params["session"])
    reason = SessionEndReason.REVOKED
    tabs = None
    if session_id is not None:
        tabs = await end_session(database, hub, session_id, reason, user_id=login.user_id)
    if tabs is None:
        return error_response(404, ErrorCode.UNKNOWN_SESSION, "You have no such live session.")
    return json_response(200, SessionsRevoked(sessions=1, tabs=tabs))


async def end_session(
    database: Database, hub: Hub, session_id: int, reason: SessionEndReason, *, user_id: int
) -> int | None:
    """Revoke one of ``user_id``'s live sessions and end its tabs here (other processes end
    theirs with the commit); return how many tabs it had here, or None if the user has no
    such live session. A page's revocation and the host API's."""
    tabs = hub.open_tabs(session_id=session_id)  # before: the commit itself may close them
    if not await sessions.revoke(database, session_id, reason, user_id=user_id):
        return None
    hub.end_session(session_id, reason)
    return tabs


async def extend(request: Request) -> Response:
    if not origin_allowed(request):
        return forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, token(request), touch=False)
    extended = await sessions.extend(database, login)
    hub.extend_session(extended.id, format_time(extended.expires_at))
    return json_response(200, _session_view(extended))


async def state(request: Request) -> Response:
    database: Database = request.state.database
    login = await sessions.authenticate(database, token(request))
    # The state and the hold in one read transaction, as the host API's GET .../state reads them.
    current = await holds.state_of(database, login.user_id)
    body = StateResponse(
        user=UserInfo(id=login.user_id, name=login.user_name),
        state=current.state,
        session=SessionInfo(expires_at=format_time(login.expires_at)),
        hold=current.hold,
    )
    return json_response(200, body)


async def switch(request: Request) -> Response:
    if not origin_allowed(request):
        return forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, token(request))
    switch = decode_body(await request.body(), Switch)
    reply = await hub.switch(login.user_id, login.id, switch)
    if reply is None:
        raise AuthenticationError("expired", "The session ended.")
    if isinstance(reply, Rejected):
        return json_response(_REJECT_STATUS[reply.reason], reply)
    return json_response(200, reply)


# Platform management (server/storage/platforms.py): every change reaches the user's tabs.


async def platforms_list(request: Request) -> Response:
    database: Database = request.state.database
    login = await sessions.authenticate(database, token(request))
    return json_response(200, await platforms.listing(database, login.user_id))


async def platforms_add(request: Request) -> Response:
    async def work(database: Database, user_id: int) -> PlatformList:
        body = decode_body(await request.body(), PlatformCreate)
        if body.external_id is not None:  # the host app's to give (its host API), not a page's
            raise BadMessage("Invalid request body: external_id is set by the host app")
        return await platforms.add(database, user_id, body)

    return await _platform_change(request, work, created=True)


async def platforms_change(request: Request) -> Response:
    async def work(database: Database, user_id: int) -> PlatformList:
        body = decode_body(await request.body(), PlatformUpdate)
        return await platforms.change(database, user_id, request.path_params["platform"], body)

    return await _platform_change(request, work)


async def platforms_remove(request: Request) -> Response:
    async def work(database: Database, user_id: int) -> PlatformList:
        return await platforms.remove(database, user_id, request.path_params["platform"])

    return await _platform_change(request, work)


async def _platform_change(
    request: Request,
    work: Callable[[Database, int], Awaitable[PlatformList]],
    *,
    created: bool = False,
) -> Response:
    if not origin_allowed(request):
        return forbidden_origin()
    database: Database = request.state.database
    hub: Hub = request.state.hub
    login = await sessions.authenticate(database, token(request))
    changed = await work(database, login.user_id)
    hub.publish(login.user_id, changed.state, PLATFORMS_CAUSE)
    return json_response(201 if created else 200, changed)


def _session_view(login: LoginSession) -> SessionView:
    return SessionView(
        user=UserInfo(id=login.user_id, name=login.user_name),
        expires_at=format_time(login.expires_at),
    )
