"""server/storage/buckets.py: token buckets in the database, one budget for every process.

On a fresh SQLite file and a fresh PostgreSQL database each; time is the Database's clock,
set by the test, so no test waits for a bucket to refill.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import Connection, func, select

from server import db
from server.db import Database
from server.limits import Bucket
from server.storage import buckets
from server.storage.buckets import DatabaseBuckets
from tests.conftest import MakeSettings

START = dt.datetime(2026, 12, 6, 12, 0, tzinfo=dt.UTC)


class Clock:
    def __init__(self) -> None:
        self.now = START

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += dt.timedelta(seconds=seconds)


@pytest.fixture
async def shared(make_on_each_engine: MakeSettings) -> AsyncIterator[tuple[DatabaseBuckets, Clock]]:
    clock = Clock()
    database = Database(make_on_each_engine())
    try:
        await database.create_schema()
        yield DatabaseBuckets(database, clock=lambda: clock.now.timestamp()), clock
    finally:
        await database.dispose()


async def test_a_bucket_gives_its_burst_then_one_token_per_interval(
    shared: tuple[DatabaseBuckets, Clock],
) -> None:
    """Burst 3 at 2 a second: three takes, then a refusal that names the wait (0.5 s); half
    a second later one more, and a refusal again."""
    store, clock = shared
    bucket = Bucket("login-name:alice", rate=2.0, burst=3)
    assert [await store.take([bucket]) for _ in range(3)] == [0.0, 0.0, 0.0]
    assert await store.take([bucket]) == pytest.approx(0.5)
    clock.advance(0.25)
    assert await store.take([bucket]) == pytest.approx(0.25)
    clock.advance(0.25)
    assert await store.take([bucket]) == 0.0
    assert await store.take([bucket]) == pytest.approx(0.5)


async def test_a_refusal_of_one_bucket_takes_from_none(
    shared: tuple[DatabaseBuckets, Clock],
) -> None:
    """Two buckets taken together: when the second is empty, the first keeps its token."""
    store, _ = shared
    name = Bucket("login-name:alice", rate=1.0, burst=2)
    address = Bucket("login-address:203.0.113.9", rate=1.0, burst=1)
    assert await store.take([name, address]) == 0.0
    assert await store.take([name, address]) == pytest.approx(1.0)
    assert await store.take([name]) == 0.0  # its second token was not taken by the refusal
    assert await store.take([name]) == pytest.approx(1.0)


async def test_a_refund_gives_a_token_back(shared: tuple[DatabaseBuckets, Clock]) -> None:
    """What a successful login was charged comes back; other keys are not touched."""
    store, _ = shared
    bucket, other = Bucket("a", rate=1.0, burst=1), Bucket("b", rate=1.0, burst=1)
    assert await store.take([bucket]) == 0.0 and await store.take([other]) == 0.0
    await store.give([bucket])
    assert await store.take([bucket]) == 0.0
    assert await store.take([other]) == pytest.approx(1.0)


async def test_concurrent_takes_meet_one_budget(shared: tuple[DatabaseBuckets, Clock]) -> None:
    """60 takes at once from one bucket of burst 10 (through 60 units of work, as many
    processes' would be): exactly 10 are given a token."""
    store, _ = shared
    bucket = Bucket("switch:1", rate=0.001, burst=10)
    waits = await asyncio.gather(*(store.take([bucket]) for _ in range(60)))
    assert sum(1 for wait in waits if wait == 0.0) == 10


@pytest.mark.parametrize(
    "key", ["x" * 10_000, "nul\x00byte", "\U0001f600 odd \u202e unicode", "lone \udc80 surrogate"]
)
async def test_any_key_is_a_small_row(shared: tuple[DatabaseBuckets, Clock], key: str) -> None:
    """A key of any length or content (a user name, an address) is stored hashed."""
    store, _ = shared
    bucket = Bucket(key, rate=1.0, burst=1)
    assert await store.take([bucket]) == 0.0
    assert await store.take([bucket]) == pytest.approx(1.0)


async def test_collection_deletes_the_buckets_that_refilled(
    shared: tuple[DatabaseBuckets, Clock],
) -> None:
    """A bucket whose tokens are all back is no different from no row: collected; one still
    refilling is kept, and keeps its count."""
    store, clock = shared
    quick, slow = Bucket("quick", rate=10.0, burst=1), Bucket("slow", rate=0.01, burst=1)
    await store.take([quick])
    await store.take([slow])
    clock.advance(1.0)
    assert await buckets.collect(store.database, store.clock) == 1

    def rows(connection: Connection) -> int:
        return connection.scalar(select(func.count()).select_from(db.rate_limits)) or 0

    assert await store.database.read(rows) == 1
    assert await store.take([slow]) > 0


async def test_the_processes_clocks_never_enter_a_bucket(
    make_on_each_engine: MakeSettings,
) -> None:
    """Two processes (Databases) whose clocks are ten minutes apart share one budget: the
    buckets run on the database's clock (PostgreSQL), or on the one serving process's
    (SQLite), never on a clock a process was given."""
    settings = make_on_each_engine()
    ahead = Database(settings, clock=lambda: dt.datetime.now(dt.UTC) + dt.timedelta(minutes=10))
    behind = Database(settings, clock=lambda: dt.datetime.now(dt.UTC) - dt.timedelta(minutes=10))
    try:
        await ahead.create_schema()
        bucket = Bucket("login-name:alice", rate=0.01, burst=5)
        stores = [DatabaseBuckets(ahead), DatabaseBuckets(behind)]
        waits = [await stores[n % 2].take([bucket]) for n in range(10)]
        assert [wait == 0.0 for wait in waits] == [True] * 5 + [False] * 5
        assert all(90 < wait <= 100 for wait in waits[5:])
        assert await buckets.collect(ahead) == 0  # nothing refilled, whoever collects
    finally:
        await ahead.dispose()
        await behind.dispose()
