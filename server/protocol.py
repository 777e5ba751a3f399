"""Wire messages, rejection reasons, error and close codes, and their one encode/decode pair.

Every JSON text frame between a tab and the hub is one of the structs below, tagged by its
``type`` field. ``docs/protocol.md`` documents each one; keep the two in step.
"""

from __future__ import annotations

import enum
import ipaddress
import re
import urllib.parse
from typing import Annotated, Literal, TypeVar

import msgspec

from server.errors import BadMessage

__all__ = [
    "PLATFORMS_CAUSE",
    "PROTOCOL_VERSION",
    "Cause",
    "ClientMessage",
    "CloseCode",
    "Error",
    "ErrorCode",
    "Hello",
    "HoldAnswer",
    "HoldMessage",
    "HoldRequest",
    "HoldView",
    "Ping",
    "PlatformView",
    "Pong",
    "RejectReason",
    "Rejected",
    "ServerMessage",
    "SessionEndReason",
    "SessionEnded",
    "SessionExpiring",
    "SessionInfo",
    "StateMessage",
    "StateView",
    "Switch",
    "Switched",
    "UserInfo",
    "ErrorBody",
    "LoginRequest",
    "PlatformCreate",
    "PlatformDetail",
    "PlatformList",
    "PlatformUpdate",
    "PlatformsMirror",
    "SessionDetail",
    "SessionList",
    "SessionMint",
    "SessionMinted",
    "SessionsRevoked",
    "UserUpsert",
    "UserView",
    "SessionView",
    "StateResponse",
    "LINE",
    "URL_PATTERN",
    "check_instance_url",
    "decode",
    "decode_body",
    "is_line",
    "readable",
    "decode_server",
    "encode",
]

PROTOCOL_VERSION = 1
T = TypeVar("T")

# Text that every engine can store and every page can show on one line: no NUL (PostgreSQL
# cannot store it: an 11 KB traceback and a failed batch) and no other C0 control character.
# msgspec refuses lone surrogates and invalid UTF-8 itself.
LINE = r"^[^\x00-\x1f\x7f]*$"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=LINE)]
PlatformId = Annotated[int, msgspec.Meta(ge=1, le=2**62)]
Version = Annotated[int, msgspec.Meta(ge=0, le=2**62)]


class CloseCode(enum.IntEnum):
    """WebSocket close codes the hub uses; 4001-4999 are the hub's own (4000 is the
    browser client's: it drops a link that answered no ping, navigation.js PONG_TIMEOUT)."""

    NORMAL = 1000
    MESSAGE_TOO_BIG = 1009
    INTERNAL_ERROR = 1011
    SERVICE_RESTART = 1012
    TRY_AGAIN_LATER = 1013
    # Terminal: the login session is over. Clients must not reconnect.
    SESSION_ENDED = 4001
    # Too many malformed messages on one connection.
    PROTOCOL_ABUSE = 4002
    # The user already has the maximum number of tabs connected.
    TAB_LIMIT = 4003
    # The tab sent nothing, not even a ping, for the idle timeout.
    IDLE_TIMEOUT = 4004
    # Another connection with the same tab id took this one's place.
    TAB_REPLACED = 4005
    # The tab did not read its messages and its outbox overflowed.
    SLOW_CONSUMER = 4008


class RejectReason(enum.StrEnum):
    """Why a switch was refused; every rejection also carries the current state."""

    STALE = "stale"
    UNKNOWN_PLATFORM = "unknown_platform"
    INACTIVE_PLATFORM = "inactive_platform"
    RATE_LIMITED = "rate_limited"
    UNAVAILABLE = "unavailable"
    BAD_REQUEST = "bad_request"
    # A job of the host app holds the user's switches (the message says which job).
    BUSY = "busy"


