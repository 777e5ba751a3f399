"""server/storage/feed.py: every committed change appends its events to the change feed, and
on SQLite a serving hub reads what another process appended (the command line, a script) and
tells its tabs.

Real hubs and real tabs. "Another process" is a second Database on the same file, with an
origin of its own, as the command line opens one.
"""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path

import msgspec
import pytest
from sqlalchemy import Connection, func, insert, select

from server import db
from server.api import PlatformCreate
from server.db import Database
from server.events import DevicesChanged, Event, HoldChanged, SessionsEnded, StateChanged
from server.protocol import SessionEndReason
from server.storage import feed, holds, platforms, sessions
from server.storage.users import seed_demo, user_id_of
from tests.conftest import MakeSettings, RunningHub, make_settings, serve
from tests.support.processes import wait_until

NEW = PlatformCreate(
    name="Fed", kind="mastodon", instance_url="https://fed.example", username="alice"
)


async def rows(database: Database) -> list[tuple[str, list[Event]]]:
    def work(connection: Connection) -> list[tuple[str, list[Event]]]:
        found = connection.execute(
            select(db.changes.c.origin, db.changes.c.events).order_by(db.changes.c.position)
        )
        return [(r.origin, msgspec.json.decode(r.events, type=list[Event])) for r in found]

    return await database.read(work)


async def test_every_kind_of_change_appends_one_row_in_its_transaction(
    make_on_each_engine: MakeSettings,
) -> None:
    """A sign-in, a switch, a platform change, a hold and its release, and a logout each
    append one row with their events and the committing process's origin; a refused change
    appends none."""
    async with serve(make_on_each_engine()) as running:
        database = running.database
        alice = await user_id_of(database, "alice")
        assert alice is not None
        token = await running.login("alice")
        tab = await running.tab(token, "t")
        target = tab.hello["state"]["platforms"][1]["id"]
        await tab.send({"type": "switch", "id": "r1", "platform": target, "base": tab.version})
        await tab.receive_type("switched")
        await platforms.add(database, alice, NEW)
        with pytest.raises(Exception):  # noqa: B017 (any refusal: the name is taken)
            await platforms.add(database, alice, NEW)
        await holds.place(database, alice, "captions", 30)
        await holds.release(database, alice)
        async with running.http(token) as page:
            assert (await page.post("/api/logout")).status_code == 200
        written = await rows(database)
    assert {origin for origin, _ in written} == {database.origin}
    kinds = [[type(event) for event in events] for _, events in written]
    # The sign-in's row comes first; on PostgreSQL the tab counts (server/storage/presence.py)
    # append rows of their own as the tab comes and goes, at their own pace.
    assert kinds[0] == [DevicesChanged]
    kinds = [kind for kind in kinds if kind != [DevicesChanged]]
    assert kinds == [[StateChanged], [StateChanged], [HoldChanged], [HoldChanged], [SessionsEnded]]
    written = [row for row in written if not isinstance(row[1][0], DevicesChanged)]
    switched, added = written[0][1][0], written[1][1][0]
    assert isinstance(switched, StateChanged) and switched.cause.request == "r1"
    assert isinstance(added, StateChanged) and added.cause.kind == "platforms"


@pytest.fixture
async def sqlite_hub(tmp_path: Path) -> AsyncIterator[tuple[RunningHub, Database]]:
    """A serving hub on a SQLite file, and another Database on the same file."""
    settings = make_settings(tmp_path, feed_poll_s=0.05)
    async with serve(settings) as running:
        other = Database(settings)
        try:
            yield running, other
        finally:
            await other.dispose()


async def test_changes_from_another_process_on_the_file_reach_the_tabs(
    sqlite_hub: tuple[RunningHub, Database],
) -> None:
    """A platform change, a hold and its release, and a revocation made through another
    Database on the same SQLite file reach the serving hub's tabs, as a page's own would."""
    running, other = sqlite_hub
    assert other.origin != running.database.origin
    alice = await user_id_of(other, "alice")
    assert alice is not None
    tab = await running.tab(await running.login("alice"), "t")
    version = tab.version
    await platforms.add(other, alice, NEW)
    state = (await tab.receive_type("state"))["state"]
    assert state["version"] == version + 1 and "Fed" in [p["name"] for p in state["platforms"]]
    await holds.place(other, alice, "from a script", 30)
    assert (await tab.receive_type("hold"))["hold"]["reason"] == "from a script"
    await holds.release(other, alice)
    assert (await tab.receive_type("hold"))["hold"] is None
    ended = await sessions.revoke_all(other, alice, SessionEndReason.REVOKED)
    assert len(ended) == 1
    code, _ = await tab.closed()
    assert code == 4001


