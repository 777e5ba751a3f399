"""The Host check: requests must name a host this hub serves as.

Without it, a page on an attacker's domain that re-resolves to 127.0.0.1 (DNS rebinding)
is same-origin with the hub as far as the browser knows, and the origin checks, which
compare Origin with Host, vouch for it: the unauthenticated endpoints (login among them)
were open to it. ``allowed_hosts`` lists the names; by default the served host, and for a
hub bound to a loopback address the loopback names.
"""

from __future__ import annotations

import logging

from starlette.datastructures import Headers
from starlette.types import ASGIApp, Receive, Scope, Send

from server.protocol import ErrorCode
from server.settings import Settings
from server.web.responses import error_response

__all__ = ["HostCheck", "allowed_hosts", "host_allowed"]

logger = logging.getLogger("hub.hosts")

_LOOPBACK = ("127.0.0.1", "localhost", "::1")
_ANY_ADDRESS = ("0.0.0.0", "::", "")


def allowed_hosts(settings: Settings) -> frozenset[str] | None:
    """Return the host names requests may name, lowercased; None means any."""
    if settings.allowed_hosts:
        names = {name.lower().strip("[]") for name in settings.allowed_hosts}
        return None if "*" in names else frozenset(names)
    if settings.host in _ANY_ADDRESS:
        return None  # bound to every address: only the operator knows the names
    if settings.host in _LOOPBACK:
        return frozenset(_LOOPBACK)
    return frozenset({settings.host.lower().strip("[]")})


def host_allowed(headers: Headers, allowed: frozenset[str] | None) -> bool:
    """Tell whether the request's Host header names an allowed host (any port)."""
    if allowed is None:
        return True
    host = headers.get("host", "").lower()
    name = host[1:].split("]", 1)[0] if host.startswith("[") else host.rsplit(":", 1)[0]
    return name in allowed


class HostCheck:
    """Answer 400 to an HTTP request whose Host header names a host the hub does not serve."""

    def __init__(self, app: ASGIApp, *, settings: Settings) -> None:
        self.app = app
        self.allowed = allowed_hosts(settings)
        if self.allowed is None and not settings.allowed_hosts:
            logger.warning(
                "serving on %r with no HUB_ALLOWED_HOSTS: any Host header is accepted; "
                "set the names the hub is reached by",
                settings.host,
            )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and not host_allowed(Headers(scope=scope), self.allowed):
            response = error_response(
                400, ErrorCode.FORBIDDEN_HOST, "This hub is not served under that host name."
            )
            response.headers["connection"] = "close"  # its body, if any, is never read
            await response(scope, receive, send)
            return
        await self.app(scope, receive, send)
