"""The tables: every row the hub keeps, in SQLAlchemy Core, the same on SQLite and PostgreSQL.

server/storage/migrations/ builds exactly these (tests/storage/test_schema.py compares them);
server/db.py exports them for the units of work.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    SmallInteger,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
)
from sqlalchemy.dialects import postgresql
from sqlalchemy.engine import Dialect

__all__ = [
    "changes",
    "feed_collected",
    "holds",
    "login_sessions",
    "metadata",
    "platform_states",
    "platforms",
    "rate_limits",
    "switch_log",
    "tab_counts",
    "users",
]


class _UTCDateTime(TypeDecorator[dt.datetime]):
    """Store naive UTC, hand back aware UTC, so SQLite and PostgreSQL compare alike."""

    impl = DateTime
    cache_ok = True

    def process_bind_param(self, value: dt.datetime | None, dialect: Dialect) -> dt.datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetimes are ambiguous; pass an aware UTC datetime")
        return value.astimezone(dt.UTC).replace(tzinfo=None)

    def process_result_value(
        self, value: dt.datetime | None, dialect: Dialect
    ) -> dt.datetime | None:
        return None if value is None else value.replace(tzinfo=dt.UTC)


# BIGINT on PostgreSQL; plain INTEGER on SQLite, where only that makes a rowid primary key.
_ID = BigInteger().with_variant(Integer, "sqlite")
# BIGINT[] on PostgreSQL; SQLite has no arrays, and its feed never filters by user (one process
# serves every user), so there the column stays empty.
_USERS = postgresql.ARRAY(BigInteger).with_variant(JSON, "sqlite")


def _id(name: str, *args: Any, **kwargs: Any) -> Column[int]:
    return Column(name, _ID, *args, nullable=kwargs.pop("nullable", False), **kwargs)


def _time(name: str, *, nullable: bool = False, index: bool = False) -> Column[dt.datetime]:
    return Column(name, _UTCDateTime(), nullable=nullable, index=index or None)


def _text(name: str, length: int, *, nullable: bool = False, **kwargs: Any) -> Column[str]:
    return Column(name, String(length), nullable=nullable, **kwargs)


def _user_id(*, primary_key: bool = False) -> Column[int]:
    """The owning user: the primary key, or else an indexed column; deleted with the user."""
    foreign = ForeignKey("users.id", ondelete="CASCADE")
    if primary_key:
        return _id("user_id", foreign, primary_key=True)
    return _id("user_id", foreign, index=True)


metadata = MetaData()

# A person who can log in.
users = Table(
    "users",
    metadata,
    _id("id", primary_key=True),
    _text("name", 64, unique=True),
    _text("password_hash", 256),
    _time("created_at"),
)

# A platform account connected by a user; credentials live in the host app, not here.
platforms = Table(
    "platforms",
    metadata,
    _id("id", primary_key=True),
    _user_id(),
    _text("name", 100),
    _text("kind", 32),
    _text("instance_url", 500),
    _text("username", 200),
    Column("is_active", Boolean, nullable=False, default=True),
    Column("is_default", Boolean, nullable=False, default=False),
    _time("created_at"),
    _time("updated_at"),
    _time("last_used_at", nullable=True),
    _text("external_id", 200, nullable=True),  # the host app's own id, when it gave one
    UniqueConstraint("user_id", "name"),
    UniqueConstraint("user_id", "instance_url", "username"),
    # A unique index (not a constraint): migration 0003 adds it without rebuilding the table.
    Index("uq_platforms_user_id_external_id", "user_id", "external_id", unique=True),
)

# The authoritative (version, active platform) of one user. The active platform is only
# meaningful from version 1 on: version 0 means "never switched", and then the active platform
# follows the default rule (server/rules.py's active_platform).
platform_states = Table(
    "platform_states",
    metadata,
    _user_id(primary_key=True),
    _id("version", default=0),
    _id("active_platform_id", ForeignKey("platforms.id", ondelete="SET NULL"), nullable=True),
    _time("updated_at"),
)

# A login session; only a SHA-256 of its 256-bit token is stored (server/storage/sessions.py).
login_sessions = Table(
    "login_sessions",
    metadata,
    _id("id", primary_key=True),
    _user_id(),
    _text("token_hash", 64, unique=True),
    _time("created_at"),
    _time("last_seen_at"),
    _time("idle_expires_at"),
    _time("absolute_expires_at"),
    _time("revoked_at", nullable=True),
    _text("revoked_reason", 16, nullable=True),
    _text("user_agent", 300, nullable=True),
    _text("ip", 64, nullable=True),
    _text("device", 80, nullable=True),  # described from user_agent (presence)
)

# The decision taken on one switch request, kept for idempotent retries.
switch_log = Table(
    "switch_log",
    metadata,
    _user_id(primary_key=True),
    _text("request_id", 64, primary_key=True),
    Column("accepted", Boolean, nullable=False),
    _text("reason", 32, nullable=True),
    _id("version"),
    _id("platform_id"),
    _text("tab_id", 64, nullable=True),
    _time("decided_at", index=True),
)

# A hold on a user's switches while a job of the host app runs (server/storage/holds.py).
holds = Table(
    "holds",
    metadata,
    _user_id(primary_key=True),
    _text("reason", 200),
    _time("placed_at"),
    _time("expires_at"),
)

# The change feed (server/storage/feed.py): what each committed change did, written in the
# transaction that made it, for the processes that did not make it. On SQLite a position is
# a rowid with AUTOINCREMENT, so positions follow commit order (one writer) and are never
# reused; a commit writes one row. On PostgreSQL a commit writes a row per shard of the users
# it changed (server/events.py), and ``tx`` is its transaction's id (pg_current_xact_id()),
# which is how a reader finds every row committed since its last look
# (server/storage/backplane.py), and ``users`` the users its events are of, so a reader skips
# the rows of users it has no tab of. Rows are collected after ``feed_retention_s``.
changes = Table(
    "changes",
    metadata,
    _id("position", primary_key=True),
    _text("origin", 64),  # the committing process's Database.origin
    Column("events", Text, nullable=False),  # a JSON array of server/events.py's events
    _time("created_at", index=True),
    Column("tx", BigInteger, nullable=True, index=True),  # PostgreSQL only
    Column("shard", SmallInteger, nullable=False, server_default="0"),
    Column("users", _USERS, nullable=True),  # PostgreSQL only
    sqlite_autoincrement=True,
)

# PostgreSQL: the highest transaction id whose feed rows the collection deleted, in one row;
# a reader whose last look came before it may have missed rows, and resyncs.
feed_collected = Table(
    "feed_collected",
    metadata,
    Column("id", SmallInteger, primary_key=True, autoincrement=False),
    Column("tx", BigInteger, nullable=False),
)

# Rate limits shared by every process (server/storage/buckets.py): a token bucket per key (a
# hash), kept as the time its next token is due when used steadily, in Unix seconds.
rate_limits = Table(
    "rate_limits",
    metadata,
    Column("key", String(40), primary_key=True),
    Column("tat", Float(precision=53), nullable=False),
)

# Presence across processes (server/storage/presence.py): each process's open tabs per login
# session, with the time the process last vouched for them; a row its process stopped
# refreshing is ignored, then deleted. Deleted with its session.
tab_counts = Table(
    "tab_counts",
    metadata,
    _text("origin", 64, primary_key=True),  # the process's Database.origin
    _id("session_id", ForeignKey("login_sessions.id", ondelete="CASCADE"), primary_key=True),
    _user_id(),
    Column("tabs", Integer, nullable=False),
    _time("seen_at"),
)
