"""Presence across hub processes on PostgreSQL: each process counts the tabs the others hold
of a person's devices, hears of a device signed in or out through another, and stops counting
a process that died within the stated bound (4 heartbeats), or at once when it stopped cleanly.

PostgreSQL only: on SQLite one process holds every tab, and presence needs no table
(tests/web/test_presence.py runs the same lists on both engines).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import Interval, literal, select, update
from websockets.asyncio.client import ClientConnection, connect

from server import db
from server.db import Database
from server.settings import Settings
from server.storage import sessions
from server.storage.devices import live_devices
from server.storage.presence import TabCounts
from server.storage.users import add_user
from tests.conftest import TIMEOUT
from tests.storage.test_backplane import process_settings, processes
from tests.support.population import populate
from tests.support.postgres import Relay, fresh_database
from tests.support.processes import HubProcess

HEARTBEAT_S = 1.0
PHONE = "Mozilla/5.0 (Linux; Android 14; Pixel 8) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/120.0.0.0 Mobile Safari/537.36"  # noqa: E501


async def open_tab(hub: HubProcess, token: str, tab: str) -> tuple[ClientConnection, list[Any]]:
    """A tab on ``hub``; return it and the devices its hello listed."""
    connection = await connect(
        f"ws://127.0.0.1:{hub.port}/ws?tab={tab}",
        additional_headers={"Authorization": f"Bearer {token}"},
    )
    hello = json.loads(await connection.recv())
    assert hello["type"] == "hello"
    return connection, hello["devices"]


async def devices_until(
    tab: ClientConnection, wanted: dict[str, int], within: float = TIMEOUT
) -> float:
    """Read presence until the devices' tab counts are ``wanted``; return the seconds taken."""
    started = time.monotonic()
    deadline = started + within
    seen: dict[str, int] = {}
    while seen != wanted:
        left = deadline - time.monotonic()
        assert left > 0, f"presence still {seen}, not {wanted}"
        try:
            message = json.loads(await _recv(tab, left))
        except TimeoutError:
            continue
        if message["type"] == "presence":
            seen = {device["session"]: device["tabs"] for device in message["devices"]}
    return time.monotonic() - started


async def watcher_presence(tab: ClientConnection) -> dict[str, Any]:
    """The tab's next presence message."""
    while (message := json.loads(await _recv(tab, TIMEOUT)))["type"] != "presence":
        pass
    return message  # type: ignore[no-any-return]


async def _recv(tab: ClientConnection, within: float) -> str | bytes:
    return await asyncio.wait_for(tab.recv(), within)


async def test_tabs_on_other_processes_count_and_a_dead_process_drops_out(
    tmp_path: Path,
) -> None:
    """A person with tabs on A and B: A's tab counts B's two. A device signed in through B
    (the host API) reaches A's list, and signed out through A leaves B's. B killed with
    SIGKILL: its tabs leave A's list within 4 heartbeats (plus a little for a loaded
    machine); C stopped with SIGTERM: at once."""
    async with processes(
        tmp_path, users=2, count=3, api_key="k", presence_heartbeat_s=HEARTBEAT_S
    ) as (_, population, hubs):
        a, b, c = hubs
        user = next(iter(population.tokens))
        token = population.tokens[user]
        watcher, hello = await open_tab(a, token, "watcher")
        [session] = [d["session"] for d in hello]  # its handle
        assert [(d["tabs"], d["current"]) for d in hello] == [(1, True)]
        b_tabs = [(await open_tab(b, token, f"b{n}"))[0] for n in range(2)]
        c_tab, _ = await open_tab(c, token, "c0")
        await devices_until(watcher, {session: 4})
        other_user = next(u for u in population.tokens if u != user)
        stranger, _ = await open_tab(b, population.tokens[other_user], "stranger")

        # A device signed in through B's host API: listed on A, no tab yet.
        async with httpx.AsyncClient(base_url=b.url, headers={"Authorization": "Bearer k"}) as http:
            minted = await http.post(
                f"/api/host/users/{population.names[user]}/sessions", json={"user_agent": PHONE}
            )
        assert minted.status_code == 201, minted.text
        while len(devices := (await watcher_presence(watcher))["devices"]) < 2:
            pass
        [phone] = [d["session"] for d in devices if d["session"] != session]
        assert devices[0]["description"] == "Chrome Mobile on Android"
        assert {d["session"]: d["tabs"] for d in devices} == {phone: 0, session: 4}
        # Signed out through A (the page's revoke): gone from B's lists too.
        async with httpx.AsyncClient(
            base_url=a.url, headers={"Authorization": f"Bearer {token}"}
        ) as http:
            revoked = await http.post(f"/api/sessions/{phone}/revoke")
        assert revoked.status_code == 200, revoked.text
        await devices_until(b_tabs[0], {session: 4})

        # B killed: its two tabs leave A's list within 4 heartbeats.
        b.kill()
        took = await devices_until(watcher, {session: 2}, within=4 * HEARTBEAT_S + 10)
        print(f"\na killed process's tabs left the list in {took:.2f} s")
        # C stopped cleanly: its tab leaves at once (its rows are deleted as it stops).
        await c.terminate()
        took = await devices_until(watcher, {session: 1})
        print(f"a stopped process's tab left the list in {took:.2f} s")
        await watcher.close()
        for tab in [*b_tabs, c_tab, stranger]:
            await tab.close()


async def age(database: Database, origin: str, seconds: float) -> None:
    """Make a process's rows ``seconds`` older, as if it had stopped vouching that long."""
    rows = db.tab_counts
    older = rows.c.seen_at - literal(dt.timedelta(seconds=seconds), Interval())
    await database.write(
        lambda c: c.execute(update(rows).where(rows.c.origin == origin).values(seen_at=older))
    )


