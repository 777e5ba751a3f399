"""External ids (issue 14, item 6): a mirrored or added platform carries the host app's own id,
shown in states and platform views and accepted by the host API wherever a platform id is.

Real hub, real tabs, on SQLite and on PostgreSQL; the stored rows are read back too.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import httpx
import msgspec
import pytest
from sqlalchemy import Connection, select

from platform_hub_client import (
    AsyncHostClient,
    HostApiError,
    PlatformCreate,
    PlatformMirrored,
    PlatformUpdate,
)
from server import db
from server.storage.users import user_id_of
from tests.conftest import MakeSettings, RunningHub, serve

KEY = "external-id-key"


def account(name: str, username: str, external_id: str | None, **extra: bool) -> PlatformMirrored:
    return PlatformMirrored(
        name=name,
        kind="mastodon",
        instance_url="https://mastodon.social",
        username=username,
        external_id=external_id,
        **extra,
    )


@pytest.fixture
async def running(make_on_each_engine: MakeSettings) -> AsyncIterator[RunningHub]:
    async with serve(make_on_each_engine(api_key=KEY)) as hub:
        yield hub


@pytest.fixture
async def client(running: RunningHub) -> AsyncIterator[AsyncHostClient]:
    async with AsyncHostClient(running.url, KEY) as hub:
        await hub.upsert_user("kim")
        yield hub


async def stored(running: RunningHub, user: str) -> list[tuple[int, str, str | None]]:
    """(id, username, external id) of the user's rows, from the database."""

    def work(connection: Connection) -> list[tuple[int, str, str | None]]:
        user_id = connection.scalar(select(db.users.c.id).where(db.users.c.name == user))
        rows = connection.execute(
            select(db.platforms.c.id, db.platforms.c.username, db.platforms.c.external_id)
            .where(db.platforms.c.user_id == user_id)
            .order_by(db.platforms.c.id)
        )
        return [(r.id, r.username, r.external_id) for r in rows]

    return await running.database.read(work)


async def test_external_ids_travel_in_states_and_views_and_name_platforms(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """Mirrored with external ids (one with "/", "?" and non-ASCII letters in it): the
    platform list, the host API's state and a tab's hello and states carry them; a change and
    a removal named by external id act on that platform and reach the tab."""
    odd = "acct/ü?#%20 x"
    mirrored = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a1", is_default=True), account("Odd", "kim2", odd)]
    )
    assert [p.external_id for p in mirrored.platforms] == ["a1", odd]
    assert [p.external_id for p in mirrored.state.platforms] == ["a1", odd]
    assert [p.external_id for p in (await client.state("kim")).state.platforms] == ["a1", odd]
    tab = await running.tab((await client.mint_session("kim")).token, "t")
    assert [p["external_id"] for p in tab.hello["state"]["platforms"]] == ["a1", odd]
    # Without one, the field is left out (what hubs and clients from before external ids
    # read), in a tab's state and in what the client sends.
    alice = await running.tab(await running.login("alice"), "a")
    assert all("external_id" not in p for p in alice.hello["state"]["platforms"])
    assert b"external_id" not in msgspec.json.encode(account("Main", "kim", None))
    await alice.close()

    changed = await client.change_platform("kim", odd, PlatformUpdate(name="Renamed"))
    odd_id = mirrored.platforms[1].id
    assert next(p.name for p in changed.platforms if p.id == odd_id) == "Renamed"
    state = (await tab.receive_type("state"))["state"]
    assert [(p["name"], p["external_id"]) for p in state["platforms"]] == [
        ("Main", "a1"),
        ("Renamed", odd),
    ]
    removed = await client.remove_platform("kim", odd)
    assert [p.external_id for p in removed.platforms] == ["a1"]
    assert (await tab.receive_type("state"))["state"]["version"] == removed.state.version
    await tab.close()


async def test_a_mirror_matches_by_external_id_first_then_adopts_by_account(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """Rows mirrored without external ids adopt them by account (same hub ids); then an
    account whose username changed in the host app keeps its row, its id and the active
    choice; two rows can swap external ids; a mirror of what is stored moves nothing."""
    first = await client.mirror_platforms(
        "kim", [account("Main", "kim", None), account("Alt", "kim2", None)]
    )
    ids = [p.id for p in first.platforms]
    adopted = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a1"), account("Alt", "kim2", "a2")]
    )
    assert [(p.id, p.external_id) for p in adopted.platforms] == [(ids[0], "a1"), (ids[1], "a2")]
    # The person switches to Alt, then renames their account on the instance.
    tab = await running.tab((await client.mint_session("kim")).token, "t")
    await tab.send({"type": "switch", "id": "r1", "platform": ids[1], "base": tab.version})
    assert (await tab.receive_type("switched"))["version"] == adopted.state.version + 1
    moved = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a1"), account("Alt", "kim-renamed", "a2")]
    )
    assert [p.id for p in moved.platforms] == ids
    assert moved.state.active == ids[1]  # the active choice stayed with the account
    assert await stored(running, "kim") == [(ids[0], "kim", "a1"), (ids[1], "kim-renamed", "a2")]
    swapped = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a2"), account("Alt", "kim-renamed", "a1")]
    )
    # By external id first: "a2" is now the row that was Alt, and takes Main's account.
    assert await stored(running, "kim") == [(ids[0], "kim-renamed", "a1"), (ids[1], "kim", "a2")]
    assert [p.name for p in swapped.platforms] == ["Alt", "Main"]
    again = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a2"), account("Alt", "kim-renamed", "a1")]
    )
    assert again.state.version == swapped.state.version
    await tab.close()


