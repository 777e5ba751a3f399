"""The switch decision and the default-platform rule, pure: no I/O, no clock, no framework.

Storage reads what a decision needs under its write lock (a `Seen`), asks `decide`, and writes
what the `Decision` says; the in-memory store of the tests asks the same function, so both
decide alike. The rules, in the order they are applied:

1. A switch commits only under a live login session: expiry and logout win a race with it.
2. A request id already decided gets that decision again (a retry is never applied twice).
3. A hold of the host app refuses every switch (``busy``), and is not remembered: a retry
   with the same id after the hold ends is decided afresh.
4. A platform that is not this user's, or deactivated, is refused; another user's platform
   and a missing one get the same answer, so the reply reveals nothing of other users.
5. Only a switch from the current version moves it (to version + 1): the version arbiter.
   A switch to the platform already active, from the current version, is a no-op: accepted
   at the unchanged version.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from typing import Any, Protocol

from server.events import StateChanged
from server.protocol import (
    Cause,
    PlatformView,
    RejectReason,
    SessionEndReason,
    StateView,
    Switch,
)

__all__ = [
    "NO_PLATFORMS",
    "Accepted",
    "Decision",
    "Defaultable",
    "Logged",
    "Platforms",
    "Refused",
    "Seen",
    "SessionGone",
    "active_platform",
    "announced",
    "decide",
    "default_platform",
    "describe",
]


class Defaultable(Protocol):
    """What the default rule reads of an active platform."""

    @property
    def id(self) -> int: ...

    @property
    def is_default(self) -> bool: ...


def default_platform(active: Iterable[Defaultable]) -> int | None:
    """Return the default rule's choice among the active platforms, in id order: the first
    default one, else the first one, else None."""
    first = None
    for platform in active:
        if platform.is_default:
            return platform.id
        if first is None:
            first = platform.id
    return first


def active_platform(version: int, stored: int | None, active: Sequence[Defaultable]) -> int | None:
    """Return the platform tabs see as active: the stored choice once switched (version > 0)
    while it is still active, else the default rule's choice."""
    if version > 0 and any(p.id == stored for p in active):
        return stored
    return default_platform(active)


@dataclasses.dataclass(frozen=True, slots=True)
class Platforms:
    """One user's platforms, digested once per read for the decisions that follow."""

    views: tuple[PlatformView, ...]  # the active ones, by id
    active: frozenset[int]
    inactive: frozenset[int]
    fallback: int | None  # default_platform's choice

    @classmethod
    def of(cls, rows: Iterable[Sequence[Any]]) -> Platforms:
        """Digest a user's rows of (id, user id, name, kind, url, username, active, default,
        external id), in id order (storage's rows as read, so the hot path builds no tuple)."""
        views, active, inactive = [], [], []
        for id_, _, name, kind, url, username, is_active, is_default, external_id in rows:
            if not is_active:
                inactive.append(id_)
                continue
            active.append(id_)
            views.append(
                PlatformView(
                    id=id_,
                    name=name,
                    kind=kind,
                    instance_url=url,
                    username=username,
                    is_default=is_default,
                    external_id=external_id,
                )
            )
        return cls(tuple(views), frozenset(active), frozenset(inactive), default_platform(views))

    def state(self, version: int, stored: int | None) -> StateView:
        """Return the state tabs see at ``version`` with ``stored`` as the chosen platform."""
        active = stored if version > 0 and stored in self.active else self.fallback
        return StateView(version=version, active=active, platforms=self.views)


NO_PLATFORMS = Platforms(views=(), active=frozenset(), inactive=frozenset(), fallback=None)


@dataclasses.dataclass(frozen=True, slots=True)
class Logged:
    """A decision already taken for a request id: accepted, or refused with a reason."""

    reason: RejectReason | None
    version: int


