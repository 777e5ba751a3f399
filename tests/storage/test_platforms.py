"""server/storage/platforms.py: platform management over HTTP, each change a new version for
every tab.

Real hub, real sockets, on SQLite and on PostgreSQL; the stored rows are read back, never
just the replies.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable
from typing import Any, TypeVar

import pytest
from sqlalchemy import Connection, select

from server import db
from server.api import PlatformCreate
from server.errors import PlatformRefused
from server.settings import Settings
from server.storage import platforms
from server.storage.users import user_id_of
from tests.conftest import MakeSettings, RunningHub, Tab, serve

T = TypeVar("T")
NEW = {"name": "Photos", "kind": "pixelfed", "instance_url": "https://pixey.org", "username": "a"}


@pytest.fixture
def settings(settings_on_each_engine: Settings) -> Settings:
    """Every test here runs on a fresh SQLite file and on a fresh PostgreSQL database."""
    return settings_on_each_engine


async def stored(running: RunningHub, name: str) -> dict[str, Any]:
    """The user's state row and platforms, straight from the database."""

    def work(connection: Connection) -> dict[str, Any]:
        user_id = connection.scalar(select(db.users.c.id).where(db.users.c.name == name))
        states, platforms = db.platform_states, db.platforms
        state = connection.execute(select(states).where(states.c.user_id == user_id)).one()
        rows = connection.execute(
            select(platforms).where(platforms.c.user_id == user_id).order_by(platforms.c.id)
        )
        return {
            "version": state.version,
            "active": state.active_platform_id,
            "platforms": {r.name: (r.id, r.is_active, r.is_default) for r in rows},
        }

    return await running.database.read(work)


async def next_state(tab: Tab) -> dict[str, Any]:
    message = await tab.receive_type("state")
    state: dict[str, Any] = message["state"]
    assert message["cause"] == {"kind": "platforms", "tab": None, "request": ""}
    return state


async def test_each_change_is_stored_and_reaches_every_tab_with_a_new_version(
    running: RunningHub,
) -> None:
    """Add, rename, make default, deactivate, reactivate and delete: each answers with the
    platforms and the state, stores it, and reaches both tabs as the next version."""
    token = await running.login("alice")
    tabs = [await running.tab(token, "a"), await running.tab(token, "b")]
    first = await stored(running, "alice")
    pixelfed = first["platforms"]["Pixelfed"][0]
    async with running.http(token, origin=running.url) as http:
        listed = (await http.get("/api/platforms")).json()
        assert [p["name"] for p in listed["platforms"]] == ["Pixelfed", "Mastodon", "Fosstodon"]

        added = await http.post("/api/platforms", json=NEW)
        assert added.status_code == 201, added.text
        photos = next(p for p in added.json()["platforms"] if p["name"] == "Photos")
        assert photos["is_active"] and not photos["is_default"]
        for tab in tabs:
            state = await next_state(tab)
            assert state["version"] == 1 and state["active"] == pixelfed
            assert "Photos" in [p["name"] for p in state["platforms"]]

        renamed = await http.patch(f"/api/platforms/{photos['id']}", json={"name": "Pics"})
        assert renamed.status_code == 200, renamed.text
        for tab in tabs:
            assert "Pics" in [p["name"] for p in (await next_state(tab))["platforms"]]

        made = await http.patch(f"/api/platforms/{photos['id']}", json={"is_default": True})
        assert made.status_code == 200, made.text
        for tab in tabs:
            state = await next_state(tab)
            defaults = [p["name"] for p in state["platforms"] if p["is_default"]]
            assert defaults == ["Pics"] and state["active"] == pixelfed  # the choice stays

        # Deactivating the active platform moves the choice to the default.
        off = await http.patch(f"/api/platforms/{pixelfed}", json={"is_active": False})
        assert off.status_code == 200, off.text
        for tab in tabs:
            state = await next_state(tab)
            assert state["version"] == 4 and state["active"] == photos["id"]
            assert "Pixelfed" not in [p["name"] for p in state["platforms"]]
        assert [p["is_active"] for p in off.json()["platforms"] if p["id"] == pixelfed] == [False]

        on = await http.patch(f"/api/platforms/{pixelfed}", json={"is_active": True})
        assert on.status_code == 200 and on.json()["state"]["active"] == photos["id"]
        for tab in tabs:
            assert (await next_state(tab))["version"] == 5

        # Deleting the default (and active) one promotes the first active platform.
        gone = await http.delete(f"/api/platforms/{photos['id']}")
        assert gone.status_code == 200, gone.text
        for tab in tabs:
            state = await next_state(tab)
            assert state["version"] == 6 and state["active"] == pixelfed
            assert [p["name"] for p in state["platforms"] if p["is_default"]] == ["Pixelfed"]
    assert await stored(running, "alice") == {
        "version": 6,
        "active": pixelfed,
        "platforms": {
            "Pixelfed": (pixelfed, True, True),
            "Mastodon": (first["platforms"]["Mastodon"][0], True, False),
            "Fosstodon": (first["platforms"]["Fosstodon"][0], True, False),
        },
    }
    for tab in tabs:
        await tab.close()