async def test_external_ids_are_unique_per_user_and_checked(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A mirror listing one external id twice, an add reusing one, an unknown one and another
    user's are refused with nothing changed; a page cannot set one; a bad one in a path is
    not found, and the client refuses what no platform can have before sending."""
    await client.mirror_platforms("kim", [account("Main", "kim", "a1")])
    before = await stored(running, "kim")
    twice = [account("One", "k1", "dup"), account("Two", "k2", "dup")]
    with pytest.raises(HostApiError) as refused:
        await client.mirror_platforms("kim", twice)
    assert (refused.value.status, refused.value.code) == (409, "name_taken")
    reused = PlatformCreate(
        name="Other",
        kind="pixelfed",
        instance_url="https://pixey.org",
        username="k",
        external_id="a1",
    )
    with pytest.raises(HostApiError) as refused:
        await client.add_platform("kim", reused)
    assert (refused.value.status, refused.value.code) == (409, "account_taken")
    await client.upsert_user("lee")
    await client.mirror_platforms("lee", [account("Lee", "lee", "b1")])
    for missing in ("nope", "b1"):  # unknown, and lee's (kim has none such)
        with pytest.raises(HostApiError) as refused:
            await client.remove_platform("kim", missing)
        assert (refused.value.status, refused.value.code) == (404, "unknown_platform")
    for bad in ("", ".", "..", "x\x00", "y" * 201):
        with pytest.raises(HostApiError) as refused:
            await client.remove_platform("kim", bad)
        assert (refused.value.status, refused.value.code) == (422, "bad_request"), bad
    with pytest.raises(HostApiError) as refused:
        await client.mirror_platforms("kim", [account("Main", "kim", "z\x01")])
    assert refused.value.status == 422
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=running.url + "/api/host/users/kim") as http:
        for path in ("/platforms/external/%00", "/platforms/external/" + "y" * 300):
            answer = await http.delete(path, headers=headers)
            assert answer.status_code == 404, (path, answer.text)
        # Not UTF-8 once decoded: uvicorn would make it U+FFFD, which names nothing here.
        await client.mirror_platforms(
            "kim", [account("Main", "kim", "a1"), account("R", "r", "\ufffd")]
        )
        before = await stored(running, "kim")
        for path in ("/platforms/external/%ff", "/platforms/external/%fe%ff"):
            answer = await http.delete(path, headers=headers)
            assert (answer.status_code, answer.json()["reason"]) == (422, "path"), answer.text
    async with httpx.AsyncClient(base_url=running.url + "/api/host/users") as http:
        answer = await http.put("/%ff", json={}, headers=headers)
        assert (answer.status_code, answer.json()["reason"]) == (422, "path")
        assert await user_id_of(running.database, "\ufffd") is None
    assert await stored(running, "kim") == before

    page_login = await running.login("alice")
    async with httpx.AsyncClient(base_url=running.url) as http:
        answer = await http.post(
            "/api/platforms",
            content=msgspec.json.encode(reused),
            headers={"Authorization": f"Bearer {page_login}", "Origin": running.url},
        )
    assert answer.status_code == 422 and "external_id" in answer.json()["message"]


async def test_a_mirror_that_replaces_the_active_account_falls_back_to_the_default(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """The active account is dropped and a new one added in the same mirror: the active
    choice goes to the default, on SQLite too, where the new row may get the dropped one's id
    (no AUTOINCREMENT) and used to inherit the choice."""
    first = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a1", is_default=True), account("Alt", "kim2", "a2")]
    )
    main, alt = (p.id for p in first.platforms)
    tab = await running.tab((await client.mint_session("kim")).token, "t")
    await tab.send({"type": "switch", "id": "r1", "platform": alt, "base": tab.version})
    await tab.receive_type("switched")
    replaced = await client.mirror_platforms(
        "kim", [account("Main", "kim", "a1", is_default=True), account("New", "kim3", "a3")]
    )
    assert replaced.state.active == main, replaced
    while (state := (await tab.receive_type("state"))["state"])["version"] < replaced.state.version:
        pass
    assert state["active"] == main
    await tab.close()


async def test_the_first_logins_of_one_person_at_once_create_one_user(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A host app upserts on every login: two at once for a new name both succeed, one of
    them created it (on PostgreSQL both used to check, and the second insert was a 500)."""
    for n in range(10):
        name = f"twin{n}"
        views = await asyncio.gather(client.upsert_user(name), client.upsert_user(name))
        assert sorted(v.created for v in views) == [False, True], views
        assert views[0].id == views[1].id


async def test_a_user_agent_is_kept_as_the_hubs_login_keeps_one(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """The browser's header as received (long, with control characters) mints a session;
    the hub keeps its first 300 characters without the control characters."""
    agent = "Mozilla/5.0 \x01(X11)" + "x" * 1900
    minted = await client.mint_session("kim", user_agent=agent)
    assert minted.session.user_agent == agent.replace("\x01", "")[:300]
    with pytest.raises(HostApiError) as refused:
        await client.mint_session("kim", user_agent="y" * 2001)
    assert refused.value.status == 422