class ErrorCode(enum.StrEnum):
    """Error codes of ``error`` messages and of HTTP error bodies."""

    BAD_MESSAGE = "bad_message"
    BAD_REQUEST = "bad_request"
    INVALID_CREDENTIALS = "invalid_credentials"
    UNAUTHENTICATED = "unauthenticated"
    FORBIDDEN_ORIGIN = "forbidden_origin"
    # The Host header names a host the hub is not served under (HUB_ALLOWED_HOSTS).
    FORBIDDEN_HOST = "forbidden_host"
    UNAVAILABLE = "unavailable"
    RATE_LIMITED = "rate_limited"
    # A request over a size limit (413 body, 431 headers), or not received in time (408).
    TOO_LARGE = "too_large"
    TIMEOUT = "timeout"
    # No such path, or a method the path does not take (405, with Allow).
    NOT_FOUND = "not_found"
    METHOD_NOT_ALLOWED = "method_not_allowed"
    # A platform change refused (server/storage/platforms.py).
    UNKNOWN_PLATFORM = "unknown_platform"
    INACTIVE_PLATFORM = "inactive_platform"
    LAST_ACTIVE_PLATFORM = "last_active_platform"
    NAME_TAKEN = "name_taken"
    ACCOUNT_TAKEN = "account_taken"
    TOO_MANY_PLATFORMS = "too_many_platforms"
    DEFAULT_TAKEN = "default_taken"
    # The host API (server/web/host_api.py).
    UNKNOWN_USER = "unknown_user"
    UNKNOWN_SESSION = "unknown_session"


class SessionEndReason(enum.StrEnum):
    """Why a login session ended."""

    LOGOUT = "logout"
    EXPIRED = "expired"
    REVOKED = "revoked"


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class PlatformView(_Frozen, frozen=True):
    """One of the user's active platforms, as tabs see it (never its credentials)."""

    id: int
    name: str
    kind: str
    instance_url: str
    username: str
    is_default: bool


class StateView(_Frozen, frozen=True):
    """The authoritative state of one user: version, active platform and platforms."""

    version: int
    active: int | None
    platforms: tuple[PlatformView, ...]

    def platform(self, platform_id: int | None) -> PlatformView | None:
        """Return the platform with this id, if the user has it."""
        return next((p for p in self.platforms if p.id == platform_id), None)


class UserInfo(_Frozen, frozen=True):
    """The user a connection belongs to."""

    id: int
    name: str


class SessionInfo(_Frozen, frozen=True):
    """What a tab may know of its login session."""

    expires_at: str


class HoldView(_Frozen, frozen=True):
    """A hold on the user's switches: why, and when it ends unless released earlier."""

    reason: str
    expires_at: str


class Cause(_Frozen, frozen=True):
    """What produced a state broadcast: a switch, or a resync after lost notifications."""

    kind: Literal["switch", "platforms", "resync"]
    tab: str | None
    request: str  # "" for a platform change and a resync


# What a state broadcast after a platform change carries (server/storage/platforms.py).
PLATFORMS_CAUSE = Cause(kind="platforms", tab=None, request="")


# From a tab.


class Switch(_Frozen, frozen=True, tag="switch", tag_field="type"):
    """Ask to make ``platform`` active, given that the tab last saw version ``base``.

    Also the body of ``POST /api/switch``: decoded as this type alone, ``type`` may be left
    out (and must be "switch" if given).
    """

    id: RequestId
    platform: PlatformId
    base: Version


class Ping(_Frozen, frozen=True, tag="ping", tag_field="type"):
    """Check that the connection is alive; answered with ``pong``."""


ClientMessage = Switch | Ping


# From the hub.


class Hello(_Frozen, frozen=True, tag="hello", tag_field="type"):
    """Greet a new connection with a snapshot of the state."""

    protocol: int
    tab: str
    user: UserInfo
    state: StateView
    session: SessionInfo
    heartbeat_s: float
    hold: HoldView | None = None


class HoldMessage(_Frozen, frozen=True, tag="hold", tag_field="type"):
    """Tell every tab of the user that a hold started (``hold``) or ended (null)."""

    hold: HoldView | None


class Pong(_Frozen, frozen=True, tag="pong", tag_field="type"):
    """Answer a ping."""


class Switched(_Frozen, frozen=True, tag="switched", tag_field="type"):
    """Tell the asking tab its switch was accepted and committed at ``version``."""

    id: str
    version: int


class Rejected(_Frozen, frozen=True, tag="rejected", tag_field="type"):
    """Tell the asking tab its switch was refused, why, and what the state is."""

    id: str
    reason: RejectReason
    message: str
    # Null only when the database is unreachable and the hub holds no state of this user.
    state: StateView | None


class StateMessage(_Frozen, frozen=True, tag="state", tag_field="type"):
    """Broadcast a committed state to every tab of the user."""

    state: StateView
    cause: Cause


