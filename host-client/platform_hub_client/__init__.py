"""A Python client of the platform hub's host API, for the web app beside the hub.

    from platform_hub_client import HostClient, PlatformMirrored

    hub = HostClient("http://127.0.0.1:8000", api_key)   # one per process, reused
    hub.upsert_user("alice")
    hub.mirror_platforms("alice", [PlatformMirrored(name=..., kind="mastodon", ...)])
    minted = hub.mint_session("alice", user_agent=..., ip=...)
    # set minted.token as the page's hub_session cookie (or send it as a bearer token)

``AsyncHostClient`` has the same methods as coroutines. Every failure raises HostApiError.
"""

from typing import TYPE_CHECKING

from platform_hub_client.bodies import (
    HoldView,
    PlatformCreate,
    PlatformDetail,
    PlatformKind,
    PlatformList,
    PlatformMirrored,
    PlatformUpdate,
    PlatformView,
    SessionDetail,
    SessionList,
    SessionMinted,
    SessionsRevoked,
    StateView,
    UserState,
    UserView,
)
from platform_hub_client.calls import Call
from platform_hub_client.errors import HostApiError

if TYPE_CHECKING:
    from platform_hub_client.clients import AsyncHostClient, HostClient

__version__ = "1.0.0"

__all__ = [
    "AsyncHostClient",
    "Call",
    "HoldView",
    "HostApiError",
    "HostClient",
    "PlatformCreate",
    "PlatformDetail",
    "PlatformKind",
    "PlatformList",
    "PlatformMirrored",
    "PlatformUpdate",
    "PlatformView",
    "SessionDetail",
    "SessionList",
    "SessionMinted",
    "SessionsRevoked",
    "StateView",
    "UserState",
    "UserView",
    "__version__",
]


def __getattr__(name: str) -> object:
    # The clients load httpx on first use: the hub imports this package for its bodies
    # alone, and its start-up is part of every reconnect storm (httpx took 120 ms of it).
    if name in {"AsyncHostClient", "HostClient"}:
        from platform_hub_client import clients

        return getattr(clients, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