async def test_refused_changes_change_nothing(running: RunningHub) -> None:
    """The last active platform, duplicate names and accounts, foreign and missing platforms,
    an inactive default, bad bodies, no session and a foreign origin: each gets its precise
    answer, and neither the rows nor the version move."""
    token = await running.login("bob")
    before = await stored(running, "bob")
    mastodon, pixelfed = before["platforms"]["Mastodon"][0], before["platforms"]["Pixelfed"][0]
    alice = await stored(running, "alice")
    foreign = alice["platforms"]["Pixelfed"][0]
    async with running.http(token, origin=running.url) as http:
        assert (await http.delete(f"/api/platforms/{pixelfed}")).status_code == 200
        after_delete = await stored(running, "bob")
        cases = [
            (http.delete(f"/api/platforms/{mastodon}"), 409, "last_active_platform"),
            (http.patch(f"/api/platforms/{mastodon}", json={"is_active": False}), 409,
             "last_active_platform"),
            (http.post("/api/platforms", json={**NEW, "name": "Mastodon"}), 409, "name_taken"),
            (http.post("/api/platforms", json={**NEW, "instance_url": "https://mastodon.social",
                                               "username": "bob"}), 409, "account_taken"),
            (http.patch(f"/api/platforms/{foreign}", json={"name": "x"}), 404,
             "unknown_platform"),
            (http.delete("/api/platforms/999999"), 404, "unknown_platform"),
            (http.post("/api/platforms", json={**NEW, "kind": "myspace"}), 422, "bad_request"),
            (http.post("/api/platforms", json={**NEW, "instance_url": "ftp://x.org"}), 422,
             "bad_request"),
            (http.patch(f"/api/platforms/{mastodon}", json={"is_default": False}), 422,
             "bad_request"),
        ]  # fmt: skip
        for call, status, code in cases:
            response = await call
            assert (response.status_code, response.json()["error"]) == (status, code)
            assert response.json()["message"]
        # An inactive platform cannot be the default.
        second = await http.post("/api/platforms", json=NEW)
        photos = next(p["id"] for p in second.json()["platforms"] if p["name"] == "Photos")
        await http.patch(f"/api/platforms/{photos}", json={"is_active": False})
        refused = await http.patch(f"/api/platforms/{photos}", json={"is_default": True})
        assert (refused.status_code, refused.json()["error"]) == (409, "inactive_platform")
    after = await stored(running, "bob")
    assert after["version"] == after_delete["version"] + 2  # the add and the deactivation
    assert after["platforms"]["Mastodon"] == (mastodon, True, True)
    assert after["platforms"]["Photos"] == (photos, False, False)
    assert await stored(running, "alice") == alice  # another user's rows are untouched

    async with running.http() as http:  # no session
        response = await http.post("/api/platforms", json=NEW)
        assert (response.status_code, response.json()["error"]) == (401, "unauthenticated")
    async with running.http(token, origin="https://evil.example") as http:
        response = await http.delete(f"/api/platforms/{mastodon}")
        assert (response.status_code, response.json()["error"]) == (403, "forbidden_origin")
    assert await stored(running, "bob") == after


