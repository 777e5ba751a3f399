"""Rate limits shared by every hub process of a database: token buckets kept in a table.

With several processes on PostgreSQL, a limit kept in each process's memory gives an
attacker who spreads over N processes N times the budget. These buckets live in the
``rate_limits`` table, one row per key, as the generic cell rate algorithm keeps a bucket:
one number, the theoretical arrival time (``tat``, Unix seconds) of the next token when the
bucket is used steadily. A take is one conditional upsert, atomic on both engines, so
concurrent takes through any processes meet one budget:

    allowed  when  max(tat, now) - now <= (burst - 1) / rate
    then     tat := max(tat, now) + 1 / rate

A bucket whose ``tat`` has passed is full, as a missing row is; ``collect`` deletes those.
``now`` is the database's clock on PostgreSQL (``now()``, the transaction's start), so the
processes' own clocks, however far apart, never enter a bucket; on SQLite, whose one process
serves alone, it is that process's clock.
Keys are hashed (a user name or an address can be long or odd), so a row is small whatever
the client sent. server/limits.py keeps the same limits in memory in front of these, so a
flood through one process is refused there without a database round trip.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import Connection, Float, case, cast, delete, func, literal, select, update
from sqlalchemy.dialects import postgresql, sqlite

from server import db
from server.db import Database
from server.limits import Bucket

__all__ = ["DatabaseBuckets", "collect"]

_table = db.rate_limits


def _row(bucket: Bucket) -> str:
    return hashlib.sha256(bucket.key.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _interval(bucket: Bucket) -> float:
    return 1.0 / bucket.rate


def _tolerance(bucket: Bucket) -> float:
    return (bucket.burst - 1) / bucket.rate


class _Refused(Exception):
    def __init__(self, wait: float) -> None:
        self.wait = wait


def _now(connection: Connection, clock: Callable[[], float] | None) -> Any:
    """Return the time a unit of work uses, in Unix seconds: ``clock``'s if given (tests);
    else the database's on PostgreSQL, the process's on SQLite."""
    if clock is not None:
        return literal(clock())
    if connection.dialect.name == "postgresql":
        return cast(func.extract("epoch", func.now()), Float)
    return literal(time.time())


class DatabaseBuckets:
    """Token buckets in ``database``'s rate_limits table (server/limits.py's SharedBuckets).

    ``clock`` (Unix seconds) replaces the database's own, for tests that move time."""

    def __init__(self, database: Database, clock: Callable[[], float] | None = None) -> None:
        self.database = database
        self.clock = clock

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take a token from every bucket, or from none; return 0, or the seconds until every
        one has a token."""

        def work(connection: Connection) -> None:
            now = _now(connection, self.clock)
            for n, bucket in enumerate(buckets):
                if not _take(connection, bucket, now):
                    # Rolled back, with the tokens taken from the buckets before it.
                    waits = [_wait(connection, b, now) for b in buckets[n:]]
                    raise _Refused(max(waits))

        try:
            await self.database.write(work, tells_tabs=False)
        except _Refused as refused:
            return refused.wait
        return 0.0

    async def give(self, buckets: Sequence[Bucket]) -> None:
        """Give back a token taken from each bucket, for what turned out not to count."""

        def work(connection: Connection) -> None:
            for bucket in buckets:
                connection.execute(
                    update(_table)
                    .where(_table.c.key == _row(bucket))
                    .values(tat=_table.c.tat - _interval(bucket))
                )

        await self.database.write(work, tells_tabs=False)


def _take(connection: Connection, bucket: Bucket, now: Any) -> bool:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    fresh = dialect.insert(_table).values(key=_row(bucket), tat=now + _interval(bucket))
    due = case((_table.c.tat > now, _table.c.tat), else_=now)
    taking = fresh.on_conflict_do_update(
        index_elements=[_table.c.key],
        set_={"tat": due + _interval(bucket)},
        where=due - now <= _tolerance(bucket),
    ).returning(_table.c.tat)
    return connection.execute(taking).first() is not None


def _wait(connection: Connection, bucket: Bucket, now: Any) -> float:
    query = select(_table.c.tat - now).where(_table.c.key == _row(bucket))
    ahead = connection.scalar(query)  # how far the bucket's next token is ahead of now
    return 0.0 if ahead is None else max(0.0, float(ahead) - _tolerance(bucket))


async def collect(database: Database, clock: Callable[[], float] | None = None) -> int:
    """Delete the buckets that have refilled (a full bucket is no row); return how many."""

    def work(connection: Connection) -> int:
        now = _now(connection, clock)
        return connection.execute(delete(_table).where(_table.c.tat <= now)).rowcount

    return await database.write(work, tells_tabs=False)
