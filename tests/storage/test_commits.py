"""Group commit: concurrent switches share transactions and decide exactly as one at a time.

On SQLite and on PostgreSQL (where the batch's reads lock the users' rows FOR UPDATE), except
the test of SQLite's own write lock.
"""

from __future__ import annotations

import asyncio
import functools
import sqlite3
from collections.abc import Sequence
from pathlib import Path

import pytest
from sqlalchemy import Connection, func, select

from server import db
from server.db import Database
from server.errors import StoreUnavailable
from server.protocol import RejectReason, Switch
from server.rules import Accepted, Refused
from server.storage.commits import GroupCommit
from server.storage.switches import SqlStore
from tests.conftest import MakeSettings, make_settings
from tests.support.population import Population, populate


async def open_store(
    make: MakeSettings, users: int, **overrides: object
) -> tuple[SqlStore, Population]:
    settings = make(**overrides)
    population = await populate(settings, users)
    return SqlStore(Database(settings)), population


async def close(store: SqlStore) -> None:
    await store.close()
    assert store.database.checked_out() == 0
    await store.database.dispose()


async def log_rows(store: SqlStore) -> list[tuple[int, str, bool, str | None, int]]:
    log = db.switch_log
    query = select(
        log.c.user_id, log.c.request_id, log.c.accepted, log.c.reason, log.c.version
    ).order_by(log.c.user_id, log.c.request_id)

    def work(connection: Connection) -> list[tuple[int, str, bool, str | None, int]]:
        return [
            (row.user_id, row.request_id, row.accepted, row.reason, row.version)
            for row in connection.execute(query)
        ]

    return await store.database.read(work)


async def test_many_users_share_transactions_and_each_gets_its_own_version(
    make_on_each_engine: MakeSettings,
) -> None:
    """Concurrent switches of 60 users commit in fewer transactions than switches, all correct."""
    store, population = await open_store(make_on_each_engine, 60)
    try:
        for round_ in range(3):
            outcomes = await asyncio.gather(
                *(
                    store.switch(
                        user,
                        population.sessions[user],
                        Switch(id=f"r{round_}-u{user}", platform=ids[1 + round_ % 2], base=round_),
                        None,
                    )
                    for user, ids in population.platforms.items()
                )
            )
            for decision, ids in zip(outcomes, population.platforms.values(), strict=True):
                assert isinstance(decision, Accepted) and decision.changed, decision
                assert decision.version == round_ + 1
                assert decision.state.active == ids[1 + round_ % 2]
        assert store.commits.requests == 180
        assert store.commits.batches < 180
        assert store.commits.largest > 1
        for user, ids in population.platforms.items():
            state = await store.load_state(user)
            assert (state.version, state.active) == (3, ids[1])
    finally:
        await close(store)


@pytest.mark.parametrize("max_batch", [1, 256])
async def test_same_base_in_one_batch_has_exactly_one_winner(
    make_on_each_engine: MakeSettings, max_batch: int
) -> None:
    """Ten switches of one user from the same base: one accepted, nine stale with its state."""
    store, population = await open_store(make_on_each_engine, 1, commit_batch_max=max_batch)
    user, ids = next(iter(population.platforms.items()))
    try:
        outcomes = await asyncio.gather(
            *(
                store.switch(
                    user,
                    population.sessions[user],
                    Switch(id=f"s{n}", platform=ids[1 + n % 2], base=0),
                    f"tab{n}",
                )
                for n in range(10)
            )
        )
        winners = [o for o in outcomes if isinstance(o, Accepted)]
        assert len(winners) == 1 and winners[0].version == 1
        losers = [o for o in outcomes if isinstance(o, Refused)]
        assert len(losers) == 9 and {o.reason for o in losers} == {RejectReason.STALE}
        assert all(o.state == winners[0].state for o in losers)
        rows = await log_rows(store)
        assert sorted(r[2] for r in rows) == [False] * 9 + [True]
        assert (await store.load_state(user)).version == 1
    finally:
        await close(store)


async def test_a_retry_inside_the_same_batch_gets_the_first_decision(
    make_on_each_engine: MakeSettings,
) -> None:
    """The same request id twice in one batch: one decision, one log row, one version."""
    store, population = await open_store(make_on_each_engine, 1)
    user, ids = next(iter(population.platforms.items()))
    request = Switch(id="once", platform=ids[1], base=0)
    try:
        first, second = await asyncio.gather(
            store.switch(user, population.sessions[user], request, "a"),
            store.switch(user, population.sessions[user], request, "a"),
        )
        assert store.commits.largest == 2
        assert isinstance(first, Accepted) and isinstance(second, Accepted)
        assert (first.version, first.changed) == (1, True)
        assert (second.version, second.changed, second.record) == (1, False, False)
        assert await log_rows(store) == [(user, "once", True, None, 1)]
    finally:
        await close(store)


