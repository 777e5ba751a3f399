"""HTTP bodies of the page's API and the host API, and their one decode.

The WebSocket's messages are in server/protocol.py; these are the JSON bodies of the HTTP
endpoints (server/web/pages.py, server/web/host_api.py), from which the host API's OpenAPI
document is generated (server/web/openapi.py). The host API's bodies are defined once, in the
host client's package (host-client/platform_hub_client/bodies.py), and imported here.
"""

from __future__ import annotations

from typing import Annotated, TypeVar

import msgspec

from platform_hub_client.bodies import (
    LINE,
    URL_PATTERN,
    AccountName,
    HoldRequest,
    HoldView,
    InstanceUrl,
    PlatformCreate,
    PlatformDetail,
    PlatformKind,
    PlatformList,
    PlatformMirrored,
    PlatformName,
    PlatformsMirror,
    PlatformUpdate,
    SessionDetail,
    SessionList,
    SessionMint,
    SessionMinted,
    SessionsRevoked,
    StateView,
    UserState,
    UserUpsert,
    UserView,
    check_instance_url,
)
from server.errors import BadMessage
from server.protocol import ErrorCode, SessionInfo, UserInfo, readable

__all__ = [
    "URL_PATTERN",
    "AccountName",
    "ErrorBody",
    "HoldRequest",
    "InstanceUrl",
    "LoginRequest",
    "PlatformCreate",
    "PlatformDetail",
    "PlatformKind",
    "PlatformList",
    "PlatformMirrored",
    "PlatformName",
    "PlatformUpdate",
    "PlatformsMirror",
    "SessionDetail",
    "SessionList",
    "SessionMint",
    "SessionMinted",
    "SessionView",
    "SessionsRevoked",
    "StateResponse",
    "UserState",
    "UserUpsert",
    "UserView",
    "check_instance_url",
    "decode_body",
]

T = TypeVar("T")


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class LoginRequest(_Frozen, frozen=True):
    """Body of ``POST /api/login``."""

    username: Annotated[str, msgspec.Meta(max_length=200, pattern=LINE)]
    password: Annotated[str, msgspec.Meta(max_length=1000)]


class SessionView(_Frozen, frozen=True):
    """Body of ``POST /api/login`` and ``POST /api/session/extend``."""

    user: UserInfo
    expires_at: str


class StateResponse(_Frozen, frozen=True):
    """Body of ``GET /api/state``."""

    user: UserInfo
    state: StateView
    session: SessionInfo
    hold: HoldView | None = None


class ErrorBody(_Frozen, frozen=True):
    """Body of every HTTP error; ``reason`` says why a session is not usable."""

    error: ErrorCode
    message: str
    reason: str | None = None


def decode_body(body: bytes, kind: type[T]) -> T:
    """Decode an HTTP JSON body, or raise BadMessage saying what is wrong."""
    try:
        decoded: T = msgspec.json.decode(body, type=kind)
        return decoded
    except msgspec.ValidationError as error:
        raise BadMessage(f"Invalid request body: {readable(str(error))}") from None
    except msgspec.DecodeError as error:
        raise BadMessage(f"Request body is not valid JSON: {error}") from None
    except RecursionError:
        raise BadMessage("Request body is nested too deeply") from None