class SessionExpiring(_Frozen, frozen=True, tag="session_expiring", tag_field="type"):
    """Warn that the login session expires at ``expires_at`` unless extended."""

    expires_at: str


class SessionEnded(_Frozen, frozen=True, tag="session_ended", tag_field="type"):
    """Announce that the login session is over; close code 4001 follows."""

    reason: SessionEndReason


class Error(_Frozen, frozen=True, tag="error", tag_field="type"):
    """Report a frame the hub could not accept; the connection stays open."""

    code: ErrorCode
    message: str


# HTTP bodies.


class LoginRequest(_Frozen, frozen=True):
    """Body of ``POST /api/login``."""

    username: Annotated[str, msgspec.Meta(max_length=200, pattern=LINE)]
    password: Annotated[str, msgspec.Meta(max_length=1000)]


PlatformName = Annotated[str, msgspec.Meta(min_length=1, max_length=100, pattern=LINE)]
PlatformKind = Literal["pixelfed", "mastodon"]
# Characters no URL here may hold: controls, spaces of every kind. Spelt out rather than
# \s, whose meaning differs between Python's re and the ECMA-262 dialect of JSON Schema
# (U+001C-U+001F, U+0085), so what the OpenAPI document admits is what the hub accepts.
_NOT_IN_URL = r"\x00-\x20\x7f-\x9f\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
# A host name or an IPv4 address (an instance is reached by name; IPv6 literals are left out).
_URL_HOST = rf"[^/@:?#\[\]\\{_NOT_IN_URL}]+"
_URL_PORT = (
    r"(?::(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}"
    r"|[1-9][0-9]{0,3}))?"
)
# http(s), a host (no credentials), a port from 1 to 65535 if any, then anything printable.
URL_PATTERN = rf"^https?://{_URL_HOST}{_URL_PORT}(?:[/?#][^{_NOT_IN_URL}]*)?$"
InstanceUrl = Annotated[str, msgspec.Meta(min_length=8, max_length=500, pattern=URL_PATTERN)]
AccountName = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=LINE)]


class PlatformCreate(_Frozen, frozen=True):
    """Body of ``POST /api/platforms``: connect a platform account."""

    name: PlatformName
    kind: PlatformKind
    instance_url: InstanceUrl
    username: AccountName
    is_default: bool = False

    def __post_init__(self) -> None:
        check_instance_url(self.instance_url)


class PlatformUpdate(_Frozen, frozen=True):
    """Body of ``PATCH /api/platforms/{id}``: rename, (de)activate, or make it the default."""

    name: PlatformName | None = None
    is_active: bool | None = None
    # Only true: a default is replaced by making another one the default.
    is_default: Literal[True] | None = None


class PlatformDetail(_Frozen, frozen=True):
    """One of the user's platforms, active or not, for managing them."""

    id: int
    name: str
    kind: str
    instance_url: str
    username: str
    is_active: bool
    is_default: bool


class PlatformList(_Frozen, frozen=True):
    """Body of the platform endpoints: every platform, and the state tabs now see."""

    platforms: tuple[PlatformDetail, ...]
    state: StateView


class PlatformsMirror(_Frozen, frozen=True):
    """Body of the host API's ``PUT .../platforms``: the user's platforms, as the host has them.

    Matched by account (instance URL and username): new ones are added, missing ones
    deleted, the others renamed, (de)activated or made default as listed.
    """

    platforms: tuple[PlatformMirrored, ...]


class PlatformMirrored(_Frozen, frozen=True):
    """One platform account as the host app has it."""

    name: PlatformName
    kind: PlatformKind
    instance_url: InstanceUrl
    username: AccountName
    is_active: bool = True
    is_default: bool = False

    def __post_init__(self) -> None:
        check_instance_url(self.instance_url)


class HoldRequest(_Frozen, frozen=True):
    """Body of the host API's ``PUT .../hold``: hold the user's switches while a job runs."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=LINE)]
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)]


class HoldAnswer(_Frozen, frozen=True):
    """The hold now in force (null once released), and the state it holds."""

    hold: HoldView | None
    state: StateView


class UserUpsert(_Frozen, frozen=True):
    """Body of the host API's ``PUT /api/host/users/{name}``."""

    # None: the user logs in only through sessions the host app mints.
    password: Annotated[str, msgspec.Meta(min_length=8, max_length=1000)] | None = None
    # A new password for an existing user ends the user's live sessions (their tabs are told:
    # session_ended, revoked), as a reset should; false keeps them.
    end_sessions: bool = True


