"""server/storage/backplane.py: several hub processes on one PostgreSQL database act as one hub.

Real `hub serve` processes, real tabs spread across them (as a proxy without sticky sessions
would), the history checker over everything they saw. The bounds asserted on time are far
above what the runs measure; -s prints the measured figures.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import msgspec
import pytest
from sqlalchemy import Connection
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from platform_hub_client import AsyncHostClient
from server.db import Database
from server.events import SHARDS, Event, HoldChanged, SessionsEnded, StateChanged
from server.protocol import Cause, SessionEndReason
from server.settings import Settings
from server.storage import backplane, sessions
from server.web.credentials import COOKIE
from tests.support.history import check
from tests.support.host_changes import HostChanges
from tests.support.load import Load, converge, record_facts
from tests.support.population import Population, populate
from tests.support.postgres import BASE_URL, Relay, fresh_database
from tests.support.processes import HubProcess, wait_until

CONVERGE_WITHIN_S = 5.0


class _AnyHold:
    def __eq__(self, other: object) -> bool:
        return isinstance(other, dict) and set(other) == {"reason", "expires_at"}


ANY_HOLD = _AnyHold()


async def next_of(tab: ClientConnection, kind: str) -> dict[str, Any]:
    async with asyncio.timeout(CONVERGE_WITHIN_S):
        while True:
            message: dict[str, Any] = json.loads(await tab.recv())
            if message["type"] == kind:
                return message


async def test_a_change_is_written_per_shard_and_wakes_only_its_shards() -> None:
    """One transaction's events of users in three shards: a row per shard with its own events,
    its users and the transaction's id, and a wake-up on each of those shards' channels after
    the commit, carrying the origin and the shard's users, or past HINT_USERS of them the
    origin alone; none on another shard's channel, none for a rollback. The events of 2,000
    ended sessions fit, which a NOTIFY payload (8,000 bytes) could not."""
    one, two = 1, 2 + SHARDS  # users in shards 1 and 2; 1 + SHARDS shares shard 1
    crowd = [3 + SHARDS * n for n in range(backplane.HINT_USERS + 1)]  # in shard 3
    sessions_ended = SessionsEnded(
        user=two, sessions=list(range(10**6, 10**6 + 2000)), reason=SessionEndReason.REVOKED
    )
    events: list[Event] = [
        StateChanged(
            user=one, version=5, active=7, cause=Cause(kind="switch", tab="t", request="r")
        ),
        sessions_ended,
        HoldChanged(user=1 + SHARDS, hold=None),
        *(HoldChanged(user=user, hold=None) for user in crowd),
    ]
    async with fresh_database() as url:
        database = Database(process_settings(url))
        woken: list[tuple[str, str]] = []
        listening = await asyncpg.connect(url.replace("+asyncpg", ""))
        try:
            await database.prepare_schema(upgrade=True)
            for shard in (1, 2, 3, 4):
                await listening.add_listener(
                    backplane.channel(shard),
                    lambda _c, _p, ch, payload: woken.append((ch, payload)),
                )

            def rolled_back(connection: Connection) -> None:
                backplane.stage(connection, "origin-a", events)
                raise LookupError("roll back")

            with pytest.raises(LookupError):
                await database.write(rolled_back)
            await database.write(lambda connection: backplane.stage(connection, "origin-a", events))
            await wait_until(lambda: len(woken) >= 3, 5.0, "three wake-ups")
            await asyncio.sleep(0.2)  # room for a wrong fourth
            rows = await listening.fetch(
                "SELECT shard, origin, tx, events, users FROM changes ORDER BY shard"
            )
        finally:
            await listening.close()
            await database.dispose()
    assert sorted(woken) == [
        ("hub_feed_1", f"origin-a {one} {1 + SHARDS}"),
        ("hub_feed_2", f"origin-a {two}"),
        ("hub_feed_3", "origin-a"),
    ]
    assert [(r["shard"], r["origin"]) for r in rows] == [(n, "origin-a") for n in (1, 2, 3)]
    assert [r["users"] for r in rows] == [[one, 1 + SHARDS], [two], crowd]
    assert rows[0]["tx"] == rows[1]["tx"] == rows[2]["tx"] is not None
    decoded = [msgspec.json.decode(r["events"], type=list[Event]) for r in rows]
    assert decoded == [[events[0], events[2]], [sessions_ended], events[3:]]


async def test_a_process_passes_over_the_changes_of_users_it_has_no_tab_of(
    tmp_path: Path,
) -> None:
    """Users 1 and 1 + SHARDS share a shard, and B has a tab of user 1 only: the neighbour's
    switches through A wake B, which passes them over by name, and B's tab hears nothing.
    Once a tab of the neighbour joins B, the neighbour's next switch through A reaches it."""
    neighbour = 1 + SHARDS
    async with processes(tmp_path, users=neighbour, count=2) as (_, population, hubs):

        async def tab(hub: HubProcess, user: int, name: str) -> ClientConnection:
            headers = {"Authorization": f"Bearer {population.tokens[user]}"}
            return await connect(
                f"ws://127.0.0.1:{hub.port}/ws?tab={name}", additional_headers=headers
            )

        async def switch(tab: ClientConnection, base: int) -> int:
            platform = population.platforms[neighbour][1 - base % 2]  # the one not active
            message = {"type": "switch", "id": f"r{base}", "platform": platform, "base": base}
            await tab.send(json.dumps(message))
            version: int = (await next_of(tab, "state"))["state"]["version"]
            return version

        bystander, switcher = await tab(hubs[1], 1, "b1"), await tab(hubs[0], neighbour, "a")
        try:
            await bystander.recv()
            version = json.loads(await switcher.recv())["state"]["version"]
            for _ in range(3):
                version = await switch(switcher, version)
            passed = 0

            async def poll() -> None:
                nonlocal passed
                passed = (await hubs[1].health())["backplane"]["passed"]

            async with asyncio.timeout(CONVERGE_WITHIN_S):
                while passed < 3:  # the wake-ups reach B a little after A answered
                    await poll()
                    await asyncio.sleep(0.05)
            assert (await hubs[1].health())["backplane"]["delivered"] == 0
            late = await tab(hubs[1], neighbour, "b2")
            try:
                assert json.loads(await late.recv())["state"]["version"] == version
                version = await switch(switcher, version)
                assert (await next_of(late, "state"))["state"]["version"] == version
            finally:
                await late.close()
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.2):
                    await bystander.recv()  # user 1's tab heard nothing of it all
        finally:
            await bystander.close()
            await switcher.close()


