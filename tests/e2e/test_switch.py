"""The versioned switch, end to end: real hub, real sockets, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import random
from typing import Any

import pytest
from sqlalchemy import Connection, func, select, update

from server import db
from server.api import PlatformCreate, PlatformKind
from server.settings import Settings
from server.storage.users import add_user
from tests.conftest import RunningHub, Tab, other_platform


@pytest.fixture
def settings(settings_on_each_engine: Settings) -> Settings:
    """Every test here runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    return settings_on_each_engine


async def stored_state(running: RunningHub, name: str) -> tuple[int, int | None]:
    """Read (version, active platform) of a user straight from the database."""

    def work(connection: Connection) -> tuple[int, int | None]:
        states, users = db.platform_states, db.users
        query = (
            select(states.c.version, states.c.active_platform_id)
            .join_from(states, users, users.c.id == states.c.user_id)
            .where(users.c.name == name)
        )
        version, active = connection.execute(query).one()
        return version, active

    return await running.database.read(work)


async def test_hello_carries_state_user_session_and_heartbeat(running: RunningHub) -> None:
    """A new tab's first message is a hello with the default platform active at version 0."""
    token = await running.login("alice")
    tab = await running.tab(token, "t1")
    hello = tab.hello
    assert hello["protocol"] == 1 and hello["tab"] == "t1"
    assert hello["user"]["name"] == "alice"
    assert hello["heartbeat_s"] == running.settings.heartbeat_s
    state = hello["state"]
    assert state["version"] == 0
    default = [p for p in state["platforms"] if p["is_default"]]
    assert [p["name"] for p in default] == ["Pixelfed"] and state["active"] == default[0]["id"]
    assert set(state["platforms"][0]) == {
        "id",
        "name",
        "kind",
        "instance_url",
        "username",
        "is_default",
    }
    assert hello["session"]["expires_at"].endswith("Z")
    await tab.close()


async def test_switch_is_stored_answered_and_broadcast_to_every_tab(running: RunningHub) -> None:
    """An accepted switch is committed, answered with its version, and reaches every tab."""
    token = await running.login("alice")
    tabs = [await running.tab(token, f"t{i}") for i in range(3)]
    target = other_platform(tabs[0].hello["state"])

    answer = await tabs[0].switch("r1", target)

    assert answer == {"type": "switched", "id": "r1", "version": 1}
    for tab in tabs:
        message = await tab.receive_type("state")
        assert message["state"]["version"] == 1 and message["state"]["active"] == target
        assert message["cause"] == {"kind": "switch", "tab": "t0", "request": "r1"}
    # Not just the reply: the database holds the new state (bug 4 of ORIGIN.md).
    assert await stored_state(running, "alice") == (1, target)


async def test_asking_tab_hears_its_decision_before_the_broadcast(running: RunningHub) -> None:
    """The tab that asked receives switched first, then the state it caused."""
    token = await running.login("alice")
    tab = await running.tab(token, "t0")
    await tab.send(
        {"type": "switch", "id": "r1", "platform": other_platform(tab.hello["state"]), "base": 0}
    )
    first, second = await tab.receive(), await tab.receive()
    assert (first["type"], second["type"]) == ("switched", "state")


async def test_switch_to_the_active_platform_makes_no_version(running: RunningHub) -> None:
    """Switching to the platform already active is accepted with no new version and no broadcast."""
    token = await running.login("alice")
    asking, other = await running.tab(token, "a"), await running.tab(token, "b")
    active = asking.hello["state"]["active"]

    assert await asking.switch("same", active) == {"type": "switched", "id": "same", "version": 0}

    await asking.send({"type": "ping"})
    await other.send({"type": "ping"})
    assert await asking.receive() == {"type": "pong"}
    assert await other.receive() == {"type": "pong"}
    assert await stored_state(running, "alice") == (0, None)


async def test_stale_switch_is_rejected_with_the_current_state(running: RunningHub) -> None:
    """A switch from an old base is refused as stale and carries the state that won."""
    token = await running.login("alice")
    first, second = await running.tab(token, "a"), await running.tab(token, "b")
    platforms = [p["id"] for p in first.hello["state"]["platforms"]]
    await first.switch("r1", platforms[1], base=0)

    rejected = await second.switch("r2", platforms[2], base=0)

    assert rejected["type"] == "rejected" and rejected["reason"] == "stale"
    assert rejected["state"]["version"] == 1 and rejected["state"]["active"] == platforms[1]
    assert "Mastodon" in rejected["message"]
    assert await stored_state(running, "alice") == (1, platforms[1])


async def test_unknown_and_foreign_platforms_get_the_same_answer(running: RunningHub) -> None:
    """A missing platform and another user's are refused alike, revealing nothing."""
    alice = await running.tab(await running.login("alice"), "a")
    bob = await running.tab(await running.login("bob"), "b")
    bobs_platform = bob.hello["state"]["platforms"][0]["id"]

    foreign = await alice.switch("r1", bobs_platform)
    missing = await alice.switch("r2", 999_999)

    assert foreign["reason"] == missing["reason"] == "unknown_platform"
    assert {k: v for k, v in foreign.items() if k != "id"} == {
        k: v for k, v in missing.items() if k != "id"
    }
    assert await stored_state(running, "alice") == (0, None)
    assert await stored_state(running, "bob") == (0, None)


