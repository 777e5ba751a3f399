"""Shared connections: one WebSocket carries several tabs of a browser (attach, detach, a
member's switch), on each engine, with real WebSocket clients of a real hub.

The browser side (navigation.js's leader and its relay) is tested in tests/browser/.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
from websockets.exceptions import ConnectionClosedError

from server.settings import Settings
from tests.conftest import MakeSettings, RunningHub, Tab, other_platform, serve
from tests.web.test_presence import presence_until, sign_in, tabs_by_device

MEMBERS = ["m1", "m2", "m3", "m4"]


@pytest.fixture
def settings(settings_on_each_engine: Settings) -> Settings:
    return settings_on_each_engine


async def attach(leader: Tab, member: str) -> dict[str, Any]:
    """Attach ``member`` to the leader's connection; return its hello."""
    await leader.send({"type": "attach", "tab": member})
    async with asyncio.timeout(5):
        while True:
            message = await leader.receive()
            if message["type"] == "hello" and message["tab"] == member:
                return message


async def counted(tab: Tab, wanted: dict[str, int]) -> list[dict[str, Any]]:
    """The devices once the connection was told ``wanted`` tab counts: by the last list it
    had (a hello's, a member's hello's, a presence's) or a presence message still to come.
    A connection is told each list once, in whichever of those came first."""
    if tabs_by_device(tab.devices) == wanted:
        return tab.devices
    return await presence_until(tab, wanted)


async def test_one_connection_carries_five_tabs_each_switching_as_itself(
    running: RunningHub,
) -> None:
    """A leader attaches four tabs: each gets its own hello; the person's devices count five
    tabs (and a second device sees the five); each member's switch is answered with its tab
    named, its broadcast goes down the connection once, naming the member as its cause."""
    token, handle = await sign_in(running, "alice", "laptop")
    leader = await running.tab(token, "leader")
    for member in MEMBERS:
        hello = await attach(leader, member)
        assert hello["user"]["name"] == "alice"
        assert hello["state"]["version"] == leader.version
    devices = await counted(leader, {handle: 5})
    assert [device["current"] for device in devices] == [True]
    phone_token, phone = await sign_in(running, "alice", "phone")
    other = await running.tab(phone_token, "phone-tab")
    assert {d["session"]: d["tabs"] for d in other.hello["devices"]} == {handle: 5, phone: 1}

    target = other_platform(leader.hello["state"])
    base = leader.version
    await leader.send(
        {"type": "switch", "id": "r-m3", "platform": target, "base": base, "tab": "m3"}
    )
    answer = await leader.receive_type("switched")
    assert answer == {"type": "switched", "id": "r-m3", "version": base + 1, "tab": "m3"}
    state = await leader.receive_type("state")
    assert state["cause"] == {"kind": "switch", "tab": "m3", "request": "r-m3"}
    assert (await other.receive_type("state"))["cause"]["tab"] == "m3"
    # Once per connection: nothing more for this version follows on the leader's.
    await leader.send({"type": "ping"})
    assert (await leader.receive())["type"] == "pong"
    assert [m for m in leader.received if m["type"] == "state"] == [state]

    # A stale switch of another member is answered to that member, untagged for the leader.
    stale = await leader.switch("r-leader", target, base=base)
    assert stale["reason"] == "stale" and "tab" not in stale
    await leader.send(
        {"type": "switch", "id": "r-m1", "platform": target, "base": base, "tab": "m1"}
    )
    rejected = await leader.receive_type("rejected")
    assert rejected["id"] == "r-m1" and rejected["tab"] == "m1" and rejected["reason"] == "stale"