async def closed(tab: ClientConnection) -> int | None:
    """Read ``tab`` until the hub closes it (within CONVERGE_WITHIN_S); return the code."""
    with pytest.raises(ConnectionClosed):
        async with asyncio.timeout(CONVERGE_WITHIN_S):
            while True:
                await tab.recv()
    return tab.close_code


def process_settings(url: str, **overrides: object) -> Settings:
    base: dict[str, object] = {"database_url": url, "session_check_s": 1.0, "log_level": "warning"}
    base.update(overrides)
    return Settings(**base)  # type: ignore[arg-type]


@contextlib.asynccontextmanager
async def processes(
    tmp_path: Path, users: int, count: int = 3, relay: Relay | None = None, **overrides: object
) -> AsyncIterator[tuple[Settings, Population, list[HubProcess]]]:
    """``count`` hub processes on one fresh PostgreSQL database with ``users`` users,
    connected to it through ``relay`` if given."""
    async with fresh_database() as url:
        if relay is not None:
            url = await relay.start(url)
        settings = process_settings(url, **overrides)
        population = await populate(settings, users)
        hubs: list[HubProcess] = []
        try:
            for n in range(count):
                hubs.append(await HubProcess(settings, tmp_path / f"hub{n}.log").start())
            yield settings, population, hubs
        finally:
            for hub in hubs:
                hub.stop()
            if relay is not None:
                await relay.down()


async def check_history(load: Load, settings: Settings) -> str:
    await record_facts(load, settings)
    report = check(load.history)
    assert report.ok, report.violations[:10]
    return report.summary()


