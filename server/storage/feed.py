"""The change feed: each committed change's events, appended in its own transaction.

Processes that did not make a change read it from there.

``append`` is called by backplane.stage with every change (switch batch, platform change,
hold, session end). On SQLite, where the hub serves from one process, the feed is how a change
made by another process on the same file (``hub platform add``, a script) reaches running
tabs: ``Reader`` polls ``PRAGMA data_version`` on a connection of its own (a counter in
memory: no I/O) and reads the rows after its position when another connection committed.
On PostgreSQL the rows go by shard of their users, and each process reads those of the shards
it hosts when woken (server/storage/backplane.py's Listener).

Rows older than ``feed_retention_s`` are collected (``collect_forever``), in small chunks so
SQLite's one writer is never held long. A reader that finds the row after its position
collected resyncs every user with tabs here, as a lost notification does.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import datetime as dt
import logging
import sqlite3
import time
import urllib.parse
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec
from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Connection,
    and_,
    delete,
    func,
    insert,
    literal,
    literal_column,
    or_,
    select,
)
from sqlalchemy.dialects import postgresql

from server import db
from server.errors import StoreUnavailable
from server.events import Event, shard_of

__all__ = ["Reader", "append", "collect", "collect_forever", "reader_for"]

logger = logging.getLogger("hub.feed")

T = TypeVar("T")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Event])
_APPEND = insert(db.changes)
# The oldest transaction still running, as a bigint: every one below it has ended.
_XMIN: ColumnElement[int] = literal_column(
    "pg_snapshot_xmin(pg_current_snapshot())::text::bigint", BigInteger()
)
# On PostgreSQL each row names its transaction (server/storage/backplane.py reads by it).
_APPEND_TX = insert(db.changes).values(tx=literal_column("pg_current_xact_id()::text::bigint"))
_BATCH = 500  # rows read at once
_COLLECT_CHUNK = 2000  # rows deleted per write transaction
# The last position ever given (AUTOINCREMENT keeps it in sqlite_sequence, rows collected or not).
_LAST_POSITION = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)"


def append(connection: Connection, origin: str, events: Sequence[Event]) -> dict[int, list[int]]:
    """Append a committed change's events (nothing when there are none) in the transaction
    open on ``connection``; return the shards they were written to, each with its users.

    On PostgreSQL the events go in a row per shard of their users, each row listing its
    users, so a process reads only the rows of the users it has tabs of; on SQLite one process
    serves them all, and they go in one row (of shard 0).
    """
    if not events:
        return {}
    now = dt.datetime.now(dt.UTC)
    if connection.dialect.name != "postgresql":
        row = {"origin": origin, "events": _encoder.encode(events).decode(), "created_at": now}
        connection.execute(_APPEND, row)
        return {0: list(dict.fromkeys(event.user for event in events))}
    by_shard: dict[int, list[Event]] = {}
    users: dict[int, dict[int, None]] = {}  # ordered sets
    for event in events:
        shard = shard_of(event.user)
        by_shard.setdefault(shard, []).append(event)
        users.setdefault(shard, {})[event.user] = None
    connection.execute(
        _APPEND_TX,
        [
            {
                "origin": origin,
                "events": _encoder.encode(listed).decode(),
                "created_at": now,
                "shard": shard,
                "users": list(users[shard]),
            }
            for shard, listed in by_shard.items()
        ],
    )
    return {shard: list(listed) for shard, listed in users.items()}


async def collect(database: db.Database, *, horizon: int | None = None) -> int:
    """Delete the rows older than ``feed_retention_s``, at most ``_COLLECT_CHUNK`` per write
    transaction (a long DELETE would hold SQLite's one writer, and so every switch); return
    how many. A look that finds nothing old writes nothing.

    On PostgreSQL only rows of transactions below ``horizon`` go: a snapshot's xmin taken
    ``feed_retention_s`` ago (``collect_forever`` keeps them), so every row collected was
    committed that long ago, whenever its transaction began. Without one, the xmin of now.
    """
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=database.settings.feed_retention_s)
    old = db.changes.c.created_at < cutoff
    if not database.settings.is_sqlite:
        below = _XMIN if horizon is None else literal(horizon)
        old = and_(old, or_(db.changes.c.tx.is_(None), db.changes.c.tx < below))
    oldest_first = select(db.changes.c.position).where(old).order_by(db.changes.c.position)

    def last_old(connection: Connection) -> int | None:
        chunk = oldest_first.limit(_COLLECT_CHUNK).subquery()
        found: int | None = connection.scalar(select(func.max(chunk.c.position)))
        return found

    def work(connection: Connection, upto: int) -> int:
        gone = delete(db.changes).where(db.changes.c.position <= upto, old)
        if connection.dialect.name != "postgresql":
            return connection.execute(gone).rowcount
        txs = connection.scalars(gone.returning(db.changes.c.tx)).all()
        highest = max((tx for tx in txs if tx is not None), default=None)
        if highest is not None:  # readers that had not looked past it resync
            mark = postgresql.insert(db.feed_collected).values(id=1, tx=highest)
            connection.execute(
                mark.on_conflict_do_update(
                    index_elements=[db.feed_collected.c.id],
                    set_={"tx": func.greatest(db.feed_collected.c.tx, mark.excluded.tx)},
                )
            )
        return len(txs)

    collected = 0
    while (upto := await database.read(last_old)) is not None:
        collected += await database.write(lambda connection: work(connection, upto))
    return collected


def _xmin(connection: Connection) -> int:
    return int(connection.scalar(select(_XMIN)) or 0)


async def collect_forever(database: db.Database) -> None:
    """Collect the feed every quarter of its retention (at least every 60 s), until cancelled:
    often, so each collection is small. On PostgreSQL each round notes the xmin of now, and
    collects below the one noted at least a retention ago (none before that)."""
    retention = database.settings.feed_retention_s
    interval = min(60.0, max(1.0, retention / 4))
    noted: collections.deque[tuple[float, int]] = collections.deque()
    while True:
        await asyncio.sleep(interval)
        try:
            horizon = None
            if not database.settings.is_sqlite:
                now = time.monotonic()
                noted.append((now, await database.read(_xmin)))
                while len(noted) > 1 and noted[1][0] <= now - retention:
                    noted.popleft()
                horizon = noted[0][1] if noted[0][0] <= now - retention else 0
            collected = await collect(database, horizon=horizon)
        except StoreUnavailable as error:
            logger.warning("feed collection skipped: %s", error)
            continue
        if collected:
            logger.debug("collected %d rows of the change feed", collected)


class Reader:
    """Read what other processes appended to a SQLite file's feed, and hand it to ``deliver``.

    It starts at the end of the feed (a tab that connects later reads the state itself), polls
    every ``poll_s``, and resyncs (``resync``) when rows it had not read were collected, when a
    row cannot be decoded (a newer hub's event) and after any failure of its own, so no failure
    loses a change without a resync.
    """

    def __init__(
        self,
        path: str,
        origin: str,
        deliver: Callable[[Event], None],
        resync: Callable[[], Awaitable[object]],
        *,
        poll_s: float,
    ) -> None:
        self.path, self.origin, self.poll_s = path, origin, poll_s
        self.deliver, self.resync = deliver, resync
        self.position: int | None = None  # None until the first look: then the feed's end
        self.delivered = 0  # events from other processes handed over (tests, metrics)
        self.resyncs = 0
        self._connection: sqlite3.Connection | None = None
        # Every use of the connection runs on this one thread, in order: a close never
        # overtakes a read.
        self._thread = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="feed")
        self._version: int | None = None

    async def run_forever(self) -> None:
        """Look every ``poll_s`` until cancelled. A look that fails (a locked or missing file, a
        store that cannot resync, a bug) is logged, the connection reopened where it was, and
        everything resynced before the next look, a second later."""
        failed = False
        try:
            while True:
                try:
                    if failed:
                        await self._resync()
                        failed = False
                    await self.step()
                except asyncio.CancelledError:
                    raise
                except Exception:
                    logger.exception("feed: a look failed; resyncing, and again in 1 s")
                    await self._in_thread(self._close)
                    failed = True
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.sleep(self.poll_s)
        finally:
            # On the reader's own thread, after any read still running there: a look
            # cancelled mid-read (at shutdown) leaves its thread reading on, and closing the
            # connection under it crashed the process (a segmentation fault in sqlite3).
            await asyncio.shield(self._in_thread(self._close))
            self._thread.shutdown(wait=False)

    async def step(self) -> None:
        """Look once: deliver what other processes appended since the last look, after a
        resync if some of it was collected before it could be read."""
        rows, behind = await self._in_thread(self._read)
        if behind:
            logger.warning("feed: rows were collected before this process read them; resyncing")
            await self._resync()
        for position, origin, events in rows:
            if origin == self.origin:
                continue
            try:
                decoded = _decoder.decode(events)
            except msgspec.DecodeError as error:
                logger.error("feed: row %d cannot be read (%s); resyncing", position, error)
                await self._resync()
                continue
            for event in decoded:
                self.deliver(event)
                self.delivered += 1

    async def _resync(self) -> None:
        self.resyncs += 1
        await self.resync()

    def _read(self) -> tuple[list[tuple[int, str, str]], bool]:
        """In a worker thread: the rows after ``position`` if anything was committed since the
        last look, and whether some were collected before they could be read. One read
        transaction, so the feed's last position and its rows are of one snapshot."""
        connection = self._open()
        (version,) = connection.execute("PRAGMA data_version").fetchone()
        if version == self._version:
            return [], False
        self._version = version
        connection.execute("BEGIN")
        try:
            (last,) = connection.execute(_LAST_POSITION).fetchone()
            if self.position is None:  # the first look: start at the end
                self.position = last
            found: list[tuple[int, str, str]] = connection.execute(
                "SELECT position, origin, events FROM changes WHERE position > ?"
                f" ORDER BY position LIMIT {_BATCH}",
                (self.position,),
            ).fetchall()
        finally:
            connection.execute("COMMIT")
        if len(found) == _BATCH:
            self._version = None  # more to read: look again next time whatever the version
        start = found[0][0] if found else last + 1
        behind = start > self.position + 1
        self.position = found[-1][0] if found else max(self.position, last)
        return found, behind

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                f"file:{urllib.parse.quote(self.path)}?mode=ro",
                uri=True,
                check_same_thread=False,
                isolation_level=None,  # transactions are explicit (_read)
            )
            connection.execute("PRAGMA busy_timeout = 1000")
            self._connection = connection
        return self._connection

    async def _in_thread(self, call: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    def _close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None
            self._version = None


def reader_for(
    database_url: str,
    origin: str,
    deliver: Callable[[Event], None],
    resync: Callable[[], Awaitable[object]],
    *,
    poll_s: float,
) -> Reader | None:
    """Return the reader a database needs: one on a SQLite file; none on PostgreSQL (the
    backplane's Listener reads its feed) or in memory (no other process can reach it)."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split("///", 1)[1] if "///" in database_url else ""
    if not path or path.startswith(":memory:"):
        return None
    return Reader(path, origin, deliver, resync, poll_s=poll_s)