@dataclasses.dataclass(frozen=True, slots=True)
class Seen:
    """What a decision reads about one user and one login session, as of its moment."""

    session_ended: SessionEndReason | None  # why the session is over, if it is
    version: int
    stored: int | None  # the stored active choice
    has_state: bool  # the user has a state row (every real user has one)
    platforms: Platforms
    hold_reason: str | None  # the reason of the hold in force, if any
    logged: Logged | None  # the decision already taken for this request id, if any


@dataclasses.dataclass(frozen=True, slots=True)
class Accepted:
    """The switch is accepted at ``version``; ``changed`` if it made that version."""

    state: StateView
    version: int
    changed: bool = False
    record: bool = True  # the switch log records it (not a replay of a logged decision)
    # What a change committed, for every process's tabs: storage fills it in, as it alone
    # knows the asking tab (it is the same event the backplane carries).
    event: StateChanged | None = None


@dataclasses.dataclass(frozen=True, slots=True)
class Refused:
    """The switch is refused; ``state`` is the current one (None: not known here)."""

    reason: RejectReason
    state: StateView | None
    detail: str | None = None  # for busy: the reason of the hold
    record: bool = True  # the switch log records it (not a replay, not busy)


@dataclasses.dataclass(frozen=True, slots=True)
class SessionGone:
    """The login session had ended: nothing was applied, and its tabs must be closed."""

    reason: SessionEndReason


Decision = Accepted | Refused | SessionGone


def announced(decision: Accepted, user_id: int, request: Switch, tab_id: str | None) -> Accepted:
    """Return a change with the event every process's tabs hear of it by (the cause names
    the asking tab and request); a store calls this for each change it commits."""
    cause = Cause(kind="switch", tab=tab_id, request=request.id)
    event = StateChanged(user_id, decision.version, decision.state.active, cause)
    return dataclasses.replace(decision, event=event)


def decide(request: Switch, seen: Seen) -> Decision:
    """Decide one switch request from what was seen (the module's docstring has the rules)."""
    if seen.session_ended is not None:
        return SessionGone(seen.session_ended)
    state = seen.platforms.state(seen.version, seen.stored)
    if seen.logged is not None:
        if seen.logged.reason is None:
            return Accepted(state, seen.logged.version, record=False)
        return Refused(seen.logged.reason, state, record=False)
    if seen.hold_reason is not None:
        return Refused(RejectReason.BUSY, state, detail=seen.hold_reason, record=False)
    target = request.platform
    if target in seen.platforms.inactive:
        return Refused(RejectReason.INACTIVE_PLATFORM, state)
    if target not in seen.platforms.active:
        return Refused(RejectReason.UNKNOWN_PLATFORM, state)
    if request.base != seen.version or not seen.has_state:
        return Refused(RejectReason.STALE, state)
    if state.active == target:
        return Accepted(state, seen.version)
    moved = StateView(version=seen.version + 1, active=target, platforms=state.platforms)
    return Accepted(moved, moved.version, changed=True)


def describe(reason: RejectReason, state: StateView | None, detail: str | None = None) -> str:
    """Say in plain words why a switch was refused (``detail``: the hold's reason, if busy)."""
    active = state.platform(state.active) if state else None
    match reason:
        case RejectReason.BUSY:
            return f"Busy: {detail or 'a job is running'}. Switch when it is done."
        case RejectReason.STALE if active is not None:
            return f"Switched to {active.name} @{active.username} in another tab."
        case RejectReason.STALE:
            return "Another tab changed the active platform first."
        case RejectReason.UNKNOWN_PLATFORM:
            return "There is no such platform on this account."
        case RejectReason.INACTIVE_PLATFORM:
            return "That platform is deactivated; reactivate it before switching to it."
        case RejectReason.RATE_LIMITED:
            return "Too many requests; wait a moment and try again."
        case RejectReason.UNAVAILABLE:
            return "The hub cannot reach its database right now; nothing was changed. Try again."
        case RejectReason.BAD_REQUEST:
            return "The switch request is malformed."
        case RejectReason.NOT_ATTACHED:
            return "This tab is not on this connection any more; nothing was changed. Try again."
