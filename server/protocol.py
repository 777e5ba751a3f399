"""Wire messages, rejection reasons, error and close codes, and their one encode/decode pair.

Every JSON text frame between a tab and the hub is one of the structs below, tagged by its
``type`` field. The state a tab sees (StateView, PlatformView, HoldView) is also what the host
API answers, so it is defined once with the host API's bodies (platform_hub_client.bodies).
``docs/protocol.md`` documents each one; keep the two in step.
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Literal

import msgspec

from platform_hub_client.bodies import LINE, HoldView, PlatformView, StateView
from server.errors import BadMessage

__all__ = [
    "ENDED_WORDS",
    "LINE",
    "PLATFORMS_CAUSE",
    "PROTOCOL_VERSION",
    "TAB_ID",
    "Attach",
    "Cause",
    "ClientMessage",
    "CloseCode",
    "Detach",
    "Detached",
    "Device",
    "Error",
    "ErrorCode",
    "Hello",
    "HoldMessage",
    "HoldView",
    "Ping",
    "PlatformView",
    "Pong",
    "PresenceMessage",
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
    "TabId",
    "UserInfo",
    "decode",
    "decode_server",
    "encode",
    "is_line",
    "readable",
    "restart_reason",
    "restart_window_ms",
]

PROTOCOL_VERSION = 1

# LINE: text that every engine can store and every page can show on one line (no NUL, which
# PostgreSQL cannot store, nor any other C0 control character), from the host bodies.
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
RequestId = Annotated[str, msgspec.Meta(min_length=1, max_length=64, pattern=LINE)]
# A tab's id: the ?tab= of its handshake, or a member's of a shared connection (Attach).
# ("$(?!\n)": Python's $, which msgspec's pattern uses, also matches before a final newline.)
TAB_ID = r"^[A-Za-z0-9_-]{1,64}$(?!\n)"
TabId = Annotated[str, msgspec.Meta(max_length=64, pattern=TAB_ID)]
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


def restart_reason(within_ms: int) -> str:
    """The reason of a 1012 close that asks the tab to reconnect within ``within_ms``
    milliseconds (a delay drawn uniformly over that window: a restart's tabs come back spread
    over it instead of all at once; docs/protocol.md)."""
    return f"hub restarting; reconnect within {within_ms} ms"


_RESTART_WINDOW = re.compile(r"reconnect within (\d{1,9}) ms")


def restart_window_ms(reason: str) -> int:
    """The window a 1012's reason asks to reconnect within, in milliseconds; 0 if none (as
    navigation.js's restartWindowMs reads it)."""
    found = _RESTART_WINDOW.search(reason)
    return int(found[1]) if found else 0


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
    # A shared connection's switch for a tab it does not carry (any more: it moved).
    NOT_ATTACHED = "not_attached"


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
    # A shared connection's attach past max_tabs_per_user (the user's tabs, members counted).
    TAB_LIMIT = "tab_limit"


class SessionEndReason(enum.StrEnum):
    """Why a login session ended."""

    LOGOUT = "logout"
    EXPIRED = "expired"
    REVOKED = "revoked"


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    pass


class UserInfo(_Frozen, frozen=True):
    """The user a connection belongs to."""

    id: int
    name: str


class SessionInfo(_Frozen, frozen=True):
    """What a tab may know of its login session."""

    expires_at: str


