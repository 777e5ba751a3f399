"""Login sessions: open, authenticate, extend, revoke, list and collect.

Only the SHA-256 of a session's 256-bit random token is stored, so a copy of the database
cannot be replayed as a login. Idle expiry slides with activity; absolute expiry never moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import logging
import re
import secrets
from collections.abc import Iterable
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, delete, or_, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server import db
from server.api import SessionDetail
from server.db import Database, LoginSessionRow, SwitchLogRow, UserRow
from server.errors import AuthenticationError, UsageError
from server.events import SessionsEnded
from server.protocol import SessionEndReason
from server.storage import backplane
from server.storage.passwords import (
    NO_PASSWORD,
    dummy_hash,
    hash_password,
    needs_rehash,
    verify_password,
)

__all__ = [
    "LIVENESS_BY_IDS",
    "LIVENESS_COLUMNS",
    "LoginSession",
    "authenticate",
    "collect",
    "ended_reason",
    "expires_at",
    "extend",
    "format_time",
    "idle_expiry",
    "live_sessions",
    "log_in",
    "open_session",
    "revoke",
    "revoke_all",
    "revoke_all_within",
    "statuses",
    "token_hash",
]

logger = logging.getLogger("hub.sessions")
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
LIVENESS_BY_IDS = select(*LIVENESS_COLUMNS).where(
    _sessions.c.id.in_(bindparam("ids", expanding=True))
)
# Built once, on the synchronous path: every WebSocket handshake runs it.
_BY_TOKEN = (
    select(*LIVENESS_COLUMNS, UserRow.name)
    .join_from(_sessions, UserRow, UserRow.id == _sessions.c.user_id)
    .where(_sessions.c.token_hash == bindparam("digest"))
)


@dataclasses.dataclass(frozen=True, slots=True)
class LoginSession:
    """An authenticated login session."""

    id: int
    user_id: int
    user_name: str
    expires_at: dt.datetime
    # Opening it ended these older sessions of the user (past max_sessions_per_user): the
    # caller ends their tabs here; other processes hear it with the commit.
    displaced: tuple[int, ...] = ()


def format_time(moment: dt.datetime) -> str:
    """Format a moment as ISO 8601 UTC with a Z, to the millisecond."""
    return moment.astimezone(dt.UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def token_hash(token: str) -> str:
    """The SHA-256 of a session token: the only form in which the database keeps it."""
    return hashlib.sha256(token.encode()).hexdigest()


async def log_in(
    database: Database,
    name: str,
    password: str,
    *,
    user_agent: str | None = None,
    ip: str | None = None,
) -> tuple[str, LoginSession]:
    """Check a password and open a fresh session; return its token and the session.

    Raises AuthenticationError("invalid_credentials") for an unknown user and a wrong
    password alike, after the same amount of hashing. A hash made at another cost than
    ``password_cost`` is replaced by one at that cost.
    """
    cost = database.settings.password_cost

    async def find(session: AsyncSession) -> tuple[int, str] | None:
        row = (
            await session.execute(
                select(UserRow.id, UserRow.password_hash).where(UserRow.name == name)
            )
        ).first()
        return (row[0], row[1]) if row else None

    found = await database.read(find)
    # A user without a password (NO_PASSWORD) costs the same hashing as an unknown one.
    usable = found is not None and found[1] != NO_PASSWORD
    encoded = found[1] if found is not None and usable else dummy_hash(cost)
    valid = await asyncio.to_thread(verify_password, password, encoded)
    if found is None or not usable or not valid:
        raise AuthenticationError("invalid_credentials", "Unknown user name or wrong password.")
    if needs_rehash(encoded, cost):
        await _rehash(database, found[0], encoded, password, cost)
    return await open_session(database, found[0], user_agent=user_agent, ip=ip)


async def _rehash(database: Database, user_id: int, old: str, password: str, cost: int) -> None:
    fresh = await asyncio.to_thread(hash_password, password, cost=cost)

    async def work(session: AsyncSession) -> None:
        # Only if unchanged meanwhile: a password set since then is newer than this one.
        await session.execute(
            update(UserRow)
            .where(UserRow.id == user_id, UserRow.password_hash == old)
            .values(password_hash=fresh)
        )

    await database.write(work)


async def open_session(
    database: Database,
    user_id: int,
    *,
    user_agent: str | None = None,
    ip: str | None = None,
) -> tuple[str, LoginSession]:
    """Open a fresh session for a user who is already authenticated; return token and session.

    The token has 256 random bits; only its SHA-256 is stored.
    """
    token = secrets.token_urlsafe(32)
    settings = database.settings
    now = database.clock()
    absolute = now + dt.timedelta(seconds=settings.session_absolute_s)
    row = LoginSessionRow(
        user_id=user_id,
        token_hash=token_hash(token),
        created_at=now,
        last_seen_at=now,
        idle_expires_at=idle_expiry(now, absolute, settings.session_idle_s),
        absolute_expires_at=absolute,
        # A header may hold what the protocol refuses in bodies; keep what can be shown.
        user_agent=_CONTROL.sub("", user_agent or "")[:300] or None,
        ip=ip,
    )

    async def store(session: AsyncSession) -> LoginSession:
        name = await session.scalar(
            select(UserRow.name).where(UserRow.id == user_id).with_for_update()
        )
        if name is None:
            raise UsageError(f"no user with id {user_id}")
        # The user's row is locked (FOR UPDATE; SQLite has one writer): two logins at once
        # count the same sessions one after the other, so the cap holds.
        live = (
            await session.scalars(
                select(LoginSessionRow.id)
                .where(
                    LoginSessionRow.user_id == user_id,
                    LoginSessionRow.revoked_at.is_(None),
                    LoginSessionRow.idle_expires_at > now,
                    LoginSessionRow.absolute_expires_at > now,
                )
                .order_by(LoginSessionRow.id)
            )
        ).all()
        displaced = list(live[: max(0, len(live) - settings.max_sessions_per_user + 1)])
        await _end(database, session, displaced, SessionEndReason.REVOKED)
        session.add(row)
        await session.flush()
        return LoginSession(row.id, user_id, name, row.expires_at, tuple(displaced))

    return token, await database.write(store)


async def authenticate(
    database: Database, token: str | None, *, touch: bool = True
) -> LoginSession:
    """Return the live session of ``token``, extending its idle expiry if due.

    Raises AuthenticationError with reason "missing", "invalid", "expired", "logout" or
    "revoked".
    """
    if not token:
        raise AuthenticationError("missing", "Log in first: no session was presented.")
    now = database.clock()
    digest = token_hash(token)

    def find(connection: Connection) -> Any:
        return connection.execute(_BY_TOKEN, {"digest": digest}).first()

    row = await database.read_sync(find)
    if row is None:
        raise AuthenticationError(
            "invalid", "The session is unknown or was collected; log in again."
        )
    ended = ended_reason(row, now)
    if ended is not None:
        raise AuthenticationError(ended.value, _ENDED_MESSAGES[ended])
    login = LoginSession(row.id, row.user_id, row.name, expires_at(row))
    if touch and (now - row.last_seen_at).total_seconds() >= database.settings.session_touch_s:
        login = await extend(database, login) or login
    return login


async def extend(database: Database, login: LoginSession) -> LoginSession | None:
    """Slide a live session's idle expiry forward; return it, or None if it has ended."""
    settings = database.settings
    now = database.clock()

    async def work(session: AsyncSession) -> LoginSession | None:
        row = await session.get(LoginSessionRow, login.id)
        if row is None or ended_reason(row, now) is not None:
            return None
        row.last_seen_at = now
        row.idle_expires_at = idle_expiry(now, row.absolute_expires_at, settings.session_idle_s)
        return dataclasses.replace(login, expires_at=row.expires_at)

    return await database.write(work)