async def test_detach_and_the_connections_end_take_the_members_out_of_presence(
    running: RunningHub,
) -> None:
    """A member detached counts no more; the connection's close takes every member with it;
    detaching an unknown tab is harmless; a detached member's switch is refused in words."""
    token, handle = await sign_in(running, "alice", "laptop")
    watcher = await running.tab(token, "watcher")
    leader = await running.tab(token, "leader")
    for member in MEMBERS:
        await attach(leader, member)
    await counted(watcher, {handle: 6})
    await leader.send({"type": "detach", "tab": "m2"})
    await leader.send({"type": "detach", "tab": "never-attached"})
    await counted(watcher, {handle: 5})
    await leader.send({"type": "switch", "id": "r", "platform": 1, "base": 0, "tab": "m2"})
    refused = await leader.receive_type("rejected")
    assert (refused["reason"], refused["tab"]) == ("not_attached", "m2")
    assert refused["message"].startswith("This tab is not on this connection any more")
    await leader.connection.close()
    await counted(watcher, {handle: 1})


async def test_a_tab_id_is_carried_by_one_connection_at_a_time(running: RunningHub) -> None:
    """A member that opens a socket of its own leaves the connection that carried it
    (``detached``); a tab attached under the id of a live socket replaces that socket (4005);
    a member attached by a second connection leaves the first."""
    token, handle = await sign_in(running, "alice", "laptop")
    first = await running.tab(token, "first")
    await attach(first, "m1")
    own = await running.tab(token, "m1")  # m1 became a leader itself
    assert await first.receive_type("detached") == {"type": "detached", "tab": "m1"}
    await counted(own, {handle: 2})

    await attach(first, "m1")  # and back: its socket is replaced
    code, _ = await own.closed()
    assert code == 4005
    second = await running.tab(token, "second")
    await attach(second, "m1")
    assert await first.receive_type("detached") == {"type": "detached", "tab": "m1"}
    await counted(second, {handle: 3})


async def test_attach_counts_against_the_tab_limit_and_refuses_bad_ids(
    make_on_each_engine: MakeSettings,
) -> None:
    """Members count toward max_tabs_per_user: past it an attach is refused (tab_limit, the
    tab named) and the connection stays; an id that is not a tab id, or the connection's own,
    is a bad message; re-attaching a member answers its hello again without counting twice."""
    async with serve(make_on_each_engine(max_tabs_per_user=3)) as running:
        token = await running.login("alice")
        leader = await running.tab(token, "leader")
        await attach(leader, "m1")
        await attach(leader, "m1")
        await attach(leader, "m2")
        await leader.send({"type": "attach", "tab": "m3"})
        refused = await leader.receive_type("error")
        assert refused["code"] == "tab_limit" and refused["tab"] == "m3"
        for bad in ("", "x" * 65, "a b", "m\u00e9", "leader"):
            await leader.send({"type": "attach", "tab": bad})
            assert (await leader.receive_type("error"))["code"] == "bad_message", bad
        await leader.send(json.dumps({"type": "attach"}))
        assert (await leader.receive_type("error"))["code"] == "bad_message"
        with pytest.raises(ConnectionClosedError) as closed:  # a socket past it, as before
            await running.tab(token, "fourth")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003


async def test_a_members_flood_takes_its_own_limit_then_closes_the_connection(
    make_on_each_engine: MakeSettings,
) -> None:
    """Each member has its own rate limit: one member past its burst is answered
    rate_limited (its tab named) while the leader's own switches still pass; a member that
    keeps flooding closes the connection with 4002."""
    settings = make_on_each_engine(messages_per_second=0.01, message_burst=3, max_bad_messages=2)
    async with serve(settings) as running:
        token = await running.login("alice")
        leader = await running.tab(token, "leader")
        await attach(leader, "m1")
        version = leader.version
        for n in range(3):
            request = {"type": "switch", "id": f"f{n}", "platform": 1, "base": version, "tab": "m1"}
            await leader.send(request)
        for n in range(3):
            assert (await leader.receive())["id"] == f"f{n}"
        await leader.send(
            {"type": "switch", "id": "over", "platform": 1, "base": version, "tab": "m1"}
        )
        over = await leader.receive_type("rejected")
        assert over["reason"] == "rate_limited" and over["tab"] == "m1"
        own = await leader.switch("own", 1)
        assert own["type"] in {"switched", "rejected"} and own.get("reason") != "rate_limited"
        for n in range(4):
            await leader.send(
                {"type": "switch", "id": f"g{n}", "platform": 1, "base": 0, "tab": "m1"}
            )
        code, _ = await leader.closed()
        assert code == 4002


