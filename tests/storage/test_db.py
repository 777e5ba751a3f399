"""The database layer: SQLite pragmas, pool hygiene under cancellation, and faults."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import ColumnElement, Connection, event, func, select, text, update
from sqlalchemy.pool import Pool

from server import db
from server.db import Database
from server.errors import StoreUnavailable
from server.protocol import Switch
from server.storage import sessions
from server.storage.switches import SqlStore
from server.storage.users import seed_demo
from tests.conftest import (
    MakeSettings,
    RunningHub,
    make_settings,
    other_platform,
    serve,
    session_ended,
)
from tests.support.population import seed_demo_file
from tests.support.processes import HubProcess


def stored_version(connection: Connection, user_id: int = 1) -> int:
    states = db.platform_states
    version = connection.scalar(select(states.c.version).where(states.c.user_id == user_id))
    assert version is not None
    return int(version)


def logged(connection: Connection, *where: ColumnElement[bool]) -> int:
    """How many decisions the switch log holds (those matching ``where``)."""
    return int(
        connection.scalar(select(func.count()).select_from(db.switch_log).where(*where)) or 0
    )


async def test_every_pooled_connection_gets_wal_busy_timeout_and_foreign_keys(
    tmp_path: Path,
) -> None:
    """Each connection of the pool runs with WAL, the busy timeout, foreign keys and synchronous."""
    database = Database(
        make_settings(tmp_path, sqlite_busy_timeout_ms=1234, sqlite_synchronous="FULL")
    )
    await database.create_schema()
    release = threading.Event()

    def pragmas(connection: Connection) -> tuple[Any, ...]:
        values = []
        for name in ("journal_mode", "busy_timeout", "foreign_keys", "synchronous"):
            values.append(connection.execute(text(f"PRAGMA {name}")).scalar())
        release.wait(timeout=10)
        return tuple(values)

    # Hold three connections at once (both readers and the writer), so the pool opens three.
    units = (database.read, database.read, database.write)
    tasks = [asyncio.create_task(unit(pragmas)) for unit in units]
    await asyncio.sleep(0.2)
    assert database.checked_out() == 3
    release.set()
    assert await asyncio.gather(*tasks) == [("wal", 1234, 1, 2)] * 3
    assert database.checked_out() == 0
    await database.dispose()


async def test_cancelled_switch_leaks_no_connection_and_half_applies_nothing(
    tmp_path: Path,
) -> None:
    """Cancelling callers mid-switch leaves no connection checked out and no partial state."""
    database = Database(make_settings(tmp_path))
    await database.create_schema()
    await seed_demo(database)
    store = SqlStore(database)

    _, login = await sessions.open_session(database, 1)
    session_id = login.id
    for attempt in range(20):
        state = await store.load_state(1)
        request = Switch(id=f"c{attempt}", platform=other_platform_of(state), base=state.version)
        task = asyncio.create_task(store.switch(1, session_id, request, "t"))
        await asyncio.sleep(attempt * 0.0005)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    await asyncio.sleep(0.3)
    assert database.checked_out() == 0

    def consistent(connection: Connection) -> tuple[int, int]:
        return stored_version(connection), logged(connection, db.switch_log.c.accepted)

    version, accepted = await database.read(consistent)
    # Every switch that committed moved the version by one, and only those did.
    assert version == accepted
    await database.dispose()


def other_platform_of(state: Any) -> int:
    return int(next(p.id for p in state.platforms if p.id != state.active))


async def test_tabs_leaving_mid_switch_leave_the_pool_clean(running: RunningHub) -> None:
    """Tabs that send a switch and vanish at once leave no connection checked out."""
    token = await running.login("alice")
    for i in range(10):
        tab = await running.tab(token, f"gone{i}")
        state = tab.hello["state"]
        await tab.send(
            {
                "type": "switch",
                "id": f"g{i}",
                "platform": other_platform(state),
                "base": state["version"],
            }
        )
        tab.connection.transport.abort()
    async with asyncio.timeout(5):
        while running.hub.tabs():  # noqa: ASYNC110 - waits for the hub to notice
            await asyncio.sleep(0.05)
    await asyncio.sleep(0.2)
    assert running.database.checked_out() == 0


async def test_locked_database_rejects_unavailable_then_recovers(tmp_path: Path) -> None:
    """With the database locked, switches are rejected unavailable; the tab stays and recovers."""
    settings = make_settings(tmp_path, sqlite_busy_timeout_ms=200)
    async with serve(settings) as running:
        token = await running.login("alice")
        tab = await running.tab(token, "a")
        target = other_platform(tab.hello["state"])
        path = settings.database_url.split("///", 1)[1]
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            rejected = await tab.switch("r1", target)
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert rejected["reason"] == "unavailable"
        assert rejected["state"] == tab.hello["state"]
        assert "nothing was changed" in rejected["message"]
        # The same request id is not remembered as rejected: once the database is back it applies.
        assert await tab.switch("r1", target) == {"type": "switched", "id": "r1", "version": 1}
        assert running.database.checked_out() == 0
        await tab.close()


async def test_readiness_fails_while_the_database_cannot_write_and_liveness_holds(
    tmp_path: Path,
) -> None:
    """While another process holds SQLite's write lock, GET /healthz (readiness) answers 503
    with the reason and GET /livez (liveness) 200; readiness is 200 again once it is free."""
    settings = make_settings(tmp_path, sqlite_busy_timeout_ms=200, readiness_timeout_s=1)
    async with serve(settings) as running, running.http() as http:
        assert (await http.get("/healthz")).json()["status"] == "ok"
        path = settings.database_url.split("///", 1)[1]
        locker = sqlite3.connect(path, isolation_level=None)
        locker.execute("BEGIN IMMEDIATE")
        try:
            ready, live = await http.get("/healthz"), await http.get("/livez")
        finally:
            locker.execute("ROLLBACK")
            locker.close()
        assert ready.status_code == 503 and ready.json()["status"] == "unavailable"
        assert "locked" in ready.json()["reason"], ready.json()
        assert live.status_code == 200 and live.json()["status"] == "ok"
        assert (await http.get("/healthz")).status_code == 200


async def test_logout_wins_over_a_racing_switch(running: RunningHub) -> None:
    """A switch under a session revoked in the database is not applied; the tab gets 4001."""
    token = await running.login("alice")
    tab = await running.tab(token, "a")

    def revoke(connection: Connection) -> None:
        connection.execute(
            update(db.login_sessions).values(
                revoked_at=running.database.clock(), revoked_reason="logout"
            )
        )

    await running.database.write(revoke)
    await tab.send(
        {"type": "switch", "id": "late", "platform": other_platform(tab.hello["state"]), "base": 0}
    )
    code, messages = await tab.closed()
    assert code == 4001 and messages == [session_ended("logout")]

    def state(connection: Connection) -> tuple[int, int]:
        return stored_version(connection), logged(connection)

    assert await running.database.read(state) == (0, 0)


async def test_writers_queued_behind_a_failed_write_fail_with_it(tmp_path: Path) -> None:
    """Another process holds the lock: the first writer waits busy_timeout and fails; those
    queued behind it fail at once with its message instead of each waiting again."""
    settings = make_settings(tmp_path, sqlite_busy_timeout_ms=300)
    database = Database(settings)
    await database.create_schema()
    checkouts = 0

    def checked_out(*_: Any) -> None:
        nonlocal checkouts
        checkouts += 1

    def work(connection: Connection) -> int:
        connection.execute(text("CREATE TABLE IF NOT EXISTS probe (x INTEGER)"))
        return checkouts

    locker = sqlite3.connect(tmp_path / "hub.db", isolation_level=None)
    locker.execute("BEGIN IMMEDIATE")
    event.listen(Pool, "checkout", checked_out)
    try:
        results = await asyncio.gather(
            *(database.write(work) for _ in range(20)), return_exceptions=True
        )
    finally:
        locker.execute("ROLLBACK")
        locker.close()
    try:
        assert all(isinstance(r, StoreUnavailable) for r in results), results
        assert len({str(r) for r in results}) == 1 and "locked" in str(results[0])
        assert checkouts == 1  # only the first writer reached the database; it applied nothing
        # A writer that arrives after the failure goes to the database again, and succeeds.
        assert await database.write(work) == 2
    finally:
        event.remove(Pool, "checkout", checked_out)
    assert database.checked_out() == 0
    await database.dispose()


async def test_a_wal_deleted_under_the_running_hub_loses_no_acknowledged_switch(
    tmp_path: Path,
) -> None:
    """An operator deletes hub.db-wal while the hub runs, and the hub is then killed (-9):
    the hub saved what the deleted file held into hub.db and started a new WAL at once, so
    after a restart every acknowledged switch is there (before, the restart lost every
    commit since the last checkpoint)."""
    settings = make_settings(tmp_path, log_level="warning", message_burst=1000)
    wal = tmp_path / "hub.db-wal"
    await seed_demo_file(settings)
    hub = await HubProcess(settings, tmp_path / "hub.log").start()
    try:
        async with httpx.AsyncClient(base_url=hub.url, headers={"Origin": hub.url}) as http:
            login = await http.post(
                "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
            )
            assert login.status_code == 200
            version = 0
            for n in range(60):
                if n == 30:
                    wal.unlink()
                body = {"id": f"s{n}", "platform": 1 + (n + 1) % 2, "base": version}
                answer = (await http.post("/api/switch", json=body)).json()
                assert answer["type"] == "switched", answer
                version = answer["version"]
        hub.kill()
        hub = await HubProcess(settings, tmp_path / "hub2.log").start()
        async with httpx.AsyncClient(base_url=hub.url) as http:
            login = await http.post(
                "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
            )
            state = (await http.get("/api/state")).json()["state"]
        assert state["version"] == version == 60
    finally:
        hub.stop()
    assert "was deleted under the running hub" in (tmp_path / "hub.log").read_text()


async def test_a_caller_cancelled_as_its_unit_of_work_ends_is_cancelled(
    make_on_each_engine: MakeSettings,
) -> None:
    """A background loop is stopped by cancelling it, and its cancellation may arrive at any
    instant, the one at which its database call finishes included: the call then raises
    CancelledError, never returns as if it had not been asked to stop. 3.11's wait_for did
    that: the session collector, cancelled once at shutdown, ran on, and a hub on PostgreSQL
    hung in its stop (CI, test_collector_runs_by_itself[postgresql])."""
    database = Database(make_on_each_engine())
    await database.create_schema()
    try:
        swallowed = []
        # Cancel 0, 1, 2, ... loop turns after the unit of work itself has ended: one of
        # those turns is the instant at which the caller is being woken with its result.
        for turns in range(12):
            for unit in (database.read, database.write):
                caller = asyncio.create_task(
                    unit(lambda connection: connection.scalar(text("SELECT 1")))
                )
                await asyncio.sleep(0)  # the caller starts its unit of work
                (ending,) = database._running
                await asyncio.wait([ending])
                for _ in range(turns):
                    await asyncio.sleep(0)
                if caller.cancel():  # not done yet: it must end cancelled
                    try:
                        await caller
                    except asyncio.CancelledError:
                        continue
                    swallowed.append((unit.__name__, turns))
                else:
                    assert await caller == 1
        assert swallowed == []
        assert database.checked_out() == 0
    finally:
        await database.dispose()
