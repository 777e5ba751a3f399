"""Login sessions: open, authenticate, extend, revoke, list and collect.

Only the SHA-256 of a session's 256-bit random token is stored, so a copy of the database
cannot be replayed as a login. Idle expiry slides with activity; absolute expiry never moves.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import functools
import hashlib
import logging
import re
import secrets
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select, update

from server import db
from server.api import SessionDetail
from server.db import Database
from server.errors import AuthenticationError, StoreUnavailable, UsageError
from server.events import DevicesChanged, SessionsEnded
from server.protocol import SessionEndReason
from server.storage import backplane, expiry
from server.storage.devices import describe
from server.storage.expiry import (
    HANDLE_LENGTH,
    LIVENESS_COLUMNS,
    ended_reason,
    expires_at,
    format_time,
    idle_expiry,
)
from server.storage.lists import one_of
from server.storage.passwords import (
    NO_PASSWORD,
    dummy_hash,
    hash_password,
    needs_rehash,
    verify_password,
)

__all__ = [
    "LoginSession",
    "authenticate",
    "by_handle",
    "collect",
    "extend",
    "format_time",
    "live_sessions",
    "log_in",
    "open_session",
    "revoke",
    "revoke_all",
    "revoke_all_within",
    "token_hash",
]

logger = logging.getLogger("hub.sessions")
_sessions = db.login_sessions
_users = db.users
# Built once, on the synchronous path: every WebSocket handshake runs it.
_BY_TOKENS = (
    select(*LIVENESS_COLUMNS, _users.c.name, _sessions.c.token_hash)
    .join_from(_sessions, _users, _users.c.id == _sessions.c.user_id)
    .where(one_of(_sessions.c.token_hash, "digests"))
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

    def find(connection: Connection) -> tuple[int, str] | None:
        query = select(_users.c.id, _users.c.password_hash).where(_users.c.name == name)
        row = connection.execute(query).first()
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

    def work(connection: Connection) -> None:
        # Only if unchanged meanwhile: a password set since then is newer than this one.
        connection.execute(
            update(_users)
            .where(_users.c.id == user_id, _users.c.password_hash == old)
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
    agent = _CONTROL.sub("", user_agent or "")[:300] or None
    # Described once, here (a millisecond or so of regular expressions, off the loop), so that
    # presence reads it rather than parsing every device's user agent on every read.
    device = await asyncio.to_thread(describe, agent) if agent else None
    settings = database.settings
    now = database.clock()
    absolute = now + dt.timedelta(seconds=settings.session_absolute_s)
    idle = idle_expiry(now, absolute, settings.session_idle_s)
    row = {
        "user_id": user_id,
        "token_hash": token_hash(token),
        "created_at": now,
        "last_seen_at": now,
        "idle_expires_at": idle,
        "absolute_expires_at": absolute,
        # A header may hold what the protocol refuses in bodies; keep what can be shown.
        "user_agent": agent,
        "device": device,
        "ip": ip,
    }
    locked_user = select(_users.c.name).where(_users.c.id == user_id).with_for_update()
    live_sessions_of_user = (
        select(_sessions.c.id)
        .where(
            _sessions.c.user_id == user_id,
            _sessions.c.revoked_at.is_(None),
            _sessions.c.idle_expires_at > now,
            _sessions.c.absolute_expires_at > now,
        )
        .order_by(_sessions.c.id)
    )

    def store(connection: Connection) -> LoginSession:
        name = connection.scalar(locked_user)
        if name is None:
            raise UsageError(f"no user with id {user_id}")
        # The user's row is locked (FOR UPDATE; SQLite has one writer): two logins at once
        # count the same sessions one after the other, so the cap holds.
        live = connection.scalars(live_sessions_of_user).all()
        displaced = list(live[: max(0, len(live) - settings.max_sessions_per_user + 1)])
        _end(database, connection, user_id, displaced, SessionEndReason.REVOKED)
        session_id = connection.scalar(insert(_sessions).values(row).returning(_sessions.c.id))
        assert session_id is not None
        # The user's tabs on every other process list the new device (server/presence.py).
        backplane.stage(connection, database.origin, [DevicesChanged(user_id)])
        return LoginSession(session_id, user_id, name, min(idle, absolute), tuple(displaced))

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
    digest = token_hash(token)
    # Concurrent handshakes (a reconnect storm) share one read (server/storage/reads.py).
    row = await database.group_read(
        "sessions_by_token", functools.partial(_by_tokens, database)
    ).get(digest)
    now = database.clock()
    if row is None:
        raise AuthenticationError(
            "invalid", "The session is unknown or was collected; log in again."
        )
    ended = ended_reason(row, now)
    if ended is not None:
        raise AuthenticationError(ended.value, _ENDED_MESSAGES[ended])
    login = LoginSession(row.id, row.user_id, row.name, expires_at(row))
    if touch and (now - row.last_seen_at).total_seconds() >= database.settings.session_touch_s:
        try:
            login = await extend(database, login)
        except StoreUnavailable as error:
            # The session is live (read above) and keeps its expiry: a slide that the
            # database could not take does not fail the request that asked for it.
            logger.debug("session %d not slid: %s", login.id, error)
    return login


async def _by_tokens(database: Database, digests: Sequence[str]) -> dict[str, Any]:
    def find(connection: Connection) -> dict[str, Any]:
        rows = connection.execute(_BY_TOKENS, {"digests": list(digests)})
        return {row.token_hash: row for row in rows}

    return await database.read(find)


async def extend(database: Database, login: LoginSession) -> LoginSession:
    """Slide a live session's idle expiry forward and return it; raise AuthenticationError if
    it has ended meanwhile. A session another transaction holds right now (PostgreSQL) is
    returned as it was: that transaction is changing it.

    Concurrent calls share one write (server/storage/expiry.py's ``extend``): in a reconnect
    storm every handshake of a session last seen long ago slides it, and one transaction
    serves them all."""
    extended = database.group_read("session_extends", functools.partial(expiry.extend, database))
    until = await extended.get(login.id)
    if isinstance(until, SessionEndReason):
        raise AuthenticationError(until.value, _ENDED_MESSAGES[until])
    return login if until is None else dataclasses.replace(login, expires_at=until)


async def by_handle(database: Database, user_id: int, handle: str) -> int | None:
    """Return the id of the user's session called ``handle``, if any."""
    query = select(_sessions.c.id).where(
        _sessions.c.user_id == user_id,  # indexed: at most max_sessions_per_user rows
        func.substr(_sessions.c.token_hash, 1, HANDLE_LENGTH) == handle,
    )
    found: int | None = await database.read(lambda connection: connection.scalar(query))
    return found


async def revoke(
    database: Database, session_id: int, reason: SessionEndReason, *, user_id: int | None = None
) -> bool:
    """Revoke one session (only if it is ``user_id``'s, when given); return whether it was live."""

    owned = () if user_id is None else (_sessions.c.user_id == user_id,)
    query = (
        select(_sessions.c.id, _sessions.c.user_id)
        .where(_sessions.c.id == session_id, _sessions.c.revoked_at.is_(None), *owned)
        # Locked: a revocation racing this one waits, then finds it revoked already
        # (PostgreSQL rechecks the condition; SQLite has one writer anyway).
        .with_for_update()
    )

    def work(connection: Connection) -> bool:
        row = connection.execute(query).first()
        if row is None:  # not live (or not this user's): no tab to close anywhere
            return False
        _end(database, connection, row.user_id, [row.id], reason)
        return True

    return await database.write(work)


async def revoke_all(database: Database, user_id: int, reason: SessionEndReason) -> list[int]:
    """Revoke every live session of a user; return their ids."""
    return await database.write(
        lambda connection: revoke_all_within(database, connection, user_id, reason)
    )


def revoke_all_within(
    database: Database, connection: Connection, user_id: int, reason: SessionEndReason
) -> list[int]:
    """Revoke every live session of a user in the open write transaction; return their ids."""
    # Locked in id order, as every writer of several sessions locks them (expiry.py): in the
    # heap's order, PostgreSQL could deadlock it with a slide of the same sessions.
    query = (
        select(_sessions.c.id)
        .where(_sessions.c.user_id == user_id, _sessions.c.revoked_at.is_(None))
        .order_by(_sessions.c.id)
        .with_for_update()
    )
    ids = list(connection.scalars(query).all())
    _end(database, connection, user_id, ids, reason)
    return ids


async def live_sessions(database: Database, user_id: int) -> list[SessionDetail]:
    """Return a user's live sessions, newest first, with their device and address hints."""
    now = database.clock()

    query = (
        select(_sessions)
        .where(_sessions.c.user_id == user_id, _sessions.c.revoked_at.is_(None))
        .order_by(_sessions.c.id.desc())
    )

    def work(connection: Connection) -> list[SessionDetail]:
        return [
            SessionDetail(
                id=row.id,
                created_at=format_time(row.created_at),
                last_seen_at=format_time(row.last_seen_at),
                expires_at=format_time(expires_at(row)),
                user_agent=row.user_agent,
                ip=row.ip,
            )
            for row in connection.execute(query)
            if ended_reason(row, now) is None
        ]

    return await database.read(work)


def _end(
    database: Database,
    connection: Connection,
    user_id: int,
    ids: list[int],
    reason: SessionEndReason,
) -> None:
    # Every end of a session comes here: in the open write transaction, and with its commit
    # every other hub process closes the sessions' tabs.
    if not ids:
        return
    connection.execute(
        update(_sessions)
        .where(_sessions.c.id.in_(ids))
        .values(revoked_at=database.clock(), revoked_reason=reason.value)
    )
    event = SessionsEnded(user=user_id, sessions=ids, reason=reason)
    backplane.stage(connection, database.origin, [event])


@dataclasses.dataclass(frozen=True, slots=True)
class Collected:
    """What one collection deleted."""

    sessions: int
    switches: int


async def collect(database: Database) -> Collected:
    """Delete ended sessions and switch-log rows older than the retention."""
    now = database.clock()
    cutoff = now - dt.timedelta(seconds=database.settings.switch_log_ttl_s)

    ended = or_(
        _sessions.c.revoked_at.is_not(None),
        _sessions.c.idle_expires_at <= now,
        _sessions.c.absolute_expires_at <= now,
    )
    switch_log = db.switch_log

    def work(connection: Connection) -> Collected:
        sessions = connection.execute(delete(_sessions).where(ended))
        switches = connection.execute(delete(switch_log).where(switch_log.c.decided_at < cutoff))
        return Collected(sessions.rowcount, switches.rowcount)

    return await database.write(work)


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")

_ENDED_MESSAGES = {
    SessionEndReason.EXPIRED: "The session expired; log in again.",
    SessionEndReason.LOGOUT: "The session was logged out; log in again.",
    SessionEndReason.REVOKED: "The session was revoked; log in again.",
}