async def revoke(
    database: Database, session_id: int, reason: SessionEndReason, *, user_id: int | None = None
) -> bool:
    """Revoke one session (only if it is ``user_id``'s, when given); return whether it was live."""

    async def work(session: AsyncSession) -> bool:
        owned = () if user_id is None else (LoginSessionRow.user_id == user_id,)
        ids = (
            await session.scalars(
                select(LoginSessionRow.id)
                .where(
                    LoginSessionRow.id == session_id, LoginSessionRow.revoked_at.is_(None), *owned
                )
                # Locked: a revocation racing this one waits, then finds it revoked already
                # (PostgreSQL rechecks the condition; SQLite has one writer anyway).
                .with_for_update()
            )
        ).all()
        # Not live (or not this user's): no tab to close anywhere.
        await _end(database, session, list(ids), reason)
        return bool(ids)

    return await database.write(work)


async def revoke_all(database: Database, user_id: int, reason: SessionEndReason) -> list[int]:
    """Revoke every live session of a user; return their ids."""
    return await database.write(
        lambda session: revoke_all_within(database, session, user_id, reason)
    )


async def revoke_all_within(
    database: Database, session: AsyncSession, user_id: int, reason: SessionEndReason
) -> list[int]:
    """Revoke every live session of a user in the open write transaction; return their ids."""
    ids = list(
        (
            await session.scalars(
                select(LoginSessionRow.id)
                .where(LoginSessionRow.user_id == user_id, LoginSessionRow.revoked_at.is_(None))
                .with_for_update()
            )
        ).all()
    )
    await _end(database, session, ids, reason)
    return ids


