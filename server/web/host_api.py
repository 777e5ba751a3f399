"""The host app's API: users, platforms, login sessions and holds, under the API key.

The web app beside the hub mirrors its users and platforms into it, mints login sessions for
people it has authenticated, lists and revokes their sessions, and holds a user's switches
while one of its jobs runs.

Every request carries ``Authorization: Bearer <HUB_API_KEY>``; without a key configured the
API is off. Users are named in the path by their name, the host app's own identifier. Each
change reaches the user's tabs as the same change made by the user would (server/web/pages.py);
``GET /api/host/openapi.json`` describes every endpoint (server/web/openapi.py).
"""

from __future__ import annotations

import hmac
import urllib.parse
from collections.abc import Awaitable, Callable

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from server.api import (
    HoldRequest,
    PlatformCreate,
    PlatformList,
    PlatformsMirror,
    PlatformUpdate,
    SessionDetail,
    SessionList,
    SessionMint,
    SessionMinted,
    SessionsRevoked,
    UserUpsert,
    UserView,
    decode_body,
)
from server.db import Database
from server.hub import Hub
from server.protocol import PLATFORMS_CAUSE, ErrorCode, SessionEndReason
from server.settings import Settings
from server.storage import holds, platforms, sessions
from server.storage.users import upsert_user, user_id_of
from server.web import openapi
from server.web.pages import end_session
from server.web.paths import route
from server.web.responses import error_response, json_response

__all__ = ["PREFIX", "routes"]

PREFIX = "/api/host"

# (database, hub, request, user id) -> response
_Work = Callable[[Database, Hub, Request, int], Awaitable[Response]]


def routes() -> list[Route]:
    """Return the host API's routes, to mount beside the hub's own."""
    user = PREFIX + "/users/{name}"
    return [
        route(PREFIX + "/openapi.json", GET=_schema),
        route(user, PUT=_upsert_user),
        route(
            user + "/platforms",
            GET=_for_user(_list_platforms),
            PUT=_for_user(_mirror_platforms),
            POST=_for_user(_add_platform),
        ),
        route(
            user + "/platforms/{platform:id}",
            PATCH=_for_user(_change_platform),
            DELETE=_for_user(_remove_platform),
        ),
        # The same, with the platform named by the host app's external id (any text, "/"
        # included, so the rest of the path).
        route(
            user + "/platforms/external/{external_id:path}",
            PATCH=_for_user(_change_platform),
            DELETE=_for_user(_remove_platform),
        ),
        route(user + "/state", GET=_for_user(_read_state)),
        route(user + "/hold", PUT=_for_user(_place_hold), DELETE=_for_user(_release_hold)),
        route(
            user + "/sessions",
            POST=_for_user(_mint_session),
            GET=_for_user(_list_sessions),
            DELETE=_for_user(_revoke_sessions),
        ),
        route(user + "/sessions/{session:id}", DELETE=_for_user(_revoke_session)),
    ]


def _refusal(request: Request) -> Response | None:
    """Return the answer to a request without the API key, or to a path that is not UTF-8;
    None if neither."""
    if not _utf8_path(request):
        # uvicorn decodes the path with errors="replace": %ff would name the user or the
        # external id "\ufffd". Such a path names nothing.
        return error_response(
            422, ErrorCode.BAD_REQUEST, "The path is not UTF-8 once percent-decoded.", "path"
        )
    settings: Settings = request.state.settings
    if not settings.api_key:
        return error_response(
            401, ErrorCode.UNAUTHENTICATED, "The host API is off: set HUB_API_KEY.", "api_key"
        )
    authorization = request.headers.get("authorization", "")
    presented = authorization[7:].strip() if authorization.lower().startswith("bearer ") else ""
    if not hmac.compare_digest(presented.encode(), settings.api_key.encode()):
        response = error_response(
            401,
            ErrorCode.UNAUTHENTICATED,
            "The API key is missing or wrong: present HUB_API_KEY as a bearer token.",
            "api_key",
        )
        response.headers["WWW-Authenticate"] = 'Bearer realm="hub host API"'
        return response
    return None


def _utf8_path(request: Request) -> bool:
    raw = request.scope.get("raw_path") or request.scope["path"].encode()
    try:
        urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _for_user(work: _Work) -> Callable[[Request], Awaitable[Response]]:
    """Wrap an endpoint: check the key and find the user (errors: responses.hub_error_response)."""

    async def endpoint(request: Request) -> Response:
        if (refused := _refusal(request)) is not None:
            return refused
        database: Database = request.state.database
        hub: Hub = request.state.hub
        name = request.path_params["name"]
        user_id = await user_id_of(database, name)
        if user_id is None:
            return error_response(404, ErrorCode.UNKNOWN_USER, f"No user named {name!r}.")
        return await work(database, hub, request, user_id)

    return endpoint


async def _schema(request: Request) -> Response:
    return json_response(200, openapi.document())