class Device(_Frozen, frozen=True):
    """One of a person's devices: a live login session, as that person's tabs may see it.

    No token and no IP address: ``session`` is the session's handle, random, which only its
    person can revoke (``POST /api/sessions/{handle}/revoke``).
    """

    session: str
    # From the user agent: "Chrome on macOS", "Firefox on Linux", or "Unknown device".
    description: str
    signed_in_at: str
    # When the hub last saw it (a request, a tab connecting), to within HUB_SESSION_TOUCH_S.
    last_active_at: str
    # Its open tabs, on every hub process.
    tabs: int = 0
    # Whether this is the receiving tab's own session.
    current: bool = False


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
    out (and must be "switch" if given). On a shared connection, ``tab`` names the member
    tab that asks (attached before); left out, it is the connection's own tab.
    """

    id: RequestId
    platform: PlatformId
    base: Version
    tab: TabId | None = None


class Ping(_Frozen, frozen=True, tag="ping", tag_field="type"):
    """Check that the connection is alive; answered with ``pong``."""


class Attach(_Frozen, frozen=True, tag="attach", tag_field="type"):
    """Carry another tab of this browser on this connection (shared connections): answered
    with that tab's ``hello``; from then on, the connection's broadcasts are its too."""

    tab: TabId


class Detach(_Frozen, frozen=True, tag="detach", tag_field="type"):
    """Stop carrying a member tab (it closed); not answered."""

    tab: TabId


ClientMessage = Switch | Ping | Attach | Detach


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
    # The person's devices, newest sign-in first; "presence" messages replace the list.
    devices: tuple[Device, ...] = ()


class PresenceMessage(_Frozen, frozen=True, tag="presence", tag_field="type"):
    """Tell a tab its person's devices anew: one came or went, or opened or closed a tab."""

    devices: tuple[Device, ...]


class HoldMessage(_Frozen, frozen=True, tag="hold", tag_field="type"):
    """Tell every tab of the user that a hold started (``hold``) or ended (null)."""

    hold: HoldView | None


class Pong(_Frozen, frozen=True, tag="pong", tag_field="type"):
    """Answer a ping."""


class Switched(_Frozen, frozen=True, tag="switched", tag_field="type", omit_defaults=True):
    """Tell the asking tab its switch was accepted and committed at ``version``."""

    id: str
    version: int
    # The member tab that asked, on a shared connection (left out for the connection's own).
    tab: str | None = None


class Rejected(_Frozen, frozen=True, tag="rejected", tag_field="type", omit_defaults=True):
    """Tell the asking tab its switch was refused, why, and what the state is."""

    id: str
    reason: RejectReason
    message: str
    # Null only when the database is unreachable and the hub holds no state of this user.
    state: StateView | None
    tab: str | None = None  # as Switched's


class Detached(_Frozen, frozen=True, tag="detached", tag_field="type"):
    """Tell a shared connection that it no longer carries member ``tab``: another connection
    (or the tab's own) took it."""

    tab: str


class StateMessage(_Frozen, frozen=True, tag="state", tag_field="type"):
    """Broadcast a committed state to every tab of the user."""

    state: StateView
    cause: Cause


class SessionExpiring(_Frozen, frozen=True, tag="session_expiring", tag_field="type"):
    """Warn that the login session expires at ``expires_at`` unless extended."""

    expires_at: str


class SessionEnded(_Frozen, frozen=True, tag="session_ended", tag_field="type"):
    """Announce that the login session is over, why, and in words; close code 4001 follows."""

    reason: SessionEndReason
    message: str

    @classmethod
    def because(cls, reason: SessionEndReason) -> SessionEnded:
        """The message for ``reason``, with the words a page shows."""
        return cls(reason=reason, message=ENDED_WORDS[reason])


# The words for each end, as SessionEnded carries them (and navigation.js shows without a hub).
ENDED_WORDS = {
    SessionEndReason.LOGOUT: "You are signed out.",
    SessionEndReason.EXPIRED: "Your session expired. Sign in again to continue.",
    SessionEndReason.REVOKED: "Your session was ended. Sign in again to continue.",
}


class Error(_Frozen, frozen=True, tag="error", tag_field="type", omit_defaults=True):
    """Report a frame the hub could not accept; the connection stays open."""

    code: ErrorCode
    message: str
    # The member tab the frame named, on a shared connection (an attach refused).
    tab: str | None = None


ServerMessage = (
    Hello
    | Pong
    | Switched
    | Rejected
    | StateMessage
    | HoldMessage
    | PresenceMessage
    | SessionExpiring
    | SessionEnded
    | Detached
    | Error
)

_client_decoder = msgspec.json.Decoder(ClientMessage)
_CLIENT_TYPES = "switch, ping, attach, detach"
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
        return f"Unknown message type ({detail}); expected one of: {_CLIENT_TYPES}"
    if "missing required field `type`" in detail:
        return f"Message has no `type` field; expected one of: {_CLIENT_TYPES}"
    return f"Invalid message: {detail}"