async def latest_counts(tab: ClientConnection, within: float) -> dict[int, int] | None:
    """Read every presence for ``within`` seconds; return the last one's counts (None: none)."""
    seen = None
    deadline = time.monotonic() + within
    while (left := deadline - time.monotonic()) > 0:
        try:
            message = json.loads(await asyncio.wait_for(tab.recv(), left))
        except TimeoutError:
            break
        if message["type"] == "presence":
            seen = {d["session"]: d["tabs"] for d in message["devices"]}
    return seen


async def test_a_process_back_from_a_partition_is_counted_again(tmp_path: Path) -> None:
    """A's link to the database is cut for 5 heartbeats: B stops counting A's tab. Once A is
    back, its first vouch tells the others, and B counts A's tab again. (Found by an attack:
    A vouched silently, and B, with no tabs elsewhere to re-read, never looked again.)"""
    relay = Relay()
    async with fresh_database() as url:
        direct = process_settings(url, presence_heartbeat_s=HEARTBEAT_S)
        cut = process_settings(await relay.start(url), presence_heartbeat_s=HEARTBEAT_S)
        population = await populate(direct, 1)
        a = await HubProcess(cut, tmp_path / "a.log").start()
        b = await HubProcess(direct, tmp_path / "b.log").start()
        try:
            user = next(iter(population.tokens))
            token = population.tokens[user]
            on_a, [device] = await open_tab(a, token, "a")
            session = device["session"]
            watcher, _ = await open_tab(b, token, "w")
            await devices_until(watcher, {session: 2})
            await relay.down()
            await devices_until(watcher, {session: 1}, within=4 * HEARTBEAT_S + 10)
            await relay.up()
            took = await devices_until(watcher, {session: 2}, within=4 * HEARTBEAT_S + 10)
            print(f"\nback from the cut, A's tab counted again on B after {took:.2f} s")
            await on_a.close()
            await watcher.close()
        finally:
            a.stop()
            b.stop()
            await relay.down()


async def test_counts_of_gone_sessions_and_dead_processes_are_not_counted() -> None:
    """One process's counts, written: a session collected meanwhile writes nothing (not an
    error), a count of 0 deletes its row, and another process's rows count only while vouched
    for within 3 heartbeats; rows unvouched for 20 heartbeats are deleted."""
    async with fresh_database() as url:
        settings = Settings(database_url=url, presence_heartbeat_s=HEARTBEAT_S)
        here, elsewhere = Database(settings), Database(settings)
        try:
            await here.create_schema()
            user = await add_user(here, "alice", None)
            _, laptop = await sessions.open_session(here, user)
            _, phone = await sessions.open_session(here, user)
            counts, theirs = TabCounts(here), TabCounts(elsewhere)
            counts.report(user, laptop.id, 2)
            counts.report(user, 2**62, 1)  # no such session (collected)
            theirs.report(user, phone.id, 3)
            await counts._write(vouch=True)
            await theirs._write(vouch=True)
            # Each process sees the other's tabs only.
            seen = await live_devices(here, [user])
            assert {id_: d.tabs for id_, d in seen[user]} == {phone.id: 3, laptop.id: 0}
            seen = await live_devices(elsewhere, [user])
            assert {id_: d.tabs for id_, d in seen[user]} == {phone.id: 0, laptop.id: 2}
            # The other process stops vouching: after 3 heartbeats its tabs stop counting
            # (by the database's clock: its rows are made older).
            await age(here, theirs.origin, 3.5 * HEARTBEAT_S)
            seen = await live_devices(here, [user])
            assert {id_: d.tabs for id_, d in seen[user]} == {phone.id: 0, laptop.id: 0}
            # After 20, a heartbeat here deletes its rows; a 0 deletes this process's own.
            counts.report(user, laptop.id, 0)
            await age(here, theirs.origin, 17 * HEARTBEAT_S)
            await counts._write(vouch=True)
            rows = await here.read(lambda c: c.execute(select(db.tab_counts)).all())
            assert rows == []
        finally:
            await here.dispose()
            await elsewhere.dispose()


async def test_a_shared_connections_members_count_and_switch_across_processes(
    tmp_path: Path,
) -> None:
    """A leader on A carrying three members: a tab of the same person on B counts the
    device's five tabs (the four and itself), a member's switch reaches B's tab with the
    member as its cause, and the leader's end takes the four out of B's list."""
    async with processes(tmp_path, users=1, count=2, presence_heartbeat_s=HEARTBEAT_S) as (
        _,
        population,
        (a, b),
    ):
        token = next(iter(population.tokens.values()))
        leader = await connect(
            f"ws://127.0.0.1:{a.port}/ws?tab=leader",
            additional_headers={"Authorization": f"Bearer {token}"},
        )
        hello = json.loads(await leader.recv())
        [session] = [d["session"] for d in hello["devices"]]
        for member in ("m1", "m2", "m3"):
            await leader.send(json.dumps({"type": "attach", "tab": member}))
            while (message := json.loads(await _recv(leader, TIMEOUT)))["type"] != "hello":
                pass
            assert message["tab"] == member
        watcher, _ = await open_tab(b, token, "watcher")
        await devices_until(watcher, {session: 5})
        platforms = [p["id"] for p in hello["state"]["platforms"]]
        target = next(p for p in platforms if p != hello["state"]["active"])
        switch = {"type": "switch", "id": "r1", "platform": target, "base": 0, "tab": "m2"}
        await leader.send(json.dumps(switch))
        while (message := json.loads(await _recv(watcher, TIMEOUT)))["type"] != "state":
            pass
        assert message["state"]["active"] == target
        assert message["cause"] == {"kind": "switch", "tab": "m2", "request": "r1"}
        await leader.close()
        await devices_until(watcher, {session: 1})
