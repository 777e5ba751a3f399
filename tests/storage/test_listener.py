"""server/storage/backplane.py's Listener on a real PostgreSQL: it reads every change other
processes commit, of the shards it hosts, once each and in commit order; across a lost
connection it reads on from where it was, a long transaction holds back only its own rows,
and it resyncs only when it must.

A real Listener through a relay (tests/support/postgres.py) that a test can take down or
stall; the changes are committed by a Database of the test's, as another process's would be.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from dataclasses import dataclass, field

import asyncpg
import msgspec
import pytest

from server.db import Database
from server.errors import StoreUnavailable
from server.events import SHARDS, Event, StateChanged
from server.protocol import Cause
from server.settings import Settings
from server.storage import backplane, feed
from tests.support.postgres import Relay, fresh_database
from tests.support.processes import wait_until

WITHIN_S = 10.0
WRITER = "writer"  # the origin of the changes the test commits
# A row of shard 1 written by hand, as server/storage/feed.py writes one on PostgreSQL.
INSERT_ROW = (
    "INSERT INTO changes (origin, events, created_at, shard, tx)"
    " VALUES ($1, $2, now(), 1, pg_current_xact_id()::text::bigint)"
)


@dataclass
class Listening:
    listener: backplane.Listener
    database: Database
    relay: Relay
    url: str
    delivered: list[Event] = field(default_factory=list)
    resyncs: int = 0  # completed
    # Run by each resync before it completes (a slow or failing store).
    on_resync: Callable[[], Awaitable[None]] | None = None

    async def commit(self, *events: Event, origin: str = WRITER) -> None:
        """Commit ``events`` as one change, as another process's unit of work would."""
        await self.database.write(lambda c: backplane.stage(c, origin, list(events)))

    async def collect_all(self, horizon: int | None = None) -> int:
        """Collect the feed as a collector with a retention of 0 would: every row old enough
        by ``horizon`` (default: of every transaction ended by now)."""
        collector = Database(Settings(database_url=self.url, feed_retention_s=0.0))
        try:
            return await feed.collect(collector, horizon=horizon)
        finally:
            await collector.dispose()

    async def delivered_all(self, expected: Iterable[Event]) -> None:
        wanted = list(expected)
        await wait_until(
            lambda: len(self.delivered) >= len(wanted), WITHIN_S, f"{len(wanted)} events"
        )
        await asyncio.sleep(0.1)  # room for one too many
        assert self.delivered == wanted


def change(user: int, version: int) -> StateChanged:
    return StateChanged(
        user=user, version=version, active=None, cause=Cause(kind="switch", tab="t", request="r")
    )


@contextlib.asynccontextmanager
async def listening(
    hosted: Iterable[int] = (1,), users: set[int] | None = None, **options: float
) -> AsyncIterator[Listening]:
    """A Listener for ``hosted`` shards (and only ``users``, when given: the set is live) on a
    fresh database, connected through a relay."""
    shards = set(hosted)
    async with fresh_database() as url:
        relay = Relay()
        relayed = await relay.start(url)
        database = Database(Settings(database_url=url))
        await database.prepare_schema(upgrade=True)

        async def resync() -> None:
            if state.on_resync is not None:
                await state.on_resync()
            state.resyncs += 1

        listener = backplane.listener_for(
            relayed, "reader", lambda event: state.delivered.append(event), resync, backoff_s=0.05
        )
        assert listener is not None
        listener.hosted = lambda: shards
        if users is not None:
            listener.users = lambda: users
        for name, value in options.items():
            setattr(listener, name, value)
        state = Listening(listener, database, relay, url)
        task = asyncio.create_task(listener.run_forever())
        try:
            await asyncio.wait_for(listener.connected.wait(), WITHIN_S)
            yield state
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            relay.resume()
            await relay.down()
            await database.dispose()


async def test_every_change_of_a_hosted_shard_arrives_once_in_commit_order() -> None:
    """Changes of two users of the hosted shard arrive in commit order, once each; those of
    another shard, and the listener's own, do not arrive at all; 40 concurrent commits arrive
    once each. The start is the only resync."""
    async with listening(hosted=[1]) as state:
        mine, neighbour, elsewhere = 1, 1 + SHARDS, 2
        expected: list[Event] = []
        for version in range(1, 11):
            await state.commit(change(mine, version), change(elsewhere, version))
            await state.commit(change(neighbour, version))
            await state.commit(change(mine, 100 + version), origin="reader")  # its own
            expected += [change(mine, version), change(neighbour, version)]
        await state.delivered_all(expected)
        concurrent = [change(mine, 1000 + n) for n in range(40)]
        await asyncio.gather(*(state.commit(event) for event in concurrent))
        await wait_until(lambda: len(state.delivered) >= 60, WITHIN_S, "60 events")
        await asyncio.sleep(0.1)
        assert (
            sorted(
                state.delivered[20:], key=lambda e: e.version if isinstance(e, StateChanged) else 0
            )
            == concurrent
        )
        assert state.resyncs == 1 and state.listener.resyncs == 1