async def test_three_processes_agree_on_every_switch(tmp_path: Path) -> None:
    """Tabs of each user on all three processes switch concurrently through all three: one
    winner per version, every tab's states in order, and every tab converges."""
    async with processes(tmp_path, users=30) as (settings, population, hubs):
        load = Load(population, tabs_per_user=3)
        try:
            await load.connect_all([hub.port for hub in hubs])
            counts = await load.run(600, stale_share=0.3, in_flight_per_user=3)
            took = await converge(load, settings, CONVERGE_WITHIN_S)
        finally:
            await load.close()
        summary = await check_history(load, settings)
        accepted = counts.get("switched", 0)
        print(f"\nthree processes: {summary}; converged {took:.2f} s after the last answer")
        assert accepted > 0 and counts.get("rejected:stale", 0) > 0
        for hub in hubs:
            health = await hub.settled_health()
            assert health["backplane"]["listening"] and health["connections_checked_out"] == 0


async def test_a_logout_through_one_process_ends_the_tabs_on_the_others(tmp_path: Path) -> None:
    """The session's tabs on processes B and C close with 4001 soon after a logout through A,
    and logout-all through C closes a tab on B (the session watcher is slowed to a minute,
    so only the backplane can tell them)."""
    async with processes(tmp_path, users=2, session_check_s=60) as (_, population, hubs):
        token = population.tokens[1]
        tabs = []
        for n, hub in enumerate(hubs[1:]):
            tab = await connect(
                f"ws://127.0.0.1:{hub.port}/ws?tab=t{n}",
                additional_headers={"Authorization": f"Bearer {token}"},
            )
            await tab.recv()  # hello
            tabs.append(tab)
        other = await connect(
            f"ws://127.0.0.1:{hubs[1].port}/ws?tab=other",
            additional_headers={"Authorization": f"Bearer {population.tokens[2]}"},
        )
        await other.recv()
        started = time.monotonic()
        async with httpx.AsyncClient(base_url=hubs[0].url) as http:
            response = await http.post("/api/logout", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        for tab in tabs:
            assert await closed(tab) == 4001
        took = time.monotonic() - started
        print(f"\nlogout through A closed the tabs on B and C in {took:.3f} s")
        await other.ping()  # another user's tab on B is untouched

        # logout-all through C ends the other user's tab on B the same way.
        async with httpx.AsyncClient(base_url=hubs[2].url) as http:
            response = await http.post(
                "/api/logout-all", headers={"Authorization": f"Bearer {population.tokens[2]}"}
            )
        assert response.status_code == 200 and response.json()["sessions"] == 1
        assert await closed(other) == 4001


async def test_a_revoke_all_of_2000_sessions_ends_their_tabs_on_another_process(
    tmp_path: Path,
) -> None:
    """The host app revokes a user's 2,000 live sessions through A; tabs of the first and the
    last of them on B close with 4001. The 2,000 ids travel in one feed row (about 16 KB),
    which no NOTIFY payload (under 8,000 bytes) could carry whole."""
    async with processes(
        tmp_path, users=1, count=2, api_key="k", max_sessions_per_user=3000, session_check_s=60
    ) as (settings, population, hubs):
        (user,) = population.tokens
        database = Database(settings)
        try:
            tokens = [(await sessions.open_session(database, user))[0] for _ in range(1999)]
        finally:
            await database.dispose()
        tabs = []
        for n, token in enumerate((population.tokens[user], tokens[-1])):
            tab = await connect(
                f"ws://127.0.0.1:{hubs[1].port}/ws?tab=t{n}",
                additional_headers={"Authorization": f"Bearer {token}"},
            )
            await tab.recv()  # hello
            tabs.append(tab)
        async with AsyncHostClient(hubs[0].url, "k") as host:
            revoked = await host.revoke_sessions(population.names[user])
        assert revoked.sessions == 2000 and revoked.tabs == 0  # none on A
        for tab in tabs:
            assert await closed(tab) == 4001


async def test_a_platform_change_through_one_process_reaches_the_tabs_on_the_other(
    tmp_path: Path,
) -> None:
    """A platform added through A, then a switch to it through A at once: the tab on B gets
    the new platform list (B reads it anew: notifications carry no platforms) and then the
    switch, in version order, and ends on the stored state."""
    async with processes(tmp_path, users=1, count=2) as (_, population, hubs):
        token = population.tokens[1]
        headers = {"Authorization": f"Bearer {token}"}
        watcher = await connect(
            f"ws://127.0.0.1:{hubs[1].port}/ws?tab=b", additional_headers=headers
        )
        switcher = await connect(
            f"ws://127.0.0.1:{hubs[0].port}/ws?tab=a", additional_headers=headers
        )
        try:
            await watcher.recv()
            await switcher.recv()
            new = {
                "name": "Photos",
                "kind": "pixelfed",
                "instance_url": "https://pixey.org",
                "username": "someone",
            }
            async with httpx.AsyncClient(base_url=hubs[0].url, headers=headers) as http:
                added = await http.post("/api/platforms", json=new)
            assert added.status_code == 201, added.text
            body = added.json()
            photos = next(p["id"] for p in body["platforms"] if p["name"] == "Photos")
            version = body["state"]["version"]
            message = {"type": "switch", "id": "p1", "platform": photos, "base": version}
            await switcher.send(json.dumps(message))
            seen: list[dict[str, Any]] = []
            async with asyncio.timeout(CONVERGE_WITHIN_S):
                while not seen or seen[-1]["version"] < version + 1:
                    received = json.loads(await watcher.recv())
                    if received["type"] == "state":
                        seen.append(received["state"])
            assert [s["version"] for s in seen] == sorted({s["version"] for s in seen})
            assert seen[-1]["active"] == photos
            assert "Photos" in [p["name"] for p in seen[-1]["platforms"]]
        finally:
            await watcher.close()
            await switcher.close()


async def test_a_hold_placed_through_one_process_holds_the_switches_on_the_other(
    tmp_path: Path,
) -> None:
    """A hold placed through A: the tab on B hears it and its switch is refused busy; the
    release through A reaches B too, and the same switch is then accepted."""
    async with processes(tmp_path, users=1, count=2, api_key="k") as (_, population, hubs):
        headers = {"Authorization": f"Bearer {population.tokens[1]}"}
        tab = await connect(f"ws://127.0.0.1:{hubs[1].port}/ws?tab=b", additional_headers=headers)
        try:
            hello = json.loads(await tab.recv())
            state = hello["state"]
            target = next(p["id"] for p in state["platforms"] if p["id"] != state["active"])
            async with AsyncHostClient(hubs[0].url, "k") as host:
                name = "user00000"  # tests/support/load.py's populate names its users so
                await host.hold(name, "Captioning", 30)
                assert await next_of(tab, "hold") == {"type": "hold", "hold": ANY_HOLD}
                switch = {"type": "switch", "id": "h1", "platform": target, "base": 0}
                await tab.send(json.dumps(switch))
                refused = await next_of(tab, "rejected")
                assert refused["reason"] == "busy" and "Captioning" in refused["message"]
                await host.release(name)
                assert await next_of(tab, "hold") == {"type": "hold", "hold": None}
            await tab.send(json.dumps(switch))
            assert (await next_of(tab, "switched"))["version"] == 1
            # B timed the two notifications from A (hold, release) in its lag histogram.
            async with httpx.AsyncClient(base_url=hubs[1].url) as http:
                metrics = (await http.get("/metrics")).text
            count = next(
                line for line in metrics.splitlines()
                if line.startswith("hub_backplane_lag_seconds_count")
            )  # fmt: skip
            assert float(count.split()[-1]) >= 2, count
        finally:
            await tab.close()


async def test_tabs_converge_after_a_listener_is_terminated_during_load(tmp_path: Path) -> None:
    """pg_terminate_backend on one process's listening connection mid-load: it reconnects,
    reads on from the change feed without a resync, and every tab still converges; the
    history holds."""
    # Up to a second before the listener returns: the switches made meanwhile through the
    # other processes reach the victim's tabs from the feed, read on from its last look.
    async with processes(tmp_path, users=20, backplane_backoff_s=1.0) as (
        settings,
        population,
        hubs,
    ):
        load = Load(population, tabs_per_user=3)
        try:
            await load.connect_all([hub.port for hub in hubs])
            victim = hubs[1]
            pid = (await victim.health())["backplane"]["backend_pid"]
            counts = await load.run(300, stale_share=0.3)
            admin = await asyncpg.connect(BASE_URL.replace("+asyncpg", ""))
            try:
                assert await admin.fetchval("SELECT pg_terminate_backend($1)", pid)
            finally:
                await admin.close()
            during = await load.run(100, stale_share=0.0)
            for kind, n in during.items():
                counts[kind] = counts.get(kind, 0) + n
            took = await converge(load, settings, CONVERGE_WITHIN_S)
        finally:
            await load.close()
        summary = await check_history(load, settings)
        health = await victim.health()
        assert health["backplane"]["reconnects"] >= 1 and health["backplane"]["listening"]
        assert health["backplane"]["backend_pid"] != pid
        assert health["backplane"]["resyncs"] == 1  # the start's: nothing was collected
        print(f"\nlistener cut: {counts}; {summary}; converged {took:.2f} s after")


async def test_a_killed_process_loses_no_acknowledged_switch(tmp_path: Path) -> None:
    """kill -9 of one process mid-load, while the host app renames platforms and holds
    switches through whichever process answers: the killed process's tabs reconnect to the
    others (as through a proxy); every acknowledged switch and rename is in the database, and
    the history (switches, renames and holds) is linearizable across the processes."""
    async with processes(tmp_path, users=20, api_key="k") as (settings, population, hubs):
        load = Load(population, tabs_per_user=3)
        users = {u: (population.names[u], population.platforms[u]) for u in population.tokens}
        host = HostChanges(load.history, [hub.url for hub in hubs], "k", users)
        stop = asyncio.Event()
        try:
            await load.connect_all([hub.port for hub in hubs])
            victim = hubs[2]

            async def kill() -> None:
                await asyncio.sleep(0.3)
                victim.kill()

            async def switches() -> dict[str, int]:
                try:
                    return await load.run(600, stale_share=0.3)
                finally:
                    stop.set()

            counts, changes, _ = await asyncio.gather(switches(), host.run(stop), kill())
            await wait_until(
                lambda: all(t.connected.is_set() for t in load.tabs), 60, "reconnected"
            )
            took = await converge(load, settings, CONVERGE_WITHIN_S)
        finally:
            await load.close()
        summary = await check_history(load, settings)
        moved = sum(1006 in t.close_codes for t in load.tabs)
        print(
            f"\nkill -9: {counts}; host: {changes}; {moved} tabs moved; {summary};"
            f" converged {took:.2f} s after"
        )
        assert moved > 0 and counts.get("switched", 0) > 0
        assert changes.get("renamed", 0) > 0 and changes.get("held and released", 0) > 0
        assert await host.lost_renames(hubs[0].url) == []
        for hub in hubs[:2]:
            assert (await hub.settled_health())["connections_checked_out"] == 0


class _Refusal:
    """PostgreSQL refuses the hub's database: ALLOW_CONNECTIONS false, its backends cut."""

    def __init__(self, settings: Settings) -> None:
        self._name = settings.database_url.rsplit("/", 1)[1]
        self._admin: asyncpg.Connection | None = None

    async def begin(self) -> None:
        self._admin = await asyncpg.connect(BASE_URL.replace("+asyncpg", ""))
        await self._admin.execute(f'ALTER DATABASE "{self._name}" ALLOW_CONNECTIONS false')
        await self._admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1",
            self._name,
        )

    async def end(self) -> None:
        if self._admin is not None:
            await self._admin.execute(f'ALTER DATABASE "{self._name}" ALLOW_CONNECTIONS true')
            await self._admin.close()
            self._admin = None