class UserView(_Frozen, frozen=True):
    """A user of the hub, as the host API answers it."""

    id: int
    name: str
    created: bool
    # The live sessions a new password ended.
    sessions_ended: int = 0


class SessionMint(_Frozen, frozen=True):
    """Body of the host API's ``POST .../sessions``: the device the session is for."""

    user_agent: Annotated[str, msgspec.Meta(max_length=300, pattern=LINE)] | None = None
    ip: (
        Annotated[
            str,
            msgspec.Meta(
                max_length=64,
                extra_json_schema={"anyOf": [{"format": "ipv4"}, {"format": "ipv6"}]},
            ),
        ]
        | None
    ) = None

    def __post_init__(self) -> None:
        if self.ip is not None:
            try:
                ipaddress.ip_address(self.ip)
            except ValueError:
                raise ValueError(f"ip {self.ip!r} is not an IPv4 or IPv6 address") from None


class SessionDetail(_Frozen, frozen=True):
    """One live login session, with the hints a person needs to recognise the device."""

    id: int
    created_at: str
    last_seen_at: str
    expires_at: str
    user_agent: str | None
    ip: str | None


class SessionMinted(_Frozen, frozen=True):
    """A session minted for the host app: give ``token`` to the page as its cookie or bearer."""

    token: str
    session: SessionDetail


class SessionList(_Frozen, frozen=True):
    """A user's live sessions, newest first."""

    sessions: tuple[SessionDetail, ...]


class SessionsRevoked(_Frozen, frozen=True):
    """What a logout or revocation ended: sessions, and tabs on this process."""

    sessions: int
    tabs: int


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


ServerMessage = (
    Hello
    | Pong
    | Switched
    | Rejected
    | StateMessage
    | HoldMessage
    | SessionExpiring
    | SessionEnded
    | Error
)

_client_decoder = msgspec.json.Decoder(ClientMessage)
_server_decoder = msgspec.json.Decoder(ServerMessage)
_encoder = msgspec.json.Encoder()


def decode(frame: str | bytes) -> ClientMessage:
    """Decode a tab's frame, or raise BadMessage saying precisely what is wrong."""
    try:
        message: ClientMessage = _client_decoder.decode(frame)
        return message
    except msgspec.ValidationError as error:
        raise BadMessage(_explain(str(error))) from None
    except msgspec.DecodeError as error:
        raise BadMessage(f"Frame is not valid JSON: {error}") from None
    except RecursionError:
        raise BadMessage("Frame is nested too deeply") from None


def decode_server(frame: str | bytes) -> ServerMessage:
    """Decode a hub's frame (for clients and tests)."""
    message: ServerMessage = _server_decoder.decode(frame)
    return message


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


def check_instance_url(url: str) -> None:
    """Raise ValueError, saying why, unless ``url`` is an http(s) URL a page can open: the
    URL_PATTERN rule (a host, a port in range if any, no credentials, nothing unprintable),
    and one urllib can take apart."""
    if re.fullmatch(URL_PATTERN[1:-1], url) is None:
        raise ValueError(f"instance_url {url!r} is not an http(s) URL with a host and valid port")
    try:
        parts = urllib.parse.urlsplit(url)
        parts.port  # noqa: B018 (raises for a port it cannot read)
    except ValueError as error:
        raise ValueError(f"instance_url {url!r} is not a valid URL: {error}") from None
    if not parts.hostname:
        raise ValueError(f"instance_url {url!r} has no host")


def is_line(text: str) -> bool:
    """Tell whether ``text`` holds no NUL or other control character (the LINE rule)."""
    return _CONTROL.search(text) is None


def encode(message: object) -> str:
    """Encode a message (or an HTTP body) as JSON text."""
    return _encoder.encode(message).decode()


def readable(detail: str) -> str:
    """Say a validation error's text in words (the LINE rule's regex, named)."""
    return detail.replace(f"matching regex {LINE!r}", "without NUL or other control characters")


def _explain(detail: str) -> str:
    detail = readable(detail)
    if "Invalid value" in detail and "`$.type`" in detail:
        return f"Unknown message type ({detail}); expected one of: switch, ping"
    if "missing required field `type`" in detail:
        return "Message has no `type` field; expected one of: switch, ping"
    return f"Invalid message: {detail}"