async def test_a_lost_connection_reads_on_from_where_it_was() -> None:
    """Changes committed while the listener cannot reach PostgreSQL arrive after it reconnects,
    once each and in order, with no resync."""
    async with listening() as state:
        await state.commit(change(1, 1))
        await state.delivered_all([change(1, 1)])
        await state.relay.down()
        await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the loss")
        missed = [change(1, version) for version in range(2, 22)]
        for event in missed:
            await state.commit(event)
        await asyncio.sleep(0.3)
        await state.relay.up()
        await state.delivered_all([change(1, 1), *missed])
        assert state.listener.reconnects >= 1
        assert state.resyncs == 1  # the start's only


async def test_a_backlog_of_several_pages_arrives_once_in_order() -> None:
    """1,200 rows committed while the listener was away (more than two pages of 500, in two
    transactions) arrive once each, in position order."""
    async with listening() as state:
        await state.relay.down()
        await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the loss")
        backlog = [change(1, version) for version in range(1, 1201)]
        writer = await asyncpg.connect(state.url.replace("+asyncpg", ""))
        try:
            for part in (backlog[:700], backlog[700:]):
                async with writer.transaction():
                    await writer.executemany(
                        INSERT_ROW,
                        [(WRITER, msgspec.json.encode([event]).decode()) for event in part],
                    )
        finally:
            await writer.close()
        await state.relay.up()
        await state.delivered_all(backlog)
        assert state.resyncs == 1


async def test_rows_collected_before_the_listener_read_them_cost_a_resync() -> None:
    """Rows committed while the listener was away and collected before it came back (the
    feed keeps them for feed_retention_s): it cannot read them, so it resyncs, and reads on
    from its return. How long it was away does not matter, only what was collected."""
    async with listening() as state:
        await state.relay.down()
        await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the loss")
        await state.commit(change(1, 1))
        assert await state.collect_all() == 1
        await state.relay.up()
        await wait_until(lambda: state.resyncs == 2, WITHIN_S, "the resync")
        await state.commit(change(1, 2))
        await state.delivered_all([change(1, 2)])


async def test_the_row_of_a_transaction_in_flight_at_the_last_look_is_no_gap_unseen() -> None:
    """A transaction in flight at the listener's last look commits while the listener is
    away, and only its row is collected: the listener resyncs (its row was below the last
    look's xmax, among the transactions then in flight)."""
    async with listening() as state:
        late = await asyncpg.connect(state.url.replace("+asyncpg", ""))
        try:
            transaction = late.transaction()
            await transaction.start()
            await late.execute(INSERT_ROW, WRITER, msgspec.json.encode([change(1, 1)]).decode())
            looks = state.listener.looks
            state.listener.wake()
            await wait_until(lambda: state.listener.looks > looks, WITHIN_S, "a look")
            await state.relay.down()
            await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the loss")
            await transaction.commit()
        finally:
            await late.close()
        assert await state.collect_all() == 1
        await state.relay.up()
        await wait_until(lambda: state.resyncs == 2, WITHIN_S, "the resync")


async def test_a_transaction_left_open_costs_no_resync_and_holds_its_rows_back() -> None:
    """A transaction left open (another app's, an idle session) is in every look's flight
    list: rows committed after it began are not collected while it is open (the horizon is
    below it), so no look ever takes it for a gap."""
    async with listening() as state:
        await state.commit(change(1, 1))
        await state.delivered_all([change(1, 1)])
        idle = await asyncpg.connect(state.url.replace("+asyncpg", ""))
        try:
            transaction = idle.transaction()
            await transaction.start()
            await idle.execute("SELECT pg_current_xact_id()")  # it has an id: in flight
            await state.commit(change(1, 2))
            await state.delivered_all([change(1, 1), change(1, 2)])
            assert await state.collect_all() == 1  # the row from before it began
            for version in (3, 4):
                await state.commit(change(1, version))
            await state.delivered_all([change(1, v) for v in (1, 2, 3, 4)])
            assert state.resyncs == 1
            await transaction.rollback()
        finally:
            await idle.close()


async def test_the_collection_keeps_rows_committed_after_its_horizon() -> None:
    """Given the xmin noted a retention ago, the collection keeps the rows of transactions
    that ended since, however old their created_at: a row is collected only once its
    transaction ended a retention ago."""
    async with listening() as state:
        horizon = await state.database.read(feed._xmin)
        await state.commit(change(1, 1))
        assert await state.collect_all(horizon) == 0
        assert await state.collect_all() == 1