async def test_logout_ends_the_shared_connection_once(running: RunningHub) -> None:
    """Logging out sends session_ended once down the shared connection and closes it (4001):
    its members end with it."""
    token, _ = await sign_in(running, "alice", "laptop")
    leader = await running.tab(token, "leader")
    for member in MEMBERS:
        await attach(leader, member)
    async with running.http(token) as client:
        answer = await client.post("/api/logout")
    assert answer.json() == {"sessions": 1, "tabs": 5}
    code, messages = await leader.closed()
    assert code == 4001
    assert [m["type"] for m in messages].count("session_ended") == 1


async def test_churning_member_ids_gets_no_fresh_budget(make_on_each_engine: MakeSettings) -> None:
    """A member detached and attached again, or a new id each time, starts with a full bucket
    of its own, but the connection's members share one budget (as many tabs' rate as it
    carries, one tab's burst): churning ids buys no switches (a helper's attack got 440
    decided in a second where a tab gets 60)."""
    settings = make_on_each_engine(messages_per_second=0.01, message_burst=6)
    async with serve(settings) as running:
        token = await running.login("alice")
        leader = await running.tab(token, "leader")
        version = leader.version
        await attach(leader, "m1")
        for n in range(6):
            switch = {"type": "switch", "id": f"a{n}", "platform": 1, "base": version, "tab": "m1"}
            await leader.send(switch)
            assert (await leader.receive())["id"] == f"a{n}"
        for churned in ("m1", "m2"):
            await leader.send({"type": "detach", "tab": "m1"})
            await attach(leader, churned)
            switch = {"type": "switch", "id": f"b-{churned}", "platform": 1, "base": version}
            await leader.send({**switch, "tab": churned})
            refused = await leader.receive_type("rejected")
            assert (refused["reason"], refused["tab"]) == ("rate_limited", churned)


async def test_a_tab_moving_at_the_tab_limit_is_not_one_more(
    make_on_each_engine: MakeSettings,
) -> None:
    """At max_tabs_per_user, a member that opens a socket of its own (a new leader while the
    old one's socket lingers), or that another connection attaches, moves: it is not refused."""
    async with serve(make_on_each_engine(max_tabs_per_user=3)) as running:
        token = await running.login("alice")
        leader = await running.tab(token, "leader")
        await attach(leader, "m1")
        await attach(leader, "m2")
        own = await running.tab(token, "m1")  # not 4003
        assert await leader.receive_type("detached") == {"type": "detached", "tab": "m1"}
        await attach(own, "m2")  # not tab_limit
        assert await leader.receive_type("detached") == {"type": "detached", "tab": "m2"}
        assert running.hub.open_tabs(user_id=1) == 3


async def test_a_switch_for_a_tab_that_moved_is_answered_not_attached(
    make_on_each_engine: MakeSettings,
) -> None:
    """A leader that relays a switch of a tab another connection has just taken gets
    ``rejected`` ``not_attached`` with the request's id and the tab (a retry with the same id
    through the new carrier is decided once), and it does not count as a bad message."""
    async with serve(make_on_each_engine(max_bad_messages=2)) as running:
        token = await running.login("alice")
        first = await running.tab(token, "first")
        second = await running.tab(token, "second")
        await attach(first, "m1")
        await attach(second, "m1")
        base = first.version
        for n in range(4):
            await first.send(
                {"type": "switch", "id": f"r{n}", "platform": 1, "base": base, "tab": "m1"}
            )
            answer = await first.receive_type("rejected")
            assert (answer["id"], answer["reason"], answer["tab"]) == (
                f"r{n}",
                "not_attached",
                "m1",
            )
            assert answer["state"]["version"] == base
        await first.send({"type": "ping"})
        assert (await first.receive())["type"] == "pong"  # still open: no 4002
