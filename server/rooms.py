"""Where the hub keeps its tabs: by user (a Room, with its state and hold) and by session.

A room holds one user's tabs on this process, the newest state published to them and the
hold in force; it fans a state or a hold out to every tab without waiting for any. The
session index finds the tabs of one login session in O(its tabs), for the session notices.
The interest counts the feed shards of the users with rooms here, for the backplane.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable

from server.events import shard_of
from server.protocol import (
    Cause,
    CloseCode,
    Device,
    HoldMessage,
    HoldView,
    SessionEnded,
    SessionEndReason,
    SessionExpiring,
    StateMessage,
    StateView,
    encode,
)
from server.tab import Tab

__all__ = ["Interest", "Room", "SessionIndex"]


class Room:
    """One user's tabs on this process, the newest state they were sent, the hold and the
    user's devices."""

    __slots__ = (
        "device_changes",
        "devices",
        "hold",
        "hold_known",
        "hold_timer",
        "reload_until",
        "reloading",
        "stale",
        "state",
        "tabs",
    )

    def __init__(self) -> None:
        self.tabs: dict[str, Tab] = {}
        self.state: StateView | None = None
        # The hold in force (server/storage/holds.py), once read or told; its end, when its
        # TTL runs out.
        self.hold: HoldView | None = None
        self.hold_known = False
        self.hold_timer: asyncio.TimerHandle | None = None
        # While another process's platform change is read anew (CatchUp.reload): the task, and
        # the highest version notified meanwhile, which the read must reach.
        self.reloading: asyncio.Task[None] | None = None
        self.reload_until = 0
        # The state may be behind the store: a reload gave up (the database was unavailable
        # throughout). The next tab to join reads instead of taking the room's state, and
        # publishes what it read; a resync clears it too.
        self.stale = False
        # The user's live sessions by id, once read, and how many changes to them were
        # told (a read that saw fewer is read again): server/presence.py.
        self.devices: dict[int, Device] | None = None
        self.device_changes = 0

    def remember(self, state: StateView) -> None:
        """Keep ``state`` as the newest, unless an older version (at an equal version the
        newer read wins: it may list platforms changed since)."""
        if self.state is None or state.version >= self.state.version:
            self.state = state

    def publish(self, state: StateView, cause: Cause) -> None:
        """Send a committed state to every tab of the room; never waits for a tab."""
        # Fan out even when the room already knows this version: a tab that joined in
        # between may have read it, but the older tabs have not seen it yet. Each outbox
        # drops what it already has.
        self.remember(state)
        frame = encode(StateMessage(state=state, cause=cause))
        for tab in list(self.tabs.values()):
            tab.outbox.put_state(state.version, frame)

    def set_hold(self, hold: HoldView | None) -> None:
        """Tell the tabs that a hold started (``hold``) or ended (None), once per change; a
        hold ends by itself when its TTL runs out, on every process alike."""
        self.hold_known = True
        if hold == self.hold:
            return
        self.cancel_timer()
        self.hold = hold
        if hold is not None:
            ends = dt.datetime.fromisoformat(hold.expires_at.replace("Z", "+00:00"))
            # A little after the stored end, so a switch sent on hearing it is not refused.
            left = (ends - dt.datetime.now(dt.UTC)).total_seconds() + 0.01
            self.hold_timer = asyncio.get_running_loop().call_later(
                max(0.0, left), self._hold_ended, hold
            )
        frame = encode(HoldMessage(hold=hold))
        for tab in list(self.tabs.values()):
            tab.send(frame)

    def cancel_timer(self) -> None:
        """Stop the hold's timer (the room is being forgotten, or the hold replaced)."""
        if self.hold_timer is not None:
            self.hold_timer.cancel()
            self.hold_timer = None

    def _hold_ended(self, hold: HoldView) -> None:
        self.hold_timer = None
        if self.hold == hold:
            self.set_hold(None)


class SessionIndex:
    """The tabs of each login session, and the notices every tab of a session gets."""

    def __init__(self) -> None:
        self._tabs: dict[int, dict[Tab, None]] = {}

    def add(self, tab: Tab) -> None:
        """Index a tab under its session."""
        self._tabs.setdefault(tab.session_id, {})[tab] = None

    def remove(self, tab: Tab) -> None:
        """Forget a tab; a session without tabs is forgotten with it."""
        tabs = self._tabs.get(tab.session_id)
        if tabs is not None:
            tabs.pop(tab, None)
            if not tabs:
                del self._tabs[tab.session_id]

    def expiries(self) -> dict[int, str]:
        """Return each session with tabs, with the expiry its tabs were told."""
        return {session_id: next(iter(tabs)).expires_at for session_id, tabs in self._tabs.items()}

    def count(self, session_id: int) -> int:
        """Return how many tabs of a session are open (not closing), members included."""
        return sum(tab.width for tab in self._tabs.get(session_id, ()) if not tab.closing)

    def end(self, session_id: int, reason: SessionEndReason) -> int:
        """Send session_ended to every tab of a session and close each with 4001; return
        how many were closed now."""
        frame = encode(SessionEnded.because(reason))
        ended = 0
        for tab in list(self._tabs.get(session_id, ())):
            if not tab.closing:
                tab.close(CloseCode.SESSION_ENDED, f"session {reason}", frame)
                ended += 1
        return ended

    def warn(self, session_id: int, expires_at: str) -> None:
        """Tell the tabs of a session that it expires soon, once per expiry time."""
        frame = encode(SessionExpiring(expires_at=expires_at))
        for tab in list(self._tabs.get(session_id, ())):
            if tab.warned_for != expires_at:
                tab.warned_for = expires_at
                tab.expires_at = expires_at
                tab.send(frame)

    def extend(self, session_id: int, expires_at: str) -> None:
        """Record a later expiry for the tabs of a session, so it may warn again later."""
        for tab in self._tabs.get(session_id, ()):
            tab.expires_at = expires_at
            if tab.warned_for is not None and tab.warned_for != expires_at:
                tab.warned_for = None


class Interest:
    """The users with rooms here and their feed shards (server/events.py), counted by user:
    whose changes this process reads. ``on_new`` is told when a shard gets its first user
    (the backplane LISTENs on it)."""

    def __init__(self) -> None:
        self._users: set[int] = set()
        self._shards: dict[int, int] = {}  # shard: its users here
        self.on_new: Callable[[], None] | None = None

    def add(self, user_id: int) -> None:
        shard = shard_of(user_id)
        self._users.add(user_id)
        self._shards[shard] = self._shards.get(shard, 0) + 1
        if self._shards[shard] == 1 and self.on_new is not None:
            self.on_new()

    def remove(self, user_id: int) -> None:
        shard = shard_of(user_id)
        self._users.discard(user_id)
        self._shards[shard] -= 1
        if not self._shards[shard]:
            del self._shards[shard]

    def shards(self) -> list[int]:
        """Return the shards of the users with rooms here."""
        return list(self._shards)

    def users(self) -> set[int]:
        """Return the users with rooms here (live: not a copy)."""
        return self._users