async def test_an_absence_whose_rows_are_still_there_costs_no_resync() -> None:
    """The same absence with a collection that finds nothing old enough: no resync."""
    async with listening() as state:
        await state.relay.down()
        await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the loss")
        await state.commit(change(1, 1))
        assert await feed.collect(state.database) == 0  # kept for 120 s
        await state.relay.up()
        await state.delivered_all([change(1, 1)])
        assert state.resyncs == 1


async def test_a_resync_slower_than_a_look_may_take_completes() -> None:
    """A resync that takes longer than look_timeout_s is not cut short (it reads every user
    with tabs here, which can take long); the listener serves once it is done."""

    async def slow() -> None:
        await asyncio.sleep(1.5)

    async with listening(look_timeout_s=0.5) as state:
        state.on_resync = slow
        await state.relay.down()
        await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the loss")
        await state.commit(change(1, 1))
        assert await state.collect_all() == 1
        await state.relay.up()
        await wait_until(lambda: state.resyncs == 2, WITHIN_S, "the slow resync")
        await wait_until(state.listener.connected.is_set, WITHIN_S, "serving again")
        await state.commit(change(1, 2))
        await state.delivered_all([change(1, 2)])


async def test_a_resync_that_fails_is_tried_again() -> None:
    """A row no hub can read asks for a resync; the store fails it once; it is tried again
    (after a reconnection) until it succeeds, and later rows still arrive."""
    failures = [StoreUnavailable("the store is down")]

    async def flaky() -> None:
        if failures:
            raise failures.pop()

    async with listening() as state:
        state.on_resync = flaky
        bad = await asyncpg.connect(state.url.replace("+asyncpg", ""))
        try:
            await bad.execute(
                "INSERT INTO changes (origin, events, created_at, shard, tx)"
                ' VALUES ($1, \'[{"type": "from-a-newer-hub"}]\', now(), 1,'
                " pg_current_xact_id()::text::bigint)",
                WRITER,
            )
            await bad.execute("SELECT pg_notify($1, $2)", backplane.channel(1), WRITER)
        finally:
            await bad.close()
        await wait_until(lambda: state.resyncs == 2, WITHIN_S, "the second resync")
        assert not failures
        await state.commit(change(1, 1))
        await state.delivered_all([change(1, 1)])


async def test_a_delivery_that_raises_costs_a_resync_not_the_listener() -> None:
    """An event whose delivery raises (a bug) is logged and answered with a resync; the
    events after it arrive, once each, with no reconnection."""
    async with listening() as state:
        delivered = state.delivered

        def deliver(event: Event) -> None:
            if isinstance(event, StateChanged) and event.version == 2:
                raise RuntimeError("a bug in the hub")
            delivered.append(event)

        state.listener.deliver = deliver
        for version in (1, 2, 3):
            await state.commit(change(1, version))
        await state.delivered_all([change(1, 1), change(1, 3)])
        await wait_until(lambda: state.resyncs == 2, WITHIN_S, "the resync")
        assert state.listener.reconnects == 0


async def test_a_connection_that_stalls_silently_is_found_and_replaced() -> None:
    """Nothing wakes a listener whose connection stalls (the wake-ups would come through it):
    its look every look_every_s times out, it reconnects once the database answers again,
    and what was committed meanwhile arrives."""
    async with listening(look_every_s=0.3, look_timeout_s=0.5) as state:
        state.relay.stall()
        await state.commit(change(1, 1))  # directly, not through the relay
        await wait_until(lambda: not state.listener.connected.is_set(), WITHIN_S, "the give-up")
        state.relay.resume()
        await state.delivered_all([change(1, 1)])
        assert state.listener.reconnects >= 1 and state.resyncs == 1


def test_the_backoff_stays_bounded_after_any_number_of_failures() -> None:
    """Thousands of failed connections in a row (a long outage) wait at most backoff_max_s."""
    listener = backplane.Listener("postgresql://x", "o", lambda _: None, lambda: asyncio.sleep(0))
    assert all(0 <= listener._backoff(n) <= listener.backoff_max_s for n in (0, 1, 20, 5000))


async def test_a_long_transaction_holds_back_only_its_own_change() -> None:
    """A transaction that appended to the feed and stays open does not delay the changes
    committed after it; its own arrives when it commits, though its position is lower."""
    async with listening() as state:
        long = await asyncpg.connect(state.url.replace("+asyncpg", ""))
        try:
            transaction = long.transaction()
            await transaction.start()
            early = change(1, 1)
            await long.execute(
                INSERT_ROW,
                WRITER,
                msgspec.json.encode([early]).decode(),
            )
            await state.commit(change(1, 2))
            await state.delivered_all([change(1, 2)])
            await long.execute("SELECT pg_notify($1, $2)", backplane.channel(1), WRITER)
            await transaction.commit()
            await state.delivered_all([change(1, 2), early])
            positions = await long.fetch("SELECT position FROM changes ORDER BY tx")
            assert positions[0]["position"] < positions[1]["position"]
        finally:
            await long.close()


