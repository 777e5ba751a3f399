"""An in-memory Store on the same rules.decide as the SQL store, for the hub's own tests.

tests/storage/test_store.py runs one contract body against it, SQLite and PostgreSQL, so what the
hub's unit tests learn on it holds for the real stores; it keeps no switch log beyond the
decisions a retry must get again, and no sessions beyond whether each has ended.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Sequence

from server.protocol import (
    Device,
    HoldView,
    SessionEndReason,
    StateView,
    Switch,
)
from server.rules import (
    NO_PLATFORMS,
    Accepted,
    Decision,
    Logged,
    Platforms,
    Refused,
    Seen,
    announced,
    decide,
)
from server.store import Joining

__all__ = ["MemoryStore"]

# (id, user id, name, kind, url, username, active, default), as storage reads platforms.
_Row = tuple[int, int, str, str, str, str, bool, bool, str | None]


@dataclasses.dataclass
class _User:
    version: int = 0
    stored: int | None = None
    rows: list[_Row] = dataclasses.field(default_factory=list)
    hold: HoldView | None = None
    logged: dict[str, Logged] = dataclasses.field(default_factory=dict)


class MemoryStore:
    """Users, platforms, sessions and holds in dictionaries; switches decided one at a time."""

    def __init__(self) -> None:
        self._users: dict[int, _User] = {}
        self._sessions: dict[int, SessionEndReason | None] = {}  # None: live
        self._owners: dict[int, int] = {}  # session: its user
        self._ids = 0
        self._lock = asyncio.Lock()  # a switch reads and writes as one, as a transaction does

    # Setting up, as users.add_user, sessions.open_session/revoke and holds would.

    def add_user(self, platforms: Sequence[tuple[str, bool]]) -> tuple[int, list[int]]:
        """Add a user with platforms given as (name, is_default); return its and their ids."""
        user_id = self._next()
        rows: list[_Row] = []
        for name, default in platforms:
            url = f"https://{name.lower()}.example"
            rows.append((self._next(), user_id, name, "mastodon", url, "u", True, default, None))
        self._users[user_id] = _User(rows=rows)
        return user_id, [row[0] for row in rows]

    def open_session(self, user_id: int) -> int:
        """Open a live session of a user; return its id."""
        session_id = self._next()
        self._sessions[session_id] = None
        self._owners[session_id] = user_id
        return session_id

    def end_session(self, session_id: int, reason: SessionEndReason) -> None:
        """End a session, as a logout, expiry or revocation does."""
        self._sessions[session_id] = reason

    def hold(self, user_id: int, hold: HoldView | None) -> None:
        """Place a hold on a user's switches (None releases it)."""
        self._users[user_id].hold = hold

    # The Store protocol (server/hub.py).

    async def load_state(self, user_id: int) -> StateView:
        """Read a user's state."""
        user = self._users.get(user_id)
        if user is None:
            return NO_PLATFORMS.state(0, None)
        return Platforms.of(user.rows).state(user.version, user.stored)

    async def load_hold(self, user_id: int) -> HoldView | None:
        """Read the hold in force for a user, if any."""
        user = self._users.get(user_id)
        return user.hold if user is not None else None

    async def load_devices(self, user_id: int) -> list[tuple[int, Device]]:
        """Read a user's live sessions, by id, as devices, newest first (all signed in at
        once here; a session's handle is "s" and its id)."""
        at = "2026-01-01T00:00:00.000Z"
        return [
            (session, Device(f"s{session}", "Test device", signed_in_at=at, last_active_at=at))
            for session, owner in sorted(self._owners.items(), reverse=True)
            if owner == user_id and self._sessions[session] is None
        ]

    def rename(self, user_id: int, platform_id: int, name: str) -> int:
        """Rename a platform, as the host app would: a version of its own; return it."""
        user = self._users[user_id]
        user.rows = [(*r[:2], name, *r[3:]) if r[0] == platform_id else r for r in user.rows]
        user.version += 1
        return user.version

    async def load_joining(self, user_id: int) -> Joining:
        """Read a user's state, hold and devices (through the three reads above, so a
        subclass that slows one slows this too)."""
        state = await self.load_state(user_id)
        return state, await self.load_hold(user_id), list(await self.load_devices(user_id))

    async def switch(
        self, user_id: int, session_id: int, request: Switch, tab_id: str | None
    ) -> Decision:
        """Decide one switch with rules.decide and apply what it says."""
        async with self._lock:
            user = self._users.get(user_id, _User())
            seen = Seen(
                session_ended=self._sessions.get(session_id, SessionEndReason.REVOKED),
                version=user.version,
                stored=user.stored,
                has_state=user_id in self._users,
                platforms=Platforms.of(user.rows),
                hold_reason=user.hold.reason if user.hold is not None else None,
                logged=user.logged.get(request.id),
            )
            decision = decide(request, seen)
            if isinstance(decision, Accepted | Refused) and decision.record:
                reason = decision.reason if isinstance(decision, Refused) else None
                version = decision.version if isinstance(decision, Accepted) else user.version
                user.logged[request.id] = Logged(reason, version)
            if isinstance(decision, Accepted) and decision.changed:
                user.version, user.stored = decision.version, request.platform
                decision = announced(decision, user_id, request, tab_id)
            return decision

    async def close(self) -> None:
        """Nothing to release."""

    def _next(self) -> int:
        self._ids += 1
        return self._ids
