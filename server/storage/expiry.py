"""Session expiry: when a login session has ended, and sliding its idle expiry with activity.

A session ends when it is revoked (logout, logout everywhere, the host API) or when either
expiry passes: the idle one, which activity slides forward, or the absolute one, which never
moves. Activity writes at most once per ``session_touch_s``; the writes of many sessions at
once (every tab of a restarted process reconnecting) share one transaction (``extend``).
What a page may know of a session is said here too: its times (``format_time``) and the
handle it is called by (``handle_of``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Protocol

from sqlalchemy import Connection, bindparam, select, update

from server import db
from server.db import Database
from server.protocol import SessionEndReason
from server.storage.lists import one_of

__all__ = [
    "HANDLE_LENGTH",
    "LIVENESS_BY_IDS",
    "LIVENESS_COLUMNS",
    "SessionTimes",
    "ended_reason",
    "expires_at",
    "extend",
    "format_time",
    "handle_of",
    "idle_expiry",
    "slide",
    "statuses",
]

_sessions = db.login_sessions
# A session's identity and the times that decide whether it is live (see ended_reason); the
# switch batch reads the same columns.
LIVENESS_COLUMNS = (
    _sessions.c.id,
    _sessions.c.user_id,
    _sessions.c.last_seen_at,
    _sessions.c.idle_expires_at,
    _sessions.c.absolute_expires_at,
    _sessions.c.revoked_at,
    _sessions.c.revoked_reason,
)
# The liveness of the sessions with the given ids: the switch batch and the session watcher.
LIVENESS_BY_IDS = select(*LIVENESS_COLUMNS).where(one_of(_sessions.c.id, "ids"))
# A slide never waits for a row lock (PostgreSQL): a session another transaction holds is
# being changed by it (revoked, collected, slid by another process), and waiting would hold
# every handshake of the batch behind it, or deadlock with a revocation.
_LOCKED_BY_IDS = LIVENESS_BY_IDS.order_by(_sessions.c.id).with_for_update(skip_locked=True)
_SLIDE = update(_sessions).where(_sessions.c.id == bindparam("b_id"))


class SessionTimes(Protocol):
    """What decides whether a session has ended: a row of login_sessions."""

    @property
    def id(self) -> int: ...
    @property
    def revoked_at(self) -> dt.datetime | None: ...
    @property
    def revoked_reason(self) -> str | None: ...
    @property
    def idle_expires_at(self) -> dt.datetime: ...
    @property
    def absolute_expires_at(self) -> dt.datetime: ...


def idle_expiry(now: dt.datetime, absolute: dt.datetime, idle_s: float) -> dt.datetime:
    """Return a session's idle expiry after activity at ``now``: ``idle_s`` later, never past
    its absolute expiry."""
    return min(now + dt.timedelta(seconds=idle_s), absolute)


def format_time(moment: dt.datetime) -> str:
    """Format a moment as ISO 8601 UTC with a Z, to the millisecond."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


# The characters of a session's token hash that are its handle (64 bits).
HANDLE_LENGTH = 16


def handle_of(digest: str) -> str:
    """The handle pages know a session by (presence, POST /api/sessions/{handle}/revoke): the
    first 64 bits of its token's hash. Random, so unlike an id it tells a page nothing (ids
    count the sign-ins between two of its own), and only part of a hash of the token, so it
    gives nothing towards the token. Every session has one, however it was opened."""
    return digest[:HANDLE_LENGTH]


def expires_at(row: SessionTimes) -> dt.datetime:
    """Return when a session ends unless extended: the earlier of its two expiries."""
    return min(row.idle_expires_at, row.absolute_expires_at)


def ended_reason(row: SessionTimes, now: dt.datetime) -> SessionEndReason | None:
    """Return why a session has ended, or None while it is live."""
    if row.revoked_at is not None:
        return SessionEndReason(row.revoked_reason or SessionEndReason.REVOKED)
    if expires_at(row) <= now:
        return SessionEndReason.EXPIRED
    return None


def slide(
    connection: Connection, live: Iterable[SessionTimes], now: dt.datetime, idle_s: float
) -> dict[int, dt.datetime]:
    """Slide the idle expiry of these live sessions to ``now``, in the open write transaction;
    return each one's new expiry."""
    found = {row.id: idle_expiry(now, row.absolute_expires_at, idle_s) for row in live}
    if found:
        rows = [
            {"b_id": key, "last_seen_at": now, "idle_expires_at": found[key]}
            for key in sorted(found)
        ]
        connection.execute(_SLIDE, rows)
    return found


async def extend(
    database: Database, ids: Sequence[int]
) -> dict[int, dt.datetime | SessionEndReason]:
    """Slide the idle expiry of the live sessions among ``ids`` to now, in one transaction;
    return each one's new expiry, or why it has ended. A session unknown (collected) is
    missing, and so is one another transaction holds right now (PostgreSQL, SKIP LOCKED)."""
    now = database.clock()
    idle_s = database.settings.session_idle_s
    wanted = sorted(set(ids))

    def work(connection: Connection) -> dict[int, dt.datetime | SessionEndReason]:
        rows = connection.execute(_LOCKED_BY_IDS, {"ids": wanted}).all()
        found: dict[int, dt.datetime | SessionEndReason] = {}
        for row in rows:
            ended = ended_reason(row, now)
            if ended is not None:
                found[row.id] = ended
        found.update(slide(connection, [r for r in rows if r.id not in found], now, idle_s))
        return found

    return await database.write(work)


async def statuses(
    database: Database, ids: Iterable[int]
) -> dict[int, tuple[SessionEndReason | None, dt.datetime]]:
    """Return why each of these sessions ended (None: live) and when it expires; a session
    collected already is missing."""
    now = database.clock()
    wanted = sorted(ids)

    # Core rows in a reader thread: the ORM, once used here, built a full object per session
    # on the event loop, which stalled every tab for 14 ms per 500 sessions at each check.
    def work(connection: Connection) -> dict[int, tuple[SessionEndReason | None, dt.datetime]]:
        found: dict[int, tuple[SessionEndReason | None, dt.datetime]] = {}
        for start in range(0, len(wanted), 500):
            rows = connection.execute(LIVENESS_BY_IDS, {"ids": wanted[start : start + 500]})
            for row in rows:
                found[row.id] = (ended_reason(row, now), expires_at(row))
        return found

    return await database.read(work)