@pytest.mark.parametrize("shards", [[], [3]])
async def test_a_shard_hosted_later_is_read_from_its_first_look(shards: list[int]) -> None:
    """A shard that gains its first tab after the start is LISTENed to and read from then on;
    what was committed before belongs to that tab's state read, and is not delivered."""
    async with listening(hosted=shards) as state:
        await state.commit(change(7, 1))
        state.listener.wake()  # a look passes over it: shard 7 is not hosted yet
        await wait_until(lambda: state.listener.looks >= 2, WITHIN_S, "a look")
        state.listener.hosted = lambda: {*shards, 7}
        state.listener.wake()
        await wait_until(lambda: state.listener.looks >= 3, WITHIN_S, "a look")
        await state.commit(change(7, 2))
        await state.delivered_all([change(7, 2)])


async def test_a_wake_up_naming_only_other_users_is_passed_over() -> None:
    """Users 1 and 1 + SHARDS share shard 1; only user 1 has tabs here. The other's changes
    wake the listener by name and are passed over without a look; when user 1 changes, the
    look decodes only user 1's row (the other's five, committed before, are left out)."""
    neighbour = 1 + SHARDS
    async with listening(hosted=[1], users={1}) as state:
        looks = state.listener.looks
        for version in range(1, 6):
            await state.commit(change(neighbour, version))
        await wait_until(lambda: state.listener.passed == 5, WITHIN_S, "5 wake-ups passed over")
        assert state.listener.looks == looks and state.delivered == []
        await state.commit(change(1, 1))
        await state.delivered_all([change(1, 1)])
        assert state.listener.looks == looks + 1 and state.listener.skipped == 5


async def test_a_wake_up_naming_a_hosted_user_brings_a_look_at_once() -> None:
    """With the periodic look an hour away, a change naming a hosted user (beside another)
    is delivered on its wake-up: the row lists user 1, so it is decoded whole."""
    async with listening(hosted=[1], users={1}, look_every_s=3600.0) as state:
        await state.commit(change(1 + SHARDS, 1), change(1, 1))
        await state.delivered_all([change(1 + SHARDS, 1), change(1, 1)])


async def test_a_wake_up_names_its_users_up_to_the_limit_and_past_it_wakes_every_reader() -> None:
    """A change of HINT_USERS users of shard 1, none hosted, is passed over; one of a user
    more names none, so it wakes the listener, whose look decodes no row (none is of its
    users). A row that lists no users (an older hub's) is decoded by every reader."""
    others = [1 + SHARDS * n for n in range(2, 3 + backplane.HINT_USERS)]
    async with listening(hosted=[1], users={1}) as state:
        await state.commit(*(change(user, 1) for user in others[:-1]))
        await wait_until(lambda: state.listener.passed == 1, WITHIN_S, "a wake-up passed over")
        await state.commit(*(change(user, 2) for user in others))
        await wait_until(lambda: state.listener.skipped == 2, WITHIN_S, "a look")
        assert state.delivered == []
        neighbour = 1 + SHARDS
        older = await asyncpg.connect(state.url.replace("+asyncpg", ""))
        try:  # no users listed, and no wake-up
            await older.execute(
                INSERT_ROW, WRITER, msgspec.json.encode([change(neighbour, 7)]).decode()
            )
        finally:
            await older.close()
        state.listener.wake()
        await state.delivered_all([change(neighbour, 7)])
        assert state.listener.passed == 1


async def test_a_user_who_joins_while_a_look_is_in_flight_gets_its_rows() -> None:
    """A look passes over the rows of users with no tabs here; a user who gets a first tab
    while a look is in flight, before its snapshot, may have rows the look then sees and its
    state read did not: they are delivered (rows are sorted out as they are delivered, not
    when the look is sent)."""
    neighbour = 1 + SHARDS
    users = {1}
    async with listening(hosted=[1], users=users) as state:
        await state.commit(change(neighbour, 1))
        await wait_until(lambda: state.listener.passed == 1, WITHIN_S, "a wake-up passed over")
        state.relay.stall()
        try:
            looks = state.listener.looks
            state.listener.wake()
            await asyncio.sleep(0.3)  # the look is sent, and held by the relay
            assert state.listener.looks == looks
            users.add(neighbour)
        finally:
            state.relay.resume()
        await state.delivered_all([change(neighbour, 1)])
