"""Credentials of a request: the session cookie or bearer token, and the Origin check."""

from __future__ import annotations

from starlette.requests import HTTPConnection
from starlette.responses import Response

from server.protocol import ErrorCode
from server.settings import Settings
from server.web.responses import error_response

__all__ = ["COOKIE", "forbidden_origin", "origin_allowed", "token", "uses_cookie"]

COOKIE = "hub_session"


def origin_allowed(connection: HTTPConnection, *, by_cookie: bool = True) -> bool:
    """Tell whether the request's Origin may use the hub; ``by_cookie`` false for a request
    that a cookie cannot authenticate (a login)."""
    origin = connection.headers.get("origin")
    if origin is None and not by_cookie:
        return True
    if origin is None:
        # Browsers send an Origin with every WebSocket handshake and every request that
        # changes state; a cookie without one is not from a page, and nothing here can vouch
        # for it. A client that is not a browser presents its session as a bearer token.
        return not uses_cookie(connection)
    settings: Settings = connection.state.settings
    if origin in settings.allowed_origins:
        return True
    scheme = {"ws": "http", "wss": "https"}.get(connection.url.scheme, connection.url.scheme)
    return origin == f"{scheme}://{connection.headers.get('host', '')}"


def token(connection: HTTPConnection) -> str | None:
    """Return the session token a request presents: a bearer token, else the cookie."""
    authorization = connection.headers.get("authorization", "")
    if authorization.lower().startswith("bearer "):
        return authorization[7:].strip() or None
    return connection.cookies.get(COOKIE)


def uses_cookie(connection: HTTPConnection) -> bool:
    """Tell whether the request is authenticated by the cookie (no Authorization header)."""
    return not connection.headers.get("authorization") and COOKIE in connection.cookies


def forbidden_origin() -> Response:
    """Return 403 forbidden_origin."""
    return error_response(403, ErrorCode.FORBIDDEN_ORIGIN, "This origin may not use the hub.")
