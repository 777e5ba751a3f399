"""The change feed: each committed change's events, appended in its own transaction.

Processes that did not make a change read it from there.

``append`` is called by backplane.stage with every change (switch batch, platform change,
hold, session end). On SQLite, where the hub serves from one process, the feed is how a change
made by another process on the same file (``hub platform add``, a script) reaches running
tabs: ``Reader`` polls ``PRAGMA data_version`` on a connection of its own (a counter in
memory: no I/O) and reads the rows after its position when another connection committed.
On PostgreSQL the rows are written too; the processes still learn of changes from the
notifications' payloads (server/storage/backplane.py) until the feed's reader serves them.

Rows older than ``feed_retention_s`` are collected (``collect``). A reader that finds the row
after its position collected resyncs every user with tabs here, as a lost notification does.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import sqlite3
import urllib.parse
from collections.abc import Awaitable, Callable, Iterable

import msgspec
from sqlalchemy import Connection, delete, insert

from server import db
from server.events import Event

__all__ = ["Reader", "append", "collect", "reader_for"]

logger = logging.getLogger("hub.feed")

_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(list[Event])
_APPEND = insert(db.changes)
_BATCH = 500  # rows read at once
# The last position ever given (AUTOINCREMENT keeps it in sqlite_sequence, rows collected or not).
_LAST_POSITION = "SELECT coalesce((SELECT seq FROM sqlite_sequence WHERE name = 'changes'), 0)"


def append(connection: Connection, origin: str, events: Iterable[Event]) -> None:
    """Append a committed change's events (nothing when there are none) in the transaction
    open on ``connection``."""
    listed = list(events)
    if listed:
        connection.execute(
            _APPEND,
            {
                "origin": origin,
                "events": _encoder.encode(listed).decode(),
                "created_at": dt.datetime.now(dt.UTC),
            },
        )


async def collect(database: db.Database) -> int:
    """Delete the rows older than ``feed_retention_s``; return how many."""
    cutoff = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=database.settings.feed_retention_s)

    def work(connection: Connection) -> int:
        return connection.execute(
            delete(db.changes).where(db.changes.c.created_at < cutoff)
        ).rowcount

    return await database.write(work)


class Reader:
    """Read what other processes appended to a SQLite file's feed, and hand it to ``deliver``.

    It starts at the end of the feed (a tab that connects later reads the state itself), polls
    every ``poll_s``, and resyncs (``resync``) when rows it had not read were collected.
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
        self.position = 0
        self.delivered = 0  # events from other processes handed over (tests, metrics)
        self._connection: sqlite3.Connection | None = None
        self._version: int | None = None

    async def run_forever(self) -> None:
        """Look every ``poll_s`` until cancelled; a look that fails (a locked or missing file)
        is retried a second later."""
        try:
            while True:
                try:
                    await self.step()
                except sqlite3.Error as error:
                    logger.warning("feed: reading failed (%s); again in 1 s", error)
                    self._close()
                    await asyncio.sleep(1.0)
                    continue
                await asyncio.sleep(self.poll_s)
        finally:
            self._close()

    async def step(self) -> None:
        """Look once: deliver what other processes appended since the last look, after a
        resync if some of it was collected before it could be read."""
        rows, behind = await asyncio.to_thread(self._read)
        if behind:
            logger.warning("feed: rows were collected before this process read them; resyncing")
            await self.resync()
        for origin, events in rows:
            if origin == self.origin:
                continue
            for event in events:
                self.deliver(event)
                self.delivered += 1

    def _read(self) -> tuple[list[tuple[str, list[Event]]], bool]:
        """In a worker thread: the rows after ``position`` if anything was committed since the
        last look, and whether some were collected before they could be read."""
        connection = self._open()
        (version,) = connection.execute("PRAGMA data_version").fetchone()
        if version == self._version:
            return [], False
        self._version = version
        found: list[tuple[int, str, str]] = connection.execute(
            "SELECT position, origin, events FROM changes WHERE position > ? ORDER BY position"
            f" LIMIT {_BATCH}",
            (self.position,),
        ).fetchall()
        if len(found) == _BATCH:
            self._version = None  # more to read: look again next time whatever the version
        if found:
            behind = found[0][0] > self.position + 1
            self.position = found[-1][0]
        else:  # nothing after our position: was something appended and collected meanwhile?
            (last,) = connection.execute(_LAST_POSITION).fetchone()
            behind = last > self.position
            self.position = max(self.position, last)
        return [(origin, _decoder.decode(events)) for _, origin, events in found], behind

    def _open(self) -> sqlite3.Connection:
        if self._connection is None:
            connection = sqlite3.connect(
                f"file:{urllib.parse.quote(self.path)}?mode=ro", uri=True, check_same_thread=False
            )
            connection.execute("PRAGMA busy_timeout = 1000")
            if self.position == 0:  # start at the end: what came before is in the state
                (last,) = connection.execute(_LAST_POSITION).fetchone()
                self.position = last
            self._connection = connection
        return self._connection

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
    """Return the reader a database needs: one on a SQLite file; none on PostgreSQL (its
    notifications carry the changes) or in memory (no other process can reach it)."""
    if not database_url.startswith("sqlite"):
        return None
    path = database_url.split("///", 1)[1] if "///" in database_url else ""
    if not path or path.startswith(":memory:"):
        return None
    return Reader(path, origin, deliver, resync, poll_s=poll_s)