async def later(call: Awaitable[T]) -> T:
    await asyncio.sleep(random.uniform(0, 0.004))
    return await call


async def test_a_switch_racing_a_deactivation_has_exactly_one_outcome(
    running: RunningHub,
) -> None:
    """Thirty rounds of a switch to a platform and its deactivation, sent at once: either
    the switch wins and the deactivation then moves the choice to the default, or the
    deactivation wins and the switch is refused; the stored version counts exactly the
    changes that happened, and the tab ends on the stored state."""
    token = await running.login("carol")
    tab = await running.tab(token, "t")
    rows = (await stored(running, "carol"))["platforms"]
    default, target = rows["Work"][0], rows["Photos"][0]
    outcomes = set()
    async with running.http(token, origin=running.url) as http:
        for n in range(30):
            version = (await stored(running, "carol"))["version"]
            # Each goes out after a random pause of up to 4 ms, so either may come first.
            switch = later(tab.switch(f"r{n}", target, base=version))
            deactivate = later(http.patch(f"/api/platforms/{target}", json={"is_active": False}))
            answer, response = await asyncio.gather(switch, deactivate)
            assert response.status_code == 200, response.text
            after = await stored(running, "carol")
            if answer["type"] == "switched":
                outcomes.add("switch first")
                assert answer["version"] == version + 1 and after["version"] == version + 2
            else:
                outcomes.add("deactivation first")
                assert answer["reason"] in {"stale", "inactive_platform"}, answer
                assert after["version"] == version + 1
            assert after["active"] == default  # the deactivation left the default active
            on = await http.patch(f"/api/platforms/{target}", json={"is_active": True})
            assert on.status_code == 200
    final = await stored(running, "carol")
    async with asyncio.timeout(5):
        while tab.version != final["version"]:
            await tab.receive()
    assert tab.received[-1]["state"]["active"] == final["active"]
    print(f"\noutcomes seen: {sorted(outcomes)}")
    await tab.close()


async def test_a_user_has_at_most_the_platform_cap(make_on_each_engine: MakeSettings) -> None:
    """With a cap of 4, alice (3 platforms) may add one more; the next add, a mirror of
    five and the command line's add are refused (409 too_many_platforms), nothing stored."""
    async with serve(make_on_each_engine(max_platforms_per_user=4, api_key="k")) as running:
        async with running.http(await running.login("alice")) as alice:
            assert (await alice.post("/api/platforms", json=NEW)).status_code == 201
            refused = await alice.post(
                "/api/platforms", json={**NEW, "name": "More", "username": "b"}
            )
            assert refused.status_code == 409, refused.text
            assert refused.json()["error"] == "too_many_platforms"
        async with running.http(authorization="Bearer k") as api:
            five = [{**NEW, "name": f"P{n}", "username": f"u{n}"} for n in range(5)]
            mirrored = await api.put("/api/host/users/bob/platforms", json={"platforms": five})
        assert mirrored.status_code == 409 and mirrored.json()["error"] == "too_many_platforms"
        alice_id = await user_id_of(running.database, "alice")
        assert alice_id is not None
        new = PlatformCreate(
            name="Cli", kind="pixelfed", instance_url="https://c.example", username="c"
        )
        with pytest.raises(PlatformRefused, match="at most 4"):
            await platforms.add(running.database, alice_id, new)  # the command line's path
        assert len((await stored(running, "alice"))["platforms"]) == 4
        assert len((await stored(running, "bob"))["platforms"]) == 2