async def test_a_reader_that_fell_behind_the_retention_resyncs(tmp_path: Path) -> None:
    """Rows another process appended are collected before the serving hub reads them: it
    notices the gap and resyncs, so its tab still gets the new state."""
    settings = make_settings(tmp_path, feed_poll_s=3600.0)  # it reads once, at start
    async with serve(settings) as running:
        tab = await running.tab(await running.login("alice"), "t")
        version = tab.version
        other = Database(dataclasses.replace(settings, feed_retention_s=0))
        try:
            alice = await user_id_of(other, "alice")
            assert alice is not None
            await platforms.add(other, alice, NEW)
            await asyncio.sleep(0.01)
            assert await feed.collect(other) >= 1
            reader: feed.Reader = running.app.state.feed_reader
            await reader.step()  # nothing to read: it resyncs
            assert reader.delivered == 0
            state = (await tab.receive_type("state"))["state"]
            assert state["version"] == version + 1
        finally:
            await other.dispose()


async def test_a_row_the_reader_cannot_read_costs_a_resync_not_the_reader(
    sqlite_hub: tuple[RunningHub, Database],
) -> None:
    """A row of an event this hub does not know (a newer hub's command line on the same file)
    is logged and answered with a resync; the reader goes on, and the next change arrives.
    Reopened after a failure, it goes on from where it was, not from the feed's end."""
    running, other = sqlite_hub
    alice = await user_id_of(other, "alice")
    assert alice is not None
    tab = await running.tab(await running.login("alice"), "t")
    reader: feed.Reader = running.app.state.feed_reader
    # Its first look: where it is depends on whether the login's row committed before it
    # (the test asserted an empty feed, and failed when it had not).
    await wait_until(lambda: reader.position is not None, 5, "the first look")
    reader._close()  # as after a failed look: the next one reopens the file
    await holds.place(other, alice, "after a reopen", 30)
    assert (await tab.receive_type("hold"))["hold"]["reason"] == "after a reopen"

    def intrude(connection: Connection) -> None:
        connection.execute(
            insert(db.changes).values(
                origin="a newer hub",
                events='[{"type": "newkind", "user": 1}]',
                created_at=dt.datetime.now(dt.UTC),
            )
        )

    await other.write(intrude)
    await platforms.add(other, alice, NEW)
    state = (await tab.receive_type("state"))["state"]
    assert "Fed" in [p["name"] for p in state["platforms"]]
    assert reader.resyncs >= 1


async def test_collection_deletes_old_rows_in_chunks_and_nothing_newer(tmp_path: Path) -> None:
    """Rows past the retention go, several write transactions' worth; newer rows stay."""
    settings = make_settings(tmp_path, feed_retention_s=60)
    database = Database(settings)
    try:
        await database.create_schema()
        old = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=120)
        new = dt.datetime.now(dt.UTC)

        def fill(connection: Connection) -> None:
            rows = [{"origin": "o", "events": "[]", "created_at": old}] * 4500
            rows += [{"origin": "o", "events": "[]", "created_at": new}] * 3
            connection.execute(insert(db.changes), rows)

        await database.write(fill)
        assert await feed.collect(database) == 4500
        left = await database.read(
            lambda c: c.execute(select(func.count()).select_from(db.changes)).scalar_one()
        )
        assert left == 3
        assert await feed.collect(database) == 0
    finally:
        await database.dispose()


async def test_a_reader_stopped_mid_read_closes_its_connection_after_the_read(
    tmp_path: Path,
) -> None:
    """A reader cancelled while its thread reads (a shutdown) closes its SQLite connection
    only once that read is done, on the same thread. Closing it under the read crashed the
    test run with a segmentation fault; here 300 readers are stopped at random moments while
    another connection keeps committing, so reads are always under way."""
    settings = make_settings(tmp_path)
    writer = Database(settings)
    await writer.create_schema()
    await seed_demo(writer)
    alice = await user_id_of(writer, "alice")
    assert alice is not None
    stop = asyncio.Event()

    async def keep_writing() -> None:
        while not stop.is_set():
            await holds.place(writer, alice, "busy", 30)
            await holds.release(writer, alice)

    writing = asyncio.create_task(keep_writing())
    delivered = 0
    try:
        for n in range(300):

            async def resync() -> None:
                return None

            reader = feed.Reader(
                str(tmp_path / "hub.db"), "reader", lambda _: None, resync, poll_s=0.0
            )
            task = asyncio.create_task(reader.run_forever())
            await asyncio.sleep(0.001 * (n % 7))
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            assert reader._connection is None
            delivered += reader.delivered
    finally:
        stop.set()
        await writing
        await writer.dispose()
    assert delivered > 0  # the readers were reading
