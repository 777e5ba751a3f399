"""The host API's Python client moved to its own distribution, ``platform-hub-client``
(host-client/, import ``platform_hub_client``): a sync HostClient and an AsyncHostClient.

This module keeps the old names working for host apps written against it: HostClient here is
the asyncio client, HoldAnswer the former name of UserState.
"""

from platform_hub_client import AsyncHostClient as HostClient
from platform_hub_client import (
    HostApiError,
    PlatformCreate,
    PlatformList,
    PlatformMirrored,
    PlatformUpdate,
    SessionList,
    SessionMinted,
    SessionsRevoked,
    UserState,
    UserView,
)

HoldAnswer = UserState

__all__ = [
    "HoldAnswer",
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