async def test_inactive_platform_is_refused(running: RunningHub) -> None:
    """A deactivated platform cannot be switched to, and nothing changes."""
    token = await running.login("alice")
    tab = await running.tab(token, "a")
    target = other_platform(tab.hello["state"])

    def deactivate(connection: Connection) -> None:
        platforms = db.platforms
        connection.execute(
            update(platforms).where(platforms.c.id == target).values(is_active=False)
        )

    await running.database.write(deactivate)
    rejected = await tab.switch("r1", target)
    assert rejected["reason"] == "inactive_platform"
    assert rejected["state"]["version"] == 0
    assert await stored_state(running, "alice") == (0, None)


async def test_retry_of_a_request_gets_the_original_decision(running: RunningHub) -> None:
    """A request id seen before is answered as before and never applied twice."""
    token = await running.login("alice")
    tab = await running.tab(token, "a")
    platforms = [p["id"] for p in tab.hello["state"]["platforms"]]
    assert await tab.switch("r1", platforms[1], base=0) == {
        "type": "switched",
        "id": "r1",
        "version": 1,
    }
    await tab.switch("r2", platforms[2], base=1)

    # The same request again, even from a new tab: the original decision, no new version.
    again = await running.tab(token, "b")
    assert await again.switch("r1", platforms[1], base=0) == {
        "type": "switched",
        "id": "r1",
        "version": 1,
    }
    assert await stored_state(running, "alice") == (2, platforms[2])

    stale = await again.switch("r3", platforms[0], base=0)
    assert stale["reason"] == "stale"
    await again.switch("r4", platforms[0], base=2)
    repeated = await again.switch("r3", platforms[0], base=3)
    assert repeated["reason"] == "stale" and repeated["state"]["version"] == 3

    def count(connection: Connection) -> int:
        return int(connection.scalar(select(func.count()).select_from(db.switch_log)) or 0)

    assert await running.database.read(count) == 4


async def test_restart_keeps_versions_and_decisions(running: RunningHub) -> None:
    """After a restart, versions continue and a retried request still gets its first answer."""
    token = await running.login("alice")
    tab = await running.tab(token, "a")
    platforms = [p["id"] for p in tab.hello["state"]["platforms"]]
    await tab.switch("before", platforms[1], base=0)
    await tab.close()
    await running.stop()

    restarted = await RunningHub(running.settings).start()
    try:
        tab = await restarted.tab(token, "a")
        assert tab.hello["state"]["version"] == 1 and tab.hello["state"]["active"] == platforms[1]
        assert await tab.switch("before", platforms[1], base=0) == {
            "type": "switched",
            "id": "before",
            "version": 1,
        }
        assert (await tab.switch("after", platforms[2]))["version"] == 2
        await tab.close()
    finally:
        await restarted.stop()


async def test_no_delivery_across_users(running: RunningHub) -> None:
    """A user's switch reaches only that user's tabs."""
    alice = await running.tab(await running.login("alice"), "a")
    bob = await running.tab(await running.login("bob"), "b")
    await alice.switch("r1", other_platform(alice.hello["state"]))
    await bob.send({"type": "ping"})
    assert await bob.receive() == {"type": "pong"}
    assert [m["type"] for m in bob.received] == ["hello", "pong"]


async def test_concurrent_tabs_agree(running: RunningHub) -> None:
    """20 users x 5 tabs switching at once: one winner per version, contiguous, no regressions."""
    users = [f"user{i:02d}" for i in range(20)]
    for name in users:
        kinds: list[PlatformKind] = ["pixelfed", "mastodon", "mastodon"]
        listed = [
            PlatformCreate(
                name=f"P{index}", kind=kind, instance_url=f"https://p{index}.example", username=name
            )
            for index, kind in enumerate(kinds)
        ]
        await add_user(running.database, name, f"{name}-demo-pw", listed)
    tabs: dict[str, list[Tab]] = {}
    for name in users:
        token = await running.login(name)
        tabs[name] = [await running.tab(token, f"{name}-t{i}") for i in range(5)]

    rng = random.Random(7)
    answers: list[tuple[str, dict[str, Any], int]] = []

    async def fire(name: str, tab: Tab, index: int) -> None:
        platforms = [p["id"] for p in tab.hello["state"]["platforms"]]
        for round_ in range(4):
            # Half the time use the freshest version seen, else an older one: current and stale.
            base = tab.version if rng.random() < 0.5 else max(0, tab.version - rng.randint(1, 2))
            answer = await tab.switch(f"{name}-{index}-{round_}", rng.choice(platforms), base)
            answers.append((name, answer, base))

    await asyncio.gather(
        *(fire(name, tab, i) for name in users for i, tab in enumerate(tabs[name]))
    )

    for name in users:
        accepted = sorted(
            a["version"]
            for n, a, base in answers
            if n == name and a["type"] == "switched" and a["version"] == base + 1
        )
        # One winner per version, versions contiguous from 1.
        assert accepted == list(range(1, len(accepted) + 1)), (name, accepted)
        version, active = await stored_state(running, name)
        assert version == len(accepted)
        for tab in tabs[name]:
            # Drain until this tab has seen the final version.
            while tab.version < version:
                await tab.receive()
            states = [
                m["state"]["version"]
                for m in tab.received
                if m["type"] in {"state"} and m.get("state")
            ]
            assert states == sorted(set(states)), (name, states)  # strictly increasing
            assert all(
                m.get("state") is None or m["state"]["platforms"] == tab.hello["state"]["platforms"]
                for m in tab.received
                if m["type"] == "state"
            )
            final = next(m for m in reversed(tab.received) if m["type"] == "state")
            assert (final["state"]["version"], final["state"]["active"]) == (version, active)
            # Nothing delivered across users.
            assert all(m.get("cause", {}).get("tab", name).startswith(name) for m in tab.received)
    for connection in (tab for group in tabs.values() for tab in group):
        await connection.close()
