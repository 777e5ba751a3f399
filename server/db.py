"""The tables, the engine, and the one unit-of-work idiom for every database access.

A unit of work is a synchronous function of one SQLAlchemy Core ``Connection``, run in one
transaction by ``Database.read`` or ``Database.write``: on SQLite whole in a thread, on the
plain sqlite3 driver; on PostgreSQL on asyncpg, through SQLAlchemy's greenlet bridge.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import math
import os
import secrets
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    TypeDecorator,
    UniqueConstraint,
    create_engine,
    exc,
)
from sqlalchemy.engine import Connection, Dialect, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.errors import StoreUnavailable, first_line
from server.settings import Settings
from server.storage import schema, sqlite

__all__ = [
    "Clock",
    "Database",
    "holds",
    "login_sessions",
    "metadata",
    "platform_states",
    "platforms",
    "switch_log",
    "users",
    "utcnow",
]

logger = logging.getLogger("hub.db")

T = TypeVar("T")
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


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


# Errors that mean "the database is not there right now", as opposed to a bug or a conflict.
_UNAVAILABLE = (exc.OperationalError, exc.InterfaceError, exc.TimeoutError, OSError)


# SQLSTATE classes that mean the server cannot serve now, whatever the statement: connection
# exceptions (08), insufficient resources (53, e.g. too many connections) and operator
# intervention (57: shutdown, terminated backend, cannot connect now). asyncpg's errors come
# through SQLAlchemy as plain DBAPIError, so the class is what tells them apart.
_UNAVAILABLE_SQLSTATE_CLASSES = ("08", "53", "57")
# "database ... is not currently accepting connections" (ALLOW_CONNECTIONS false).
_UNAVAILABLE_SQLSTATES = ("55000",)


def _unavailable(error: BaseException) -> bool:
    """Tell whether ``error`` means the database cannot be reached now (nothing applied)."""
    if isinstance(error, _UNAVAILABLE):
        return True
    if not isinstance(error, exc.DBAPIError):
        return False
    if error.connection_invalidated:
        return True
    sqlstate = getattr(error.orig, "sqlstate", None) or ""
    return sqlstate[:2] in _UNAVAILABLE_SQLSTATE_CLASSES or sqlstate in _UNAVAILABLE_SQLSTATES


@contextlib.contextmanager
def _unavailable_as_store_error() -> Iterator[None]:
    """Turn an error that means the database cannot be reached into StoreUnavailable (every
    unit of work, async or sync, answers it alike); let every other error through."""
    try:
        yield
    except Exception as error:
        if not _unavailable(error):
            raise
        raise StoreUnavailable(f"The database is unavailable: {first_line(error)}") from error


class Database:
    """Own the engine and run units of work: one session, one transaction, one task."""

    def __init__(self, settings: Settings, *, clock: Clock = utcnow) -> None:
        self.settings = settings
        self.clock = clock
        # Names this handle's commits on the backplane (server/storage/backplane.py), so its own
        # process, which publishes them itself, can tell them from other processes'.
        self.origin = secrets.token_hex(8)
        self.engine: AsyncEngine = create_async_engine(
            settings.database_url, **_engine_options(settings)
        )
        # PostgreSQL: a unit of work with no answer within database_timeout_s is answered
        # StoreUnavailable; its transaction may still commit when the server answers again
        # (a COMMIT already sent cannot be called back), and then this is told, so that what
        # it changed still reaches the tabs (the app resyncs them).
        self._deadline = None if settings.is_sqlite else settings.database_timeout_s
        self.on_late_commit: Callable[[], None] | None = None
        # Units of work are synchronous. On SQLite each runs whole in one hop to a thread, on
        # the plain sqlite3 driver: through aiosqlite, every cursor call is its own hop (about
        # 60 per switch, 5 ms of CPU); the async engine serves only the schema (alembic).
        self._sync_engine: Engine | None = None
        self._sync_writes: Engine | None = None  # the same, marked for BEGIN IMMEDIATE
        self._writer: ThreadPoolExecutor | None = None
        self._readers: ThreadPoolExecutor | None = None
        if settings.is_sqlite:
            sqlite.configure(self.engine.sync_engine, settings)
            self._sync_engine = create_engine(
                settings.database_url.replace("+aiosqlite", "+pysqlite", 1),
                connect_args={"check_same_thread": False},
            )
            sqlite.configure(self._sync_engine, settings)
            # Made once: an options engine per unit of work cost 3% of the hub's GIL time.
            self._sync_writes = self._sync_engine.execution_options(hub_write=True)
            self._writer = ThreadPoolExecutor(1, thread_name_prefix="hub-sqlite-writer")
            self._readers = ThreadPoolExecutor(2, thread_name_prefix="hub-sqlite-reader")
        self._running: set[asyncio.Task[Any]] = set()
        # SQLite has one writer at a time. The hub's own writers queue here, in order, rather
        # than in SQLite's busy handler, which sleeps up to 100 ms between tries and, under
        # contention, fails writers that a queue would have served. BEGIN IMMEDIATE still
        # waits out other processes (up to busy_timeout). When a write fails for want of the
        # database, the writers queued behind it fail at once with the same message instead
        # of each waiting its own busy_timeout: nothing is applied, and they may retry.
        self._write_lock = asyncio.Lock() if settings.is_sqlite else None
        self._write_failed_at = -math.inf
        self._write_failure = ""
        # SQLite's write-ahead log, checked after each write (a stat): see _recover_wal.
        self._wal = sqlite.wal_path(settings.database_url) if settings.is_sqlite else None

    async def create_schema(self) -> schema.SchemaState:
        """Bring the schema to this hub's newest revision (server/storage/schema.py), creating it.

        Returns where the schema stood before.
        """
        return await schema.upgrade(self._schema_engine())

    async def prepare_schema(self, *, upgrade: bool) -> None:
        """Create the schema of an empty database; upgrade an outdated one only if ``upgrade``.

        Raises SchemaOutdated, saying what to run, for an outdated schema when not told to
        upgrade, and for a schema newer than this hub's.
        """
        state = await schema.inspect_schema(self.engine)
        if state.up_to_date:
            return
        if state.empty or (upgrade and state.known):
            await schema.upgrade(self._schema_engine())
            return
        raise schema.SchemaOutdated(state.problem())

    def _schema_engine(self) -> AsyncEngine:
        # On SQLite, BEGIN IMMEDIATE: a second process upgrading at once waits for the first,
        # then finds nothing left to do (PostgreSQL takes an advisory lock: storage/schema.py).
        return self.engine.execution_options(hub_write=True)

    async def read(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a read transaction and return its result."""
        return await self._run(work, write=False)

    async def write(self, work: Callable[[Connection], T]) -> T:
        """Run ``work`` in a write transaction, committed when it returns."""
        return await self._run(work, write=True)

    def checked_out(self) -> int:
        """Return how many pooled connections are checked out right now."""
        total = 0
        for engine in (self.engine.sync_engine, self._sync_engine):
            checkedout = getattr(engine.pool, "checkedout", None) if engine else None
            total += int(checkedout()) if checkedout else 0
        return total

    async def dispose(self) -> None:
        """Wait for running units of work, then close every pooled connection."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=10)
        await self.engine.dispose()
        for executor in (self._writer, self._readers):
            if executor is not None:
                await asyncio.to_thread(executor.shutdown)
        if self._sync_engine is not None:
            self._sync_engine.dispose()

    async def _run(self, work: Callable[[Connection], T], *, write: bool) -> T:
        # The unit of work runs in a task of its own and the caller awaits it through a
        # shield: a caller cancelled mid-transaction (a tab that disconnects, a shutdown)
        # cannot interrupt the commit or rollback, so no connection is ever left checked out.
        unit = self._in_thread(work, write=write) if self._sync_engine else self._bridged(work)
        return await self._shielded(self._serialized(unit) if write else unit(), write=write)

    def _in_thread(
        self, work: Callable[[Connection], T], *, write: bool
    ) -> Callable[[], Awaitable[T]]:
        # SQLite: the whole unit in one hop to a thread (the writer's, or a reader's).
        engine = self._sync_writes if write and self._sync_writes else self._sync_engine
        assert engine is not None
        executor = self._writer if write else self._readers
        loop = asyncio.get_running_loop()

        def call() -> T:
            with engine.begin() as connection:
                return work(connection)

        async def unit() -> T:
            with _unavailable_as_store_error():
                return await loop.run_in_executor(executor, call)

        return unit

    def _bridged(self, work: Callable[[Connection], T]) -> Callable[[], Awaitable[T]]:
        # PostgreSQL: the same synchronous work on asyncpg, through SQLAlchemy's greenlet
        # bridge; every statement is a round trip either way.
        async def unit() -> T:
            with _unavailable_as_store_error():
                async with self.engine.begin() as connection:
                    return await connection.run_sync(work)

        return unit

    async def _shielded(self, unit: Awaitable[T], *, write: bool = False) -> T:
        task = asyncio.ensure_future(unit)
        self._running.add(task)
        task.add_done_callback(self._running.discard)
        if self._deadline is None:
            return await asyncio.shield(task)
        try:
            return await asyncio.wait_for(asyncio.shield(task), self._deadline)
        except TimeoutError:
            if write:
                task.add_done_callback(self._finished_late)
            else:
                task.add_done_callback(_retrieve)
            raise StoreUnavailable(
                f"The database did not answer within {self._deadline:g} s."
            ) from None

    def _finished_late(self, task: asyncio.Task[Any]) -> None:
        if task.cancelled() or task.exception() is not None:
            return
        logger.warning("a unit of work the hub gave up on committed late; resyncing tabs")
        if self.on_late_commit is not None:
            self.on_late_commit()

    async def _serialized(self, unit: Callable[[], Awaitable[T]]) -> T:
        if self._write_lock is None:
            return await unit()
        queued_at = time.monotonic()
        async with self._write_lock:
            if self._write_failed_at > queued_at:
                raise StoreUnavailable(self._write_failure)
            try:
                result = await unit()
            except StoreUnavailable as error:
                self._write_failed_at, self._write_failure = time.monotonic(), str(error)
                raise
            # A stat of a local file: microseconds, once per commit (a batch of switches).
            if self._wal is not None and not os.path.exists(self._wal):  # noqa: ASYNC240
                await self._recover_wal()
            return result

    async def _recover_wal(self) -> None:
        """Save what a deleted WAL holds and start a new one (sqlite.checkpoint_deleted_wal)."""
        assert self._sync_engine is not None and self._writer is not None
        sync_engine = self._sync_engine
        logger.error(
            "%s was deleted under the running hub: saving its commits into the database and "
            "starting a new one (never delete -wal or -shm files while a hub runs)",
            self._wal,
        )
        try:
            await asyncio.get_running_loop().run_in_executor(
                self._writer, sqlite.checkpoint_deleted_wal, sync_engine
            )
        except Exception as error:
            self._write_failed_at, self._write_failure = time.monotonic(), str(error)
            raise StoreUnavailable(f"The database's WAL was deleted: {error}") from error
        await self.engine.dispose()


def _engine_options(settings: Settings) -> dict[str, Any]:
    """Bound every wait on PostgreSQL: connecting, each statement, a pool checkout."""
    if settings.is_sqlite:
        return {}
    timeout = settings.database_timeout_s
    return {
        "connect_args": {"timeout": timeout, "command_timeout": timeout},
        "pool_timeout": timeout,
    }


def _retrieve(task: asyncio.Task[Any]) -> None:
    if not task.cancelled():
        task.exception()  # retrieved: a read given up on may fail later, unheard