class _Outage:
    """The server is gone, as when it is stopped: its port refuses, its connections are cut."""

    def __init__(self, relay: Relay) -> None:
        self._relay = relay

    async def begin(self) -> None:
        await self._relay.down()

    async def end(self) -> None:
        await self._relay.up()


@pytest.mark.parametrize("fault", ["refused", "down"])
async def test_a_database_fault_costs_unavailable_then_everything_recovers(
    tmp_path: Path, fault: str
) -> None:
    """For 2 s PostgreSQL refuses the hub's database (its connections cut), or is down (a
    relay in front of it cut and closed): switches are answered `unavailable` (nothing
    applied), tabs stay connected, and once it is back switches are accepted again and every
    tab converges, without a restart."""
    relay = Relay()
    async with processes(tmp_path, users=10, count=2, relay=relay) as (
        settings,
        population,
        hubs,
    ):
        injected = _Refusal(settings) if fault == "refused" else _Outage(relay)
        load = Load(population, tabs_per_user=2)
        try:
            await load.connect_all([hub.port for hub in hubs])
            before = await load.run(100, stale_share=0.0)
            await injected.begin()
            during = await load.run(60, stale_share=0.0)
            await injected.end()
            await asyncio.sleep(2.5)  # the listeners' backoff tops out at 2 s
            after = await load.run(100, stale_share=0.0)
            took = await converge(load, settings, CONVERGE_WITHIN_S)
        finally:
            with contextlib.suppress(asyncpg.PostgresError, OSError):
                await injected.end()
            await load.close()
        summary = await check_history(load, settings)
        print(f"\n{fault}: before {before}, during {during}, after {after}; {summary}")
        assert during.get("rejected:unavailable", 0) > 0
        assert set(during) <= {"rejected:unavailable", "switched", "rejected:stale"}
        assert after.get("switched", 0) > 0 and "rejected:unavailable" not in after
        assert all(1006 not in t.close_codes for t in load.tabs)  # no tab was dropped
        print(f"converged {took:.2f} s after")
        for hub in hubs:
            health = await hub.health()
            assert health["status"] == "ok" and health["backplane"]["listening"]


