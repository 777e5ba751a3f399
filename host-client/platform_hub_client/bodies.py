"""The JSON bodies of the hub's host API: what its calls take and answer.

The hub decodes and validates requests with these same structs (server/api.py imports them),
and its OpenAPI document is generated from them, so a body this package builds is one the hub
accepts. Constraints (lengths, patterns) are checked when the hub decodes a body; the client
checks the ones it can before sending (see ``HostApiError`` 422 ``bad_request``).
"""

from __future__ import annotations

import ipaddress
import re
import urllib.parse
from typing import Annotated, Literal

import msgspec

__all__ = [
    "EXTERNAL_ID",
    "LINE",
    "URL_PATTERN",
    "USER_NAME",
    "AccountName",
    "ExternalId",
    "HoldRequest",
    "HoldView",
    "InstanceUrl",
    "PlatformCreate",
    "PlatformDetail",
    "PlatformKind",
    "PlatformList",
    "PlatformMirrored",
    "PlatformName",
    "PlatformUpdate",
    "PlatformView",
    "PlatformsMirror",
    "SessionDetail",
    "SessionList",
    "SessionMint",
    "SessionMinted",
    "SessionsRevoked",
    "StateView",
    "UserState",
    "UserUpsert",
    "UserView",
    "check_instance_url",
]

# Text that every engine can store and every page can show on one line: no NUL (PostgreSQL
# cannot store it) and no other C0 control character. msgspec refuses lone surrogates and
# invalid UTF-8 itself. ("$(?!\n)": Python's $, which msgspec's pattern uses, also matches
# before a final newline, and "a\n" passed.)
LINE = r"^[^\x00-\x1f\x7f]*$(?!\n)"
# A user name or an external id: a LINE that a host API path can carry as one segment of its
# own (no "/" in a user name; neither may be "." or "..", which URLs resolve away).
USER_NAME = r"^(?!\.\.?$)[^\x00-\x1f\x7f/]*$(?!\n)"
EXTERNAL_ID = r"^(?!\.\.?$)[^\x00-\x1f\x7f]*$(?!\n)"
ExternalId = Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=EXTERNAL_ID)]


