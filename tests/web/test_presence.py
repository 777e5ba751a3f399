"""Presence: every tab of a person learns the person's devices (live login sessions) and
their open tabs, in the hello and then in ``presence`` messages, on each engine.

Tabs are real WebSocket clients of a real hub; the devices come from real logins, each with
its own user agent.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from sqlalchemy import select

from server import db
from server.settings import Settings
from server.storage import sessions
from server.web.credentials import COOKIE
from tests.conftest import RunningHub, Tab

LAPTOP = (
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) "
    "Chrome/120.0.0.0 Safari/537.36"
)
PHONE = (
    "Mozilla/5.0 (iPhone; CPU iPhone OS 17_1 like Mac OS X) AppleWebKit/605.1.15 (KHTML, like "
    "Gecko) Version/17.1 Mobile/15E148 Safari/604.1"
)


@pytest.fixture
def settings(settings_on_each_engine: Settings) -> Settings:
    return settings_on_each_engine


async def sign_in(running: RunningHub, name: str, user_agent: str) -> tuple[str, str]:
    """Log in from a device; return its token and its session's handle."""
    async with running.http(**{"User-Agent": user_agent}) as client:
        response = await client.post(
            "/api/login", json={"username": name, "password": f"{name}-demo-pw"}
        )
    assert response.status_code == 200, response.text
    token = response.cookies[COOKIE]
    digest = sessions.token_hash(token)
    sessions_ = db.login_sessions
    query = select(sessions_.c.id).where(sessions_.c.token_hash == digest)
    assert await running.database.read(lambda connection: connection.scalar(query))
    return token, digest[:16]


def tabs_by_device(devices: list[dict[str, Any]]) -> dict[str, int]:
    return {device["session"]: device["tabs"] for device in devices}


async def presence_until(tab: Tab, wanted: dict[str, int]) -> list[dict[str, Any]]:
    """Read presence messages until the tab counts are ``wanted``; return the devices."""
    while True:
        devices: list[dict[str, Any]] = (await tab.receive_type("presence"))["devices"]
        if tabs_by_device(devices) == wanted:
            return devices


async def test_the_hello_lists_the_persons_devices_and_no_token_or_address(
    running: RunningHub,
) -> None:
    """A laptop's tab is told of both of Alice's devices: described from their user agents,
    newest sign-in first, with their open tabs and which one is its own; never a token or an
    IP address (the strict decode refuses fields the protocol does not name)."""
    laptop, laptop_id = await sign_in(running, "alice", LAPTOP)
    phone, phone_id = await sign_in(running, "alice", PHONE)
    await sign_in(running, "bob", LAPTOP)
    tab = await running.tab(laptop, "l1")
    devices = tab.hello["devices"]
    assert [d["session"] for d in devices] == [phone_id, laptop_id]
    assert [d["description"] for d in devices] == ["Mobile Safari on iOS", "Chrome on macOS"]
    assert [(d["tabs"], d["current"]) for d in devices] == [(0, False), (1, True)]
    assert all(d["signed_in_at"].endswith("Z") and d["last_active_at"] for d in devices)
    assert phone not in str(tab.hello) and "127.0.0.1" not in str(tab.hello)
    await tab.close()


async def test_tabs_coming_and_going_reach_every_tab_of_the_person_coalesced(
    running: RunningHub,
) -> None:
    """The laptop's tab hears of the phone's tabs as they open and close (coalesced: see
    tests/core/test_hub.py), and each phone tab that its device is its own; Bob hears
    nothing of it."""
    laptop, laptop_id = await sign_in(running, "alice", LAPTOP)
    phone, phone_id = await sign_in(running, "alice", PHONE)
    bob, _ = await sign_in(running, "bob", LAPTOP)
    watcher = await running.tab(laptop, "watcher")
    bystander = await running.tab(bob, "bystander")
    phone_tabs = await asyncio.gather(*(running.tab(phone, f"p{n}") for n in range(5)))
    await presence_until(watcher, {phone_id: 5, laptop_id: 1})
    # The newest phone tab's hello, or a presence after it, shows all five too.
    last = phone_tabs[-1]
    shown = [last.hello["devices"]] + [
        m["devices"] for m in last.received if m["type"] == "presence"
    ]
    while tabs_by_device(shown[-1]) != {phone_id: 5, laptop_id: 1}:
        shown.append((await last.receive_type("presence"))["devices"])
    assert [d["current"] for d in shown[-1]] == [True, False]
    for phone_tab in phone_tabs[:3]:
        await phone_tab.close()
    await presence_until(watcher, {phone_id: 2, laptop_id: 1})
    await bystander.send({"type": "ping"})
    assert await bystander.receive() == {"type": "pong"}
    assert [m["type"] for m in bystander.received] == ["hello", "pong"]
    for tab in [watcher, bystander, *phone_tabs[3:]]:
        await tab.close()


async def test_a_sign_in_and_a_revocation_come_and_go_from_the_list(running: RunningHub) -> None:
    """A new sign-in (no tab yet) joins the list of Alice's open tabs; revoking it from the
    laptop over POST /api/sessions/{id}/revoke takes it out again, as a logout does."""
    laptop, laptop_id = await sign_in(running, "alice", LAPTOP)
    watcher = await running.tab(laptop, "watcher")
    assert tabs_by_device(watcher.hello["devices"]) == {laptop_id: 1}
    async with running.http(**{"User-Agent": PHONE}) as client:
        response = await client.post(
            "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
        )
    phone = response.cookies[COOKIE]
    devices = (await watcher.receive_type("presence"))["devices"]
    assert len(devices) == 2 and devices[0]["description"] == "Mobile Safari on iOS"
    phone_id = devices[0]["session"]
    async with running.http(laptop) as client:
        revoked = await client.post(f"/api/sessions/{phone_id}/revoke")
    assert revoked.status_code == 200, revoked.text
    await presence_until(watcher, {laptop_id: 1})
    async with running.http(phone) as client:
        assert (await client.get("/api/state")).status_code == 401
    await watcher.close()