async def test_hub_serve_workers_share_one_port_and_deliver_across_each_other(
    tmp_path: Path,
) -> None:
    """hub serve --workers 2: two processes answer on one port, each with its own listener;
    a switch from a tab reaches every tab of the user, on both workers."""
    async with fresh_database() as url:
        settings = process_settings(url)
        population = await populate(settings, 1)
        hub = await HubProcess(settings, tmp_path / "hub.log", args=["--workers", "2"]).start()
        try:
            token = population.tokens[1]

            async def tabs_per_worker() -> dict[int, int]:
                seen: dict[int, int] = {}
                for _ in range(100):  # /healthz lands on either worker, as tabs do
                    health = await hub.health()
                    assert health["backplane"]["listening"], health
                    seen[health["pid"]] = health["tabs"]
                    if len(seen) == 2:
                        break
                return seen

            # The kernel hands connections to whichever worker accepts first: open tabs
            # until both workers hold some (usually a few suffice).
            tabs: list[Any] = []
            per_worker: dict[int, int] = {}
            while len(tabs) < 60 and not (len(per_worker) == 2 and all(per_worker.values())):
                tab = await connect(
                    f"ws://127.0.0.1:{hub.port}/ws?tab=t{len(tabs)}",
                    additional_headers={"Authorization": f"Bearer {token}"},
                )
                tabs.append((tab, json.loads(await tab.recv())))
                per_worker = await tabs_per_worker()
            assert len(per_worker) == 2 and all(per_worker.values()), per_worker
            assert sum(per_worker.values()) == len(tabs), per_worker
            first, hello = tabs[0]
            state = hello["state"]
            target = next(p["id"] for p in state["platforms"] if p["id"] != state["active"])
            message = {"type": "switch", "id": "w1", "platform": target, "base": state["version"]}
            await first.send(json.dumps(message))
            for tab, _ in tabs:
                async with asyncio.timeout(CONVERGE_WITHIN_S):
                    while True:
                        received = json.loads(await tab.recv())
                        if received["type"] == "state":
                            break
                assert received["state"]["active"] == target
                await tab.close()
            print(f"\nworkers: tabs per worker {sorted(per_worker.values())}")
        finally:
            # SIGTERM, not kill -9: the supervisor stops its workers before it exits.
            await hub.terminate()


