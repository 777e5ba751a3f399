"""Events: what a commit changed, in one shape for this process's tabs and every other's.

Storage builds each event once, in the transaction that makes the change: it is staged for
the other processes (server/storage/backplane.py) and handed to this process's hub, which
takes both through one door, ``Hub.apply``.
"""

from __future__ import annotations

import msgspec

from server.protocol import Cause, HoldView, SessionEndReason

__all__ = [
    "SHARDS",
    "DevicesChanged",
    "Event",
    "HoldChanged",
    "SessionsEnded",
    "StateChanged",
    "shard_of",
]

# Changes travel between processes by shard of their user (server/storage/feed.py): a process
# reads and is woken for the shards of the users with tabs on it. Every process of a database
# must agree on the number: changing it is a new protocol between processes.
SHARDS = 64


def shard_of(user_id: int) -> int:
    """Return the shard a user's changes travel in."""
    return user_id % SHARDS


class StateChanged(msgspec.Struct, tag="state", frozen=True):
    """A user's state moved to ``version``, with ``active`` chosen, because of ``cause``."""

    user: int
    version: int
    active: int | None
    cause: Cause


class SessionsEnded(msgspec.Struct, tag="ended", frozen=True):
    """Login sessions of ``user`` ended (logout, logout-all, revocation): close their tabs
    everywhere."""

    user: int
    sessions: list[int]
    reason: SessionEndReason


class HoldChanged(msgspec.Struct, tag="hold", frozen=True):
    """A hold on a user's switches started (``hold``) or was released (None)."""

    user: int
    hold: HoldView | None


class DevicesChanged(msgspec.Struct, tag="devices", frozen=True):
    """A user's devices changed: a login session was opened, or a process's count of tabs of
    the user's sessions moved (server/storage/presence.py). Read them anew."""

    user: int


Event = StateChanged | SessionsEnded | HoldChanged | DevicesChanged
