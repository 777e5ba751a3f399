"""server/storage/holds.py: a hold refuses a user's switches as busy until released or expired.

A real hub with the host API, on SQLite and on PostgreSQL; tabs are real WebSockets, and the
stored version is read back to prove that nothing was applied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import pytest

from platform_hub_client import AsyncHostClient
from server.api import UserState
from server.settings import Settings
from tests.conftest import MakeSettings, RunningHub, Tab, other_platform, serve

KEY = "holds-test-key"


@pytest.fixture
async def running(make_on_each_engine: MakeSettings) -> AsyncIterator[RunningHub]:
    settings: Settings = make_on_each_engine(api_key=KEY)
    async with serve(settings) as hub:
        yield hub


@pytest.fixture
async def client(running: RunningHub) -> AsyncIterator[AsyncHostClient]:
    async with AsyncHostClient(running.url, KEY) as hub:
        yield hub


def as_json(value: object) -> object:
    """The value as a tab receives it: through JSON."""
    return msgspec.json.decode(msgspec.json.encode(value))


async def hold_message(tab: Tab) -> dict[str, Any] | None:
    hold: dict[str, Any] | None = (await tab.receive_type("hold"))["hold"]
    return hold


async def test_a_hold_refuses_switches_as_busy_until_released(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """Both tabs hear the hold start; a switch is refused busy with the hold's reason, over
    the WebSocket and over HTTP, nothing is stored; after the release both tabs hear it end,
    and a retry of the same request id is decided afresh and accepted."""
    token = await running.login("alice")
    tabs = [await running.tab(token, "a"), await running.tab(token, "b")]
    target = other_platform(tabs[0].hello["state"])
    assert tabs[0].hello["hold"] is None

    placed = await client.hold("alice", "Generating captions", 60)
    assert placed.hold is not None and placed.hold.reason == "Generating captions"
    assert placed.state.version == 0
    for tab in tabs:
        assert await hold_message(tab) == {
            "reason": "Generating captions",
            "expires_at": placed.hold.expires_at,
        }
    refused = await tabs[0].switch("r1", target)
    assert refused["type"] == "rejected" and refused["reason"] == "busy"
    assert "Generating captions" in refused["message"]
    assert refused["state"]["version"] == 0
    async with running.http(token, origin=running.url) as http:
        answer = await http.post("/api/switch", json={"id": "h1", "platform": target, "base": 0})
        polled = (await http.get("/api/state")).json()  # what degraded mode polls
    assert answer.status_code == 423 and answer.json()["reason"] == "busy"
    assert polled["hold"] == {"reason": "Generating captions", "expires_at": placed.hold.expires_at}
    late = await running.tab(token, "late")  # a tab that joins during the hold is told too
    assert late.hello["hold"] == {
        "reason": "Generating captions",
        "expires_at": placed.hold.expires_at,
    }
    assert (await running.hub.store.load_state(1)).version == 0

    released = await client.release("alice")
    assert released.hold is None
    async with running.http(token) as http:
        assert (await http.get("/api/state")).json()["hold"] is None
    for tab in [*tabs, late]:
        assert await hold_message(tab) is None
    accepted = await tabs[0].switch("r1", target)  # the same id: not remembered as busy
    assert accepted == {"type": "switched", "id": "r1", "version": 1}
    for tab in [*tabs, late]:
        await tab.close()


async def test_a_hold_ends_by_itself_when_its_ttl_runs_out(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A hold of 0.5 s: the tab hears it start, then end without a release, and a switch
    after that is accepted; another user was never held."""
    token = await running.login("bob")
    tab = await running.tab(token, "t")
    carol = await running.tab(await running.login("carol"), "c")
    await client.hold("bob", "Posting", 0.5)
    assert (await hold_message(tab)) is not None
    other = await carol.switch("c1", other_platform(carol.hello["state"]))
    assert other["type"] == "switched"
    assert await asyncio.wait_for(hold_message(tab), 5) is None
    answer = await tab.switch("b1", other_platform(tab.hello["state"]))
    assert answer["type"] == "switched"
    await tab.close()
    await carol.close()


async def test_switches_racing_a_hold_are_decided_wholly_before_or_after_it(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """Switches sent while the hold is placed: each is either accepted at a version the
    placement's answer already shows, or refused busy; none commits after the hold."""
    token = await running.login("carol")
    tab = await running.tab(token, "t")
    platforms = [p["id"] for p in tab.hello["state"]["platforms"]]
    for n in range(10):
        await tab.send({"type": "switch", "id": f"s{n}", "platform": platforms[n % 3], "base": n})
    placed = await client.hold("carol", "Job", 30)
    answers: list[dict[str, Any]] = []
    async with asyncio.timeout(5):
        while len(answers) < 10:
            message = await tab.receive()
            if message["type"] in {"switched", "rejected"}:
                answers.append(message)
    accepted = [a["version"] for a in answers if a["type"] == "switched"]
    assert all(v <= placed.state.version for v in accepted), (accepted, placed.state.version)
    assert (await running.hub.store.load_state(3)).version == placed.state.version
    assert {a.get("reason") for a in answers} <= {None, "busy", "stale"}
    await tab.close()


async def test_the_host_reads_a_users_state_and_hold_as_tabs_see_them(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """GET .../state answers what the tabs were last told: the version and active platform
    after a switch, the hold while it is in force (and null after it ran out), the platforms;
    it needs the key, and an unknown or unnameable user is 404."""
    token = await running.login("bob")
    tab = await running.tab(token, "t")
    before = await client.state("bob")
    assert as_json(before.state) == tab.hello["state"] and before.hold is None
    target = other_platform(tab.hello["state"])
    assert (await tab.switch("b1", target))["type"] == "switched"
    told = (await tab.receive_type("state"))["state"]
    read = await client.state("bob")
    assert as_json(read.state) == told
    assert (read.state.version, read.state.active) == (1, target)

    placed = await client.hold("bob", "Posting", 0.5)
    assert (await client.state("bob")).hold == placed.hold
    assert await asyncio.wait_for(hold_message(tab), 5) is not None
    assert await asyncio.wait_for(hold_message(tab), 5) is None  # ran out
    assert (await client.state("bob")) == UserState(hold=None, state=read.state)
    assert (await client.state("alice")).state.version == 0  # another user, untouched

    async with httpx.AsyncClient(base_url=running.url) as http:
        assert (await http.get("/api/host/users/bob/state")).status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        for name in ("nobody", "bob%00", "b" * 300):
            answer = await http.get(f"/api/host/users/{name}/state", headers=headers)
            assert answer.status_code == 404 and answer.json()["error"] == "unknown_user", name
    await tab.close()


async def test_hold_requests_are_checked(running: RunningHub, client: AsyncHostClient) -> None:
    """A hold needs the API key, a reason of 1 to 200 characters and a TTL up to a day."""
    async with httpx.AsyncClient(base_url=running.url) as http:
        response = await http.put("/api/host/users/alice/hold", json={"reason": "x", "ttl_s": 5})
        assert response.status_code == 401
        headers = {"Authorization": f"Bearer {KEY}"}
        for body in ({"reason": "", "ttl_s": 5}, {"reason": "x", "ttl_s": 0},
                     {"reason": "x", "ttl_s": 10**6}, {"reason": "x"}):  # fmt: skip
            response = await http.put("/api/host/users/alice/hold", json=body, headers=headers)
            assert (response.status_code, response.json()["error"]) == (422, "bad_request")
    assert await running.hub.store.load_hold(1) is None