async def test_a_stalled_database_costs_each_request_a_bounded_wait_then_everything_recovers(
    tmp_path: Path,
) -> None:
    """PostgreSQL stops answering without closing anything (a partition; the relay holds every
    byte) for as long as the test needs: switches, logins and new tabs are each answered
    `unavailable` (503) within a few database timeouts, not when the stall ends; then it
    answers again, switches are accepted, every tab converges and the history holds (an
    `unavailable` answer confirms nothing: a commit already sent may land after it)."""
    relay = Relay()
    async with processes(tmp_path, users=10, count=2, relay=relay, database_timeout_s=1.0) as (
        settings,
        population,
        hubs,
    ):
        load = Load(population, tabs_per_user=2)
        try:
            await load.connect_all([hub.port for hub in hubs])
            before = await load.run(60, stale_share=0.0)
            relay.stall()
            started = time.monotonic()
            async with asyncio.timeout(60):  # far past a few timeouts; the stall lasts until then
                during = await load.run(40, stale_share=0.0)
                async with httpx.AsyncClient(base_url=hubs[0].url, timeout=30) as http:
                    login = await http.post(
                        "/api/login", json={"username": "user00000", "password": "irrelevant"}
                    )
                token = next(iter(population.tokens.values()))
                with pytest.raises(InvalidStatus) as refused:
                    await connect(
                        f"ws://127.0.0.1:{hubs[1].port}/ws?tab=new",
                        additional_headers={"Authorization": f"Bearer {token}"},
                        open_timeout=30,
                    )
                async with httpx.AsyncClient(base_url=hubs[0].url, timeout=30) as http:
                    ready, live = await http.get("/healthz"), await http.get("/livez")
            stalled_for = time.monotonic() - started
            relay.resume()
            await asyncio.sleep(1)
            after = await load.run(60, stale_share=0.0)
            took = await converge(load, settings, CONVERGE_WITHIN_S)
        finally:
            relay.resume()
            await load.close()
        summary = await check_history(load, settings)
        print(f"\nstalled: before {before}, during {during} in {stalled_for:.1f} s, after {after}")
        print(f"{summary}; converged {took:.2f} s after")
        assert login.status_code == 503 and login.json()["error"] == "unavailable"
        assert ready.status_code == 503 and "did not answer" in ready.json()["reason"]
        assert live.status_code == 200
        assert refused.value.response.status_code == 503
        assert during.get("rejected:unavailable", 0) > 0
        assert set(during) <= {"rejected:unavailable", "switched", "rejected:stale"}
        assert after.get("switched", 0) > 0 and "rejected:unavailable" not in after
        assert all(1006 not in t.close_codes for t in load.tabs)


