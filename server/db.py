"""The engine and the one unit-of-work idiom for every database access; the tables.

The tables are defined in server/storage/tables.py and exported here, where every unit of
work has always found them (``db.users``, ``db.platforms``, ...).

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

from sqlalchemy import create_engine, exc
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from server.errors import StoreUnavailable, first_line
from server.settings import Settings
from server.storage import schema, sqlite, tables
from server.storage.reads import GroupRead
from server.storage.tables import *  # noqa: F403 (the tables, exported here for units of work)

__all__ = ["Clock", "Database", "utcnow"]
__all__ += tables.__all__

logger = logging.getLogger("hub.db")

T = TypeVar("T")
Clock = Callable[[], dt.datetime]


def utcnow() -> dt.datetime:
    """Return the current time as an aware UTC datetime."""
    return dt.datetime.now(dt.UTC)


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
        self._group_reads: dict[str, GroupRead[Any, Any]] = {}
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

    def group_read(self, name: str, fetch: Callable[[Any], Awaitable[Any]]) -> GroupRead[Any, Any]:
        """Return this database's batched read called ``name`` (server/storage/reads.py),
        made with ``fetch`` the first time."""
        reader = self._group_reads.get(name)
        if reader is None:
            reader = self._group_reads[name] = GroupRead(fetch)
        return reader

    async def write(self, work: Callable[[Connection], T], *, tells_tabs: bool = True) -> T:
        """Run ``work`` in a write transaction, committed when it returns.

        If the hub gives up waiting and the commit lands later, every tab is resynced
        (``on_late_commit``), unless ``tells_tabs`` is false: the work changes nothing a tab
        shows (a rate limit's bucket)."""
        return await self._run(work, write=True, tells_tabs=tells_tabs)

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

    async def _run(
        self, work: Callable[[Connection], T], *, write: bool, tells_tabs: bool = True
    ) -> T:
        # The unit of work runs in a task of its own and the caller awaits it through a
        # shield: a caller cancelled mid-transaction (a tab that disconnects, a shutdown)
        # cannot interrupt the commit or rollback, so no connection is ever left checked out.
        unit = self._in_thread(work, write=write) if self._sync_engine else self._bridged(work)
        unit_of_work = self._serialized(unit) if write else unit()
        return await self._shielded(unit_of_work, write=write and tells_tabs)

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
        # asyncio.timeout, not wait_for: 3.11's wait_for returns the result to a caller
        # cancelled at the instant its unit ends, and a loop of units then never stops.
        try:
            async with asyncio.timeout(self._deadline):
                return await asyncio.shield(task)
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
