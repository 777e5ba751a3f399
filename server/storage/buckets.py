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
Keys are hashed (a user name or an address can be long or odd), so a row is small whatever
the client sent. server/limits.py keeps the same limits in memory in front of these, so a
flood through one process is refused there without a database round trip.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from sqlalchemy import Connection, case, delete, select, update
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


class DatabaseBuckets:
    """Token buckets in ``database``'s rate_limits table (server/limits.py's SharedBuckets)."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def take(self, buckets: Sequence[Bucket]) -> float:
        """Take a token from every bucket, or from none; return 0, or the seconds until every
        one has a token."""
        now = self.database.clock().timestamp()

        def work(connection: Connection) -> None:
            for n, bucket in enumerate(buckets):
                if not _take(connection, bucket, now):
                    # Rolled back, with the tokens taken from the buckets before it.
                    waits = [_wait(connection, b, now) for b in buckets[n:]]
                    raise _Refused(max(waits))

        try:
            await self.database.write(work)
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

        await self.database.write(work)


def _take(connection: Connection, bucket: Bucket, now: float) -> bool:
    dialect = postgresql if connection.dialect.name == "postgresql" else sqlite
    fresh = dialect.insert(_table).values(key=_row(bucket), tat=now + _interval(bucket))
    due = case((_table.c.tat > now, _table.c.tat), else_=now)
    taking = fresh.on_conflict_do_update(
        index_elements=[_table.c.key],
        set_={"tat": due + _interval(bucket)},
        where=due - now <= _tolerance(bucket),
    ).returning(_table.c.tat)
    return connection.execute(taking).first() is not None


def _wait(connection: Connection, bucket: Bucket, now: float) -> float:
    tat = connection.scalar(select(_table.c.tat).where(_table.c.key == _row(bucket)))
    return 0.0 if tat is None else max(0.0, tat - _tolerance(bucket) - now)


async def collect(database: Database) -> int:
    """Delete the buckets that have refilled (a full bucket is no row); return how many."""
    now = database.clock().timestamp()
    return await database.write(
        lambda connection: connection.execute(delete(_table).where(_table.c.tat <= now)).rowcount
    )