class _Frozen(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A request body: a field the hub does not know is refused, not ignored. The platform
    bodies leave out fields at their defaults (omit_defaults), so a client that sets no
    external id sends what a hub from before external ids accepts."""


class _Answer(msgspec.Struct, frozen=True):
    """An answer: fields a newer hub adds are ignored, so an older client keeps working."""


# The state tabs see (also part of the WebSocket protocol: server/protocol.py).


class PlatformView(_Answer, frozen=True, omit_defaults=True):
    """One of the user's active platforms, as tabs see it (never its credentials)."""

    id: int
    name: str
    kind: str
    instance_url: str
    username: str
    is_default: bool
    # The host app's own id for the account, given when it mirrored or added it. Left out
    # when there is none (omit_defaults), so a platform without one reads as it always did.
    external_id: str | None = None


class StateView(_Answer, frozen=True):
    """The authoritative state of one user: version, active platform and platforms."""

    version: int
    active: int | None
    platforms: tuple[PlatformView, ...]

    def platform(self, platform_id: int | None) -> PlatformView | None:
        """Return the platform with this id, if the user has it."""
        return next((p for p in self.platforms if p.id == platform_id), None)


class HoldView(_Answer, frozen=True):
    """A hold on the user's switches: why, and when it ends unless released earlier."""

    reason: str
    expires_at: str


# Platforms.

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


class PlatformCreate(_Frozen, frozen=True, omit_defaults=True):
    """Body of ``POST .../platforms``: connect a platform account."""

    name: PlatformName
    kind: PlatformKind
    instance_url: InstanceUrl
    username: AccountName
    is_default: bool = False
    # The host app's own id for the account (host API only), unique per user.
    external_id: ExternalId | None = None

    def __post_init__(self) -> None:
        check_instance_url(self.instance_url)


class PlatformUpdate(_Frozen, frozen=True):
    """Body of ``PATCH .../platforms/{id}``: rename, (de)activate, or make it the default."""

    name: PlatformName | None = None
    is_active: bool | None = None
    # Only true: a default is replaced by making another one the default.
    is_default: Literal[True] | None = None


class PlatformDetail(_Answer, frozen=True, omit_defaults=True):
    """One of the user's platforms, active or not, for managing them."""

    id: int
    name: str
    kind: str
    instance_url: str
    username: str
    is_active: bool
    is_default: bool
    external_id: str | None = None


class PlatformList(_Answer, frozen=True):
    """Body of the platform endpoints: every platform, and the state tabs now see."""

    platforms: tuple[PlatformDetail, ...]
    state: StateView


class PlatformMirrored(_Frozen, frozen=True, omit_defaults=True):
    """One platform account as the host app has it."""

    name: PlatformName
    kind: PlatformKind
    instance_url: InstanceUrl
    username: AccountName
    is_active: bool = True
    is_default: bool = False
    # The host app's own id for the account, unique per user: matched by it first, so the
    # account's instance URL or username may change and it stays the same platform.
    external_id: ExternalId | None = None

    def __post_init__(self) -> None:
        check_instance_url(self.instance_url)


class PlatformsMirror(_Frozen, frozen=True):
    """Body of ``PUT .../platforms``: the user's platforms, as the host has them.

    Matched by external id where one is given, else by account (instance URL and username):
    new ones are added, missing ones deleted, the others renamed, (de)activated, made default
    or given their new account and external id, as listed.
    """

    platforms: tuple[PlatformMirrored, ...]


# Holds.


class HoldRequest(_Frozen, frozen=True):
    """Body of ``PUT .../hold``: hold the user's switches while a job runs."""

    reason: Annotated[str, msgspec.Meta(min_length=1, max_length=200, pattern=LINE)]
    ttl_s: Annotated[float, msgspec.Meta(gt=0, le=24 * 3600)]


class UserState(_Answer, frozen=True):
    """A user's state and the hold in force (null when none): the answer to
    ``GET .../state``, and to placing or releasing a hold."""

    hold: HoldView | None
    state: StateView


# Users.


class UserUpsert(_Frozen, frozen=True):
    """Body of ``PUT /api/host/users/{name}``."""

    # None: the user logs in only through sessions the host app mints.
    password: Annotated[str, msgspec.Meta(min_length=8, max_length=1000)] | None = None
    # A new password for an existing user ends the user's live sessions (their tabs are told:
    # session_ended, revoked), as a reset should; false keeps them.
    end_sessions: bool = True


class UserView(_Answer, frozen=True):
    """A user of the hub, as the host API answers it."""

    id: int
    name: str
    created: bool
    # The live sessions a new password ended.
    sessions_ended: int = 0


# Sessions.


class SessionMint(_Frozen, frozen=True):
    """Body of ``POST .../sessions``: the device the session is for."""

    # The browser's User-Agent header as received: the hub keeps its first 300 characters,
    # control characters dropped, as its own login does (a header may hold anything).
    user_agent: Annotated[str, msgspec.Meta(max_length=2000)] | None = None
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


class SessionDetail(_Answer, frozen=True):
    """One live login session, with the hints a person needs to recognise the device."""

    id: int
    created_at: str
    last_seen_at: str
    expires_at: str
    user_agent: str | None
    ip: str | None


class SessionMinted(_Answer, frozen=True):
    """A session minted for the host app: give ``token`` to the page as its cookie or bearer."""

    token: str
    session: SessionDetail


class SessionList(_Answer, frozen=True):
    """A user's live sessions, newest first."""

    sessions: tuple[SessionDetail, ...]


class SessionsRevoked(_Answer, frozen=True):
    """What a logout or revocation ended: sessions, and tabs on the process that answered."""

    sessions: int
    tabs: int


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