async def test_the_login_throttle_and_the_http_bucket_are_one_budget_for_all_processes(
    tmp_path: Path,
) -> None:
    """Failed logins for one name, and HTTP switches of one session, alternated between two
    processes: the burst is spent once for both (server/storage/buckets.py), not once per
    process as in-memory limits alone would allow."""
    async with processes(
        tmp_path,
        users=1,
        count=2,
        login_failure_burst=3,
        login_failure_rate=0.001,
        message_burst=4,
        messages_per_second=0.001,
    ) as (_, population, hubs):
        (user,) = population.tokens
        statuses = []
        for n in range(6):
            async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{hubs[n % 2].port}") as page:
                answer = await page.post(
                    "/api/login", json={"username": "user00000", "password": "a guess"}
                )
                statuses.append(answer.status_code)
        assert statuses == [401, 401, 401, 429, 429, 429]
        switched = []
        platforms = population.platforms[user]
        for n in range(8):
            url = f"http://127.0.0.1:{hubs[n % 2].port}"
            async with httpx.AsyncClient(
                base_url=url, cookies={COOKIE: population.tokens[user]}, headers={"Origin": url}
            ) as page:
                body = {"id": f"h{n}", "platform": platforms[(n + 1) % 2], "base": min(n, 4)}
                switched.append((await page.post("/api/switch", json=body)).status_code)
        assert switched == [200, 200, 200, 200, 429, 429, 429, 429]