async def _upsert_user(request: Request) -> Response:
    if (refused := _refusal(request)) is not None:
        return refused
    database: Database = request.state.database
    name = request.path_params["name"]
    body = decode_body(await request.body() or b"{}", UserUpsert)
    user_id, created, ended = await upsert_user(
        database, name, body.password, end_sessions=body.end_sessions
    )
    hub: Hub = request.state.hub
    for session_id in ended:
        hub.end_session(session_id, SessionEndReason.REVOKED)
    view = UserView(id=user_id, name=name, created=created, sessions_ended=len(ended))
    return json_response(201 if created else 200, view)


# Platforms: the same changes as a user's own (server/storage/platforms.py), published alike.


async def _list_platforms(database: Database, hub: Hub, request: Request, user: int) -> Response:
    return json_response(200, await platforms.listing(database, user))


async def _mirror_platforms(database: Database, hub: Hub, request: Request, user: int) -> Response:
    body = decode_body(await request.body(), PlatformsMirror)
    return _published(hub, user, await platforms.mirror(database, user, body))


async def _add_platform(database: Database, hub: Hub, request: Request, user: int) -> Response:
    body = decode_body(await request.body(), PlatformCreate)
    return _published(hub, user, await platforms.add(database, user, body), created=True)


async def _change_platform(database: Database, hub: Hub, request: Request, user: int) -> Response:
    body = decode_body(await request.body(), PlatformUpdate)
    changed = await platforms.change(database, user, _platform(request), body)
    return _published(hub, user, changed)


async def _remove_platform(database: Database, hub: Hub, request: Request, user: int) -> Response:
    return _published(hub, user, await platforms.remove(database, user, _platform(request)))


def _platform(request: Request) -> platforms.PlatformRef:
    """The platform a path names: the hub's id, or the host app's external id (one no
    platform can have, such as an empty or unprintable one, is simply not found)."""
    if "external_id" in request.path_params:
        return platforms.External(request.path_params["external_id"])
    platform: int = request.path_params["platform"]
    return platform


def _published(hub: Hub, user: int, changed: PlatformList, *, created: bool = False) -> Response:
    hub.publish(user, changed.state, PLATFORMS_CAUSE)
    return json_response(201 if created else 200, changed)


# Holds (server/storage/holds.py): switches are refused as busy while the host app's job runs.


async def _read_state(database: Database, hub: Hub, request: Request, user: int) -> Response:
    return json_response(200, await holds.state_of(database, user))


async def _place_hold(database: Database, hub: Hub, request: Request, user: int) -> Response:
    body = decode_body(await request.body(), HoldRequest)
    placed = await holds.place(database, user, body.reason, body.ttl_s)
    hub.hold(user, placed.hold)
    return json_response(200, placed)


async def _release_hold(database: Database, hub: Hub, request: Request, user: int) -> Response:
    released = await holds.release(database, user)
    hub.hold(user, None)
    return json_response(200, released)


# Sessions.


async def _mint_session(database: Database, hub: Hub, request: Request, user: int) -> Response:
    body = decode_body(await request.body() or b"{}", SessionMint)
    token, login = await sessions.open_session(
        database, user, user_agent=body.user_agent, ip=body.ip
    )
    hub.session_opened(login.user_id, login.displaced)
    minted = next(s for s in await sessions.live_sessions(database, user) if s.id == login.id)
    return json_response(201, SessionMinted(token=token, session=minted))


async def _list_sessions(database: Database, hub: Hub, request: Request, user: int) -> Response:
    listed: list[SessionDetail] = await sessions.live_sessions(database, user)
    return json_response(200, SessionList(sessions=tuple(listed)))


# What a host app may say ended a session: its own logout, or anything else (an administrator,
# a password change, an account deletion). Expiry is the hub's to decide.
_END_REASONS = {r.value: r for r in (SessionEndReason.REVOKED, SessionEndReason.LOGOUT)}


def _end_reason(request: Request) -> SessionEndReason | Response:
    given = request.query_params.getlist("reason") or [SessionEndReason.REVOKED.value]
    reason = _END_REASONS.get(given[0]) if len(given) == 1 else None
    if reason is None:
        return error_response(
            422,
            ErrorCode.BAD_REQUEST,
            "reason must be revoked (the default) or logout, given at most once.",
            "reason",
        )
    return reason


async def _revoke_session(database: Database, hub: Hub, request: Request, user: int) -> Response:
    reason = _end_reason(request)
    if isinstance(reason, Response):
        return reason
    tabs = await end_session(database, hub, request.path_params["session"], reason, user_id=user)
    if tabs is None:
        return error_response(404, ErrorCode.UNKNOWN_SESSION, "The user has no such live session.")
    return json_response(200, SessionsRevoked(sessions=1, tabs=tabs))


async def _revoke_sessions(database: Database, hub: Hub, request: Request, user: int) -> Response:
    reason = _end_reason(request)
    if isinstance(reason, Response):
        return reason
    tabs = hub.open_tabs(user_id=user)  # before: the commit itself may close them
    ended = await sessions.revoke_all(database, user, reason)
    for session_id in ended:
        hub.end_session(session_id, reason)
    return json_response(200, SessionsRevoked(sessions=len(ended), tabs=tabs))