async def test_a_batch_that_cannot_lock_the_database_applies_nothing_and_recovers(
    tmp_path: Path,
) -> None:
    """With the write lock held elsewhere, the whole batch is unavailable; then all pass."""
    make = functools.partial(make_settings, tmp_path)  # SQLite's own lock, so SQLite only
    store, population = await open_store(make, 5, sqlite_busy_timeout_ms=100)
    path = store.database.settings.database_url.split("///", 1)[1]
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    requests = [
        (user, Switch(id=f"x{user}", platform=ids[1], base=0))
        for user, ids in population.platforms.items()
    ]
    try:
        outcomes = await asyncio.gather(
            *(store.switch(u, population.sessions[u], r, None) for u, r in requests),
            return_exceptions=True,
        )
        assert all(isinstance(o, StoreUnavailable) for o in outcomes), outcomes
        other.rollback()
        assert await log_rows(store) == []
        retried = await asyncio.gather(
            *(store.switch(u, population.sessions[u], r, None) for u, r in requests)
        )
        assert all(isinstance(o, Accepted) and o.version == 1 for o in retried), retried
    finally:
        other.close()
        await close(store)


async def test_a_request_that_raises_fails_alone() -> None:
    """When deciding a batch raises, each request is retried alone, so only the culprit fails."""
    calls: list[list[int]] = []

    async def decide(batch: Sequence[int]) -> list[int]:
        calls.append(list(batch))
        if 13 in batch:
            raise ValueError("unlucky")
        return [n * 2 for n in batch]

    commits: GroupCommit[int, int] = GroupCommit(decide, max_batch=100)
    results = await asyncio.gather(
        *(commits.submit(n) for n in (11, 12, 13, 14)), return_exceptions=True
    )
    await commits.close()
    assert results[:2] == [22, 24] and results[3] == 28
    assert isinstance(results[2], ValueError)
    assert calls[0] == [11, 12, 13, 14] and [13] in calls[1:]
    with pytest.raises(StoreUnavailable):
        await commits.submit(1)


async def test_one_failing_request_costs_its_batch_halvings_not_a_transaction_each() -> None:
    """A batch of 256 with one culprit is retried in halves: the culprit fails alone, every
    other request succeeds, in at most 2 log2(256) + 1 = 17 attempts (one at a time: 257)."""
    calls: list[list[int]] = []
    release = asyncio.Event()

    async def decide(batch: Sequence[int]) -> list[int]:
        if batch[0] == -1:
            await release.wait()  # holds the committer while the real batch queues
        calls.append(list(batch))
        if 100 in batch:
            raise ValueError("poisoned")
        return [n * 2 for n in batch]

    commits: GroupCommit[int, int] = GroupCommit(decide, max_batch=256)
    blocker = asyncio.ensure_future(commits.submit(-1))
    await asyncio.sleep(0)
    waiting = [asyncio.ensure_future(commits.submit(n)) for n in range(256)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*waiting, return_exceptions=True)
    await blocker
    await commits.close()
    assert isinstance(results[100], ValueError)
    assert [r for n, r in enumerate(results) if n != 100] == [n * 2 for n in range(256) if n != 100]
    attempts = [c for c in calls if c != [-1]]
    assert attempts[0] == list(range(256)) and [100] in attempts
    assert len(attempts) <= 17, len(attempts)


async def test_switch_log_count_matches_decisions(make_on_each_engine: MakeSettings) -> None:
    """Every decision of a mixed batch (accepted, stale, unknown platform) writes one log row."""
    store, population = await open_store(make_on_each_engine, 2)
    (u1, ids1), (u2, _) = population.platforms.items()
    try:
        outcomes = await asyncio.gather(
            store.switch(
                u1, population.sessions[u1], Switch(id="a", platform=ids1[1], base=0), None
            ),
            store.switch(
                u1, population.sessions[u1], Switch(id="b", platform=ids1[2], base=0), None
            ),
            store.switch(
                u2, population.sessions[u2], Switch(id="c", platform=ids1[1], base=0), None
            ),
        )
        assert [type(o) for o in outcomes] == [Accepted, Refused, Refused]
        assert [getattr(o, "reason", None) for o in outcomes] == [
            None,
            RejectReason.STALE,
            RejectReason.UNKNOWN_PLATFORM,
        ]

        def count(connection: Connection) -> int:
            return int(connection.scalar(select(func.count()).select_from(db.switch_log)) or 0)

        assert await store.database.read(count) == 3
    finally:
        await close(store)