async def live_sessions(database: Database, user_id: int) -> list[SessionDetail]:
    """Return a user's live sessions, newest first, with their device and address hints."""
    now = database.clock()

    async def work(session: AsyncSession) -> list[SessionDetail]:
        rows = (
            await session.scalars(
                select(LoginSessionRow)
                .where(LoginSessionRow.user_id == user_id, LoginSessionRow.revoked_at.is_(None))
                .order_by(LoginSessionRow.id.desc())
            )
        ).all()
        return [
            SessionDetail(
                id=row.id,
                created_at=format_time(row.created_at),
                last_seen_at=format_time(row.last_seen_at),
                expires_at=format_time(row.expires_at),
                user_agent=row.user_agent,
                ip=row.ip,
            )
            for row in rows
            if ended_reason(row, now) is None
        ]

    return await database.read(work)


async def _end(
    database: Database, session: AsyncSession, ids: list[int], reason: SessionEndReason
) -> None:
    # Every end of a session comes here: in the open write transaction, and with its commit
    # every other hub process closes the sessions' tabs.
    if not ids:
        return
    await session.execute(
        update(LoginSessionRow)
        .where(LoginSessionRow.id.in_(ids))
        .values(revoked_at=database.clock(), revoked_reason=reason.value)
    )
    event = SessionsEnded(sessions=ids, reason=reason)
    origin = database.origin
    await session.run_sync(lambda sync: backplane.stage(sync.connection(), origin, [event]))


class SessionTimes(Protocol):
    """What decides whether a session has ended: a row of login_sessions, ORM or Core."""

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


@dataclasses.dataclass(frozen=True, slots=True)
class Collected:
    """What one collection deleted."""

    sessions: int
    switches: int


async def collect(database: Database) -> Collected:
    """Delete ended sessions and switch-log rows older than the retention."""
    now = database.clock()
    cutoff = now - dt.timedelta(seconds=database.settings.switch_log_ttl_s)

    async def work(session: AsyncSession) -> Collected:
        sessions = await session.execute(
            delete(LoginSessionRow).where(
                or_(
                    LoginSessionRow.revoked_at.is_not(None),
                    LoginSessionRow.idle_expires_at <= now,
                    LoginSessionRow.absolute_expires_at <= now,
                )
            )
        )
        switches = await session.execute(
            delete(SwitchLogRow).where(SwitchLogRow.decided_at < cutoff)
        )
        return Collected(getattr(sessions, "rowcount", 0), getattr(switches, "rowcount", 0))

    return await database.write(work)


async def statuses(
    database: Database, ids: Iterable[int]
) -> dict[int, tuple[SessionEndReason | None, dt.datetime]]:
    """Return why each of these sessions ended (None: live) and when it expires; a session
    collected already is missing."""
    now = database.clock()
    wanted = sorted(ids)

    # Core rows in a reader thread: the ORM built a full object per session on the event
    # loop, which stalled every tab for 14 ms per 500 sessions at each check (every 2 s).
    def work(connection: Connection) -> dict[int, tuple[SessionEndReason | None, dt.datetime]]:
        found: dict[int, tuple[SessionEndReason | None, dt.datetime]] = {}
        for start in range(0, len(wanted), 500):
            rows = connection.execute(LIVENESS_BY_IDS, {"ids": wanted[start : start + 500]})
            for row in rows:
                found[row.id] = (ended_reason(row, now), expires_at(row))
        return found

    return await database.read_sync(work)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_ENDED_MESSAGES = {
    SessionEndReason.EXPIRED: "The session expired; log in again.",
    SessionEndReason.LOGOUT: "The session was logged out; log in again.",
    SessionEndReason.REVOKED: "The session was revoked; log in again.",
}
