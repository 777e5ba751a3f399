"""Each host API call once: its method, path, body and answer, built from a method's
arguments. The sync and async clients (clients.py) send the same calls."""

from __future__ import annotations

import dataclasses
import re
import urllib.parse
from collections.abc import Callable, Sequence
from typing import Any, Generic, Literal, TypeVar

import msgspec

from platform_hub_client.bodies import (
    EXTERNAL_ID,
    USER_NAME,
    HoldRequest,
    PlatformCreate,
    PlatformList,
    PlatformMirrored,
    PlatformsMirror,
    PlatformUpdate,
    SessionList,
    SessionMint,
    SessionMinted,
    SessionsRevoked,
    UserState,
    UserUpsert,
    UserView,
)
from platform_hub_client.errors import HostApiError

__all__ = [
    "Call",
    "add_platform",
    "change_platform",
    "hold",
    "mint_session",
    "mirror_platforms",
    "platforms",
    "release",
    "remove_platform",
    "revoke_session",
    "revoke_sessions",
    "sessions",
    "state",
    "upsert_user",
]

T = TypeVar("T")
EndReason = Literal["logout", "revoked"]
_encoder = msgspec.json.Encoder()


@dataclasses.dataclass(frozen=True, slots=True)
class Call(Generic[T]):
    """One request to the host API and the type of its answer."""

    method: str
    path: str  # below /api/host
    answer: type[T]
    content: bytes | None = None
    params: dict[str, str] | None = None


def upsert_user(
    name: str, password: str | None = None, *, end_sessions: bool = True
) -> Call[UserView]:
    """Create the user, or set its password; None keeps it (or leaves it without one).

    A new password ends the user's live sessions unless ``end_sessions`` is false.
    """
    body = _checked(lambda: UserUpsert(password=password, end_sessions=end_sessions))
    return Call("PUT", _user(name), UserView, body)


def platforms(name: str) -> Call[PlatformList]:
    """Return every platform of the user and the state its tabs see."""
    return Call("GET", _user(name, "platforms"), PlatformList)


def mirror_platforms(name: str, platforms: Sequence[PlatformMirrored]) -> Call[PlatformList]:
    """Make the user's platforms exactly ``platforms``, matched by external id where given,
    else by account. A mirror that changes nothing moves no version and tells no tab."""
    body = _checked(lambda: PlatformsMirror(platforms=tuple(platforms)))
    return Call("PUT", _user(name, "platforms"), PlatformList, body)


def add_platform(name: str, platform: PlatformCreate) -> Call[PlatformList]:
    """Connect a platform account to the user."""
    return Call("POST", _user(name, "platforms"), PlatformList, _checked(lambda: platform))


def change_platform(
    name: str, platform_id: int | str, change: PlatformUpdate
) -> Call[PlatformList]:
    """Rename a platform, (de)activate it or make it the default. ``platform_id`` is the
    hub's id (an int) or your external id for it (a str)."""
    path = _user(name, "platforms", *_platform(platform_id))
    return Call("PATCH", path, PlatformList, _checked(lambda: change))


def remove_platform(name: str, platform_id: int | str) -> Call[PlatformList]:
    """Delete a platform connection: the hub's id (an int) or your external id (a str)."""
    return Call("DELETE", _user(name, "platforms", *_platform(platform_id)), PlatformList)


def state(name: str) -> Call[UserState]:
    """Read the user's version, active platform, platforms and the hold in force."""
    return Call("GET", _user(name, "state"), UserState)


def hold(name: str, reason: str, ttl_s: float) -> Call[UserState]:
    """Hold the user's switches while a job runs: refused as busy with ``reason``, until
    released or ``ttl_s`` seconds have passed."""
    body = _checked(lambda: HoldRequest(reason=reason, ttl_s=ttl_s))
    return Call("PUT", _user(name, "hold"), UserState, body)


def release(name: str) -> Call[UserState]:
    """Release the user's hold."""
    return Call("DELETE", _user(name, "hold"), UserState)


def mint_session(
    name: str, *, user_agent: str | None = None, ip: str | None = None
) -> Call[SessionMinted]:
    """Open a login session for a person the host app has authenticated."""
    body = _checked(lambda: SessionMint(user_agent=user_agent, ip=ip))
    return Call("POST", _user(name, "sessions"), SessionMinted, body)


def sessions(name: str) -> Call[SessionList]:
    """Return the user's live sessions, newest first."""
    return Call("GET", _user(name, "sessions"), SessionList)


def revoke_session(
    name: str, session_id: int, *, reason: EndReason = "revoked"
) -> Call[SessionsRevoked]:
    """End one session of the user; its tabs end, told ``reason``: "logout" when the person
    logged out of the host app, "revoked" otherwise."""
    path = _user(name, "sessions", _id(session_id))
    return Call("DELETE", path, SessionsRevoked, params={"reason": _reason(reason)})


def revoke_sessions(name: str, *, reason: EndReason = "revoked") -> Call[SessionsRevoked]:
    """End every session of the user; all its tabs end, told ``reason``."""
    path = _user(name, "sessions")
    return Call("DELETE", path, SessionsRevoked, params={"reason": _reason(reason)})


def _user(name: str, *rest: str) -> str:
    """The path of a user's resource, the name quoted. A name the path cannot carry as one
    segment ("/", ".", "..") is refused here rather than sent somewhere else."""
    if not isinstance(name, str) or not 0 < len(name) <= 64:
        raise HostApiError(422, "bad_request", f"a user name is 1 to 64 characters: {name!r}")
    if not re.fullmatch(USER_NAME, name):
        raise HostApiError(
            422, "bad_request",
            f"user name {name!r} has a control character or '/', or is '.' or '..'",
        )  # fmt: skip
    return "/".join(("/users", _segment(name), *rest))


def _segment(text: str) -> str:
    """Percent-encode one path segment; text UTF-8 cannot carry (a lone surrogate) is 422."""
    try:
        return urllib.parse.quote(text, safe="")
    except UnicodeEncodeError:
        raise HostApiError(422, "bad_request", f"{text!r} is not valid Unicode text") from None


def _platform(platform: int | str) -> tuple[str, ...]:
    """The path segments naming a platform: its id, or external/ and the quoted external id."""
    if isinstance(platform, str):
        if not platform or re.fullmatch(EXTERNAL_ID, platform) is None or len(platform) > 200:
            raise HostApiError(422, "bad_request", f"external id {platform!r} is not one")
        return ("external", _segment(platform))
    return (_id(platform),)


def _id(value: int) -> str:
    """An id as a path segment; anything but an int (bool included) is refused."""
    if type(value) is not int:
        raise HostApiError(422, "bad_request", f"an id is an int, not {value!r}")
    return str(value)


def _reason(reason: str) -> str:
    if reason not in ("logout", "revoked"):
        raise HostApiError(422, "bad_request", f"reason is 'logout' or 'revoked', not {reason!r}")
    return reason


def _checked(build: Callable[[], Any]) -> bytes:
    """Build a body and encode it, refusing what the hub would refuse (lengths, patterns,
    types: msgspec checks those only when decoding, so the body is decoded once here) as
    HostApiError 422 bad_request."""
    try:
        body = build()
        content = _encoder.encode(body)
        msgspec.json.decode(content, type=type(body))
    except (ValueError, TypeError, msgspec.ValidationError) as failure:
        raise HostApiError(422, "bad_request", str(failure)) from failure
    return content
