"""server/web/host_api.py, server/client.py and server/web/openapi.py: the host app's API, end
to end.

A real hub with an API key, called through the package's own client (AsyncHostClient) and raw
HTTP; tabs are real WebSockets connected with the sessions the API mints.
"""

from __future__ import annotations

import asyncio
import re
import time
import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import msgspec
import pytest
from sqlalchemy import Connection, func, select

from platform_hub_client import AsyncHostClient, HostApiError
from server import db
from server.api import PlatformCreate, PlatformMirrored, PlatformUpdate
from server.errors import UsageError
from server.storage.users import add_user, user_id_of
from server.web import host_api as host
from server.web.openapi import ENDPOINTS
from tests.conftest import (
    MakeSettings,
    RunningHub,
    make_settings,
    other_platform,
    serve,
    session_ended,
)

KEY = "host-api-test-key"
ACCOUNTS = [
    PlatformMirrored(
        name="Pixelfed", kind="pixelfed", instance_url="https://pixelfed.social", username="dana"
    ),
    PlatformMirrored(
        name="Mastodon",
        kind="mastodon",
        instance_url="https://mastodon.social",
        username="dana",
        is_default=True,
    ),
]


@pytest.fixture
async def running(make_on_each_engine: MakeSettings) -> AsyncIterator[RunningHub]:
    """A hub with the host API on, on a fresh SQLite file and on a fresh PostgreSQL database."""
    async with serve(make_on_each_engine(api_key=KEY)) as hub:
        yield hub


@pytest.fixture
async def client(running: RunningHub) -> AsyncIterator[AsyncHostClient]:
    async with AsyncHostClient(running.url, KEY) as hub:
        yield hub


async def test_the_api_wants_its_key(running: RunningHub) -> None:
    """No key, a wrong key or a key in the wrong place: 401 with reason api_key, and nothing
    is created."""
    async with httpx.AsyncClient(base_url=running.url) as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}):
            response = await http.put("/api/host/users/eve", json={}, headers=headers)
            assert response.status_code == 401
            assert response.json()["error"] == "unauthenticated"
            assert response.json()["reason"] == "api_key"
    async with AsyncHostClient(running.url, KEY) as client:
        with pytest.raises(HostApiError) as refused:
            await client.platforms("eve")
        assert (refused.value.status, refused.value.code) == (404, "unknown_user")


async def test_without_hub_api_key_the_api_is_off(tmp_path: Path) -> None:
    """A hub without HUB_API_KEY refuses every host API call, even one with a key."""
    async with serve(make_settings(tmp_path)) as off, AsyncHostClient(off.url, KEY) as client:
        with pytest.raises(HostApiError) as refused:
            await client.upsert_user("eve")
        assert refused.value.status == 401 and "HUB_API_KEY" in str(refused.value.message)
        assert await user_id_of(off.database, "eve") is None


async def test_a_minted_session_opens_a_tab_with_the_mirrored_platforms(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """Upsert a user (created, then found), mirror two platforms, mint a session: a tab
    connects with its token and sees them, and the session lists its device hints."""
    assert (await client.upsert_user("dana")).created
    assert not (await client.upsert_user("dana")).created
    mirrored = await client.mirror_platforms("dana", ACCOUNTS)
    assert [(p.name, p.is_default) for p in mirrored.platforms] == [
        ("Pixelfed", False),
        ("Mastodon", True),
    ]
    minted = await client.mint_session("dana", user_agent="Firefox on Linux", ip="10.0.0.7")
    tab = await running.tab(minted.token, "t")
    state = tab.hello["state"]
    assert [p["name"] for p in state["platforms"]] == ["Pixelfed", "Mastodon"]
    assert state["active"] == mirrored.state.active == mirrored.platforms[1].id
    listed = await client.sessions("dana")
    assert [(s.id, s.user_agent, s.ip) for s in listed.sessions] == [
        (minted.session.id, "Firefox on Linux", "10.0.0.7")
    ]
    assert listed.sessions[0].expires_at == tab.hello["session"]["expires_at"]
    await tab.close()


async def test_revoking_one_session_or_all_ends_their_tabs_within_a_second(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """Revoke one of two sessions: its tabs end (4001, revoked) and the other's stay; revoking
    another user's session is refused and ends nothing; revoke all ends the rest."""
    await client.upsert_user("dana")
    await client.mirror_platforms("dana", ACCOUNTS)
    first, second = await client.mint_session("dana"), await client.mint_session("dana")
    first_tabs = [await running.tab(first.token, f"a{n}") for n in range(2)]
    second_tab = await running.tab(second.token, "b")
    alice = await running.tab(await running.login("alice"), "alice")
    alice_sessions = running.hub.session_ids()
    alice_session = next(
        s for s in alice_sessions if s not in {first.session.id, second.session.id}
    )

    with pytest.raises(HostApiError) as refused:
        await client.revoke_session("dana", alice_session)
    assert (refused.value.status, refused.value.code) == (404, "unknown_session")

    started = time.monotonic()
    revoked = await client.revoke_session("dana", first.session.id)
    assert (revoked.sessions, revoked.tabs) == (1, 2)
    for tab in first_tabs:
        code, messages = await tab.closed(within=1.0)
        assert code == 4001 and messages[-1] == session_ended("revoked")
    print(f"\none session's tabs ended {time.monotonic() - started:.3f} s after the call")
    assert [s.id for s in (await client.sessions("dana")).sessions] == [second.session.id]
    await second_tab.send({"type": "ping"})
    assert (await second_tab.receive())["type"] == "pong"

    everything = await client.revoke_sessions("dana")
    assert (everything.sessions, everything.tabs) == (1, 1)
    assert (await second_tab.closed(within=1.0))[0] == 4001
    assert (await client.sessions("dana")).sessions == ()
    await alice.send({"type": "ping"})  # another user's tab is untouched
    assert (await alice.receive())["type"] == "pong"
    await alice.close()


async def test_the_host_app_ends_sessions_as_a_logout_when_it_says_so(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """reason=logout: the tabs hear logout (and the words for it), for one session and for
    all; any other reason is 422 and ends nothing."""
    await client.upsert_user("finn")
    await client.mirror_platforms("finn", ACCOUNTS)
    first, second = await client.mint_session("finn"), await client.mint_session("finn")
    tab, other = await running.tab(first.token, "a"), await running.tab(second.token, "b")
    async with httpx.AsyncClient(base_url=running.url) as http:
        headers = {"Authorization": f"Bearer {KEY}"}
        for bad in ("expired", "LOGOUT", "", "logout\x00"):
            for path in ("/sessions", f"/sessions/{first.session.id}"):
                answer = await http.delete(
                    f"/api/host/users/finn{path}", params={"reason": bad}, headers=headers
                )
                assert answer.status_code == 422, (bad, answer.text)
                assert answer.json()["reason"] == "reason"
        twice = await http.delete(  # said twice: refused, not decided by the last one
            "/api/host/users/finn/sessions",
            params=[("reason", "revoked"), ("reason", "logout")],
            headers=headers,
        )
        assert twice.status_code == 422 and twice.json()["reason"] == "reason"
    assert len((await client.sessions("finn")).sessions) == 2  # nothing ended

    assert (await client.revoke_session("finn", first.session.id, reason="logout")).tabs == 1
    ended = session_ended("logout")
    assert ended["message"] == "You are signed out."
    assert await tab.closed() == (4001, [ended])
    assert (await client.revoke_sessions("finn", reason="logout")).tabs == 1
    assert await other.closed() == (4001, [ended])


async def test_platform_changes_through_the_api_reach_the_users_tabs(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A mirror that swaps names, deactivates the active one, drops one and adds one is a
    single new version on every tab; the other calls work as the user's own do."""
    await client.upsert_user("dana")
    start = await client.mirror_platforms("dana", ACCOUNTS)
    minted = await client.mint_session("dana")
    tab = await running.tab(minted.token, "t")
    pixelfed, mastodon = (p.id for p in start.platforms)
    mirrored_list = [
        PlatformMirrored(
            name="Mastodon",  # the names swap
            kind="pixelfed",
            instance_url="https://pixelfed.social",
            username="dana",
            is_default=True,
        ),
        PlatformMirrored(
            name="Pixelfed",
            kind="mastodon",
            instance_url="https://mastodon.social",
            username="dana",
            is_active=False,
        ),
        PlatformMirrored(
            name="Art", kind="pixelfed", instance_url="https://pixey.org", username="dana"
        ),
    ]
    mirrored = await client.mirror_platforms("dana", mirrored_list)
    state = (await tab.receive_type("state"))["state"]
    assert state["version"] == start.state.version + 1 == mirrored.state.version
    assert state["active"] == pixelfed  # the active one (Mastodon) went inactive: the default
    assert [(p["id"], p["name"]) for p in state["platforms"]] == [
        (pixelfed, "Mastodon"),
        (mirrored.platforms[2].id, "Art"),
    ]
    assert [p.is_active for p in mirrored.platforms] == [True, False, True]
    # The same list again (a host app mirrors on every login) is answered, on both engines:
    # renamed rows are parked under names PostgreSQL can store.
    again = await client.mirror_platforms("dana", ACCOUNTS)
    mirrored = await client.mirror_platforms("dana", list(mirrored_list))
    assert [p.name for p in again.platforms] == [a.name for a in ACCOUNTS]
    await tab.receive_type("state")
    await tab.receive_type("state")

    with pytest.raises(HostApiError) as refused:
        await client.mirror_platforms("dana", [ACCOUNTS[0], ACCOUNTS[0]])
    assert (refused.value.status, refused.value.code) == (409, "name_taken")
    added = await client.add_platform(
        "dana",
        PlatformCreate(
            name="Work", kind="mastodon", instance_url="https://hachyderm.io", username="d"
        ),
    )
    work = next(p.id for p in added.platforms if p.name == "Work")
    await client.change_platform("dana", work, PlatformUpdate(is_default=True))
    removed = await client.remove_platform("dana", mastodon)
    assert mastodon not in [p.id for p in removed.platforms]
    versions: list[int] = []
    async with asyncio.timeout(5):
        while not versions or versions[-1] < removed.state.version:
            versions.append((await tab.receive_type("state"))["state"]["version"])
    assert versions == [mirrored.state.version + n for n in (1, 2, 3)]
    await tab.close()


async def test_a_platform_change_that_changes_nothing_moves_no_version(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A host app mirrors on every login: the same list again (with or without naming the
    default), a rename to the same name and making the default the default answer the
    current state at the same version, write no row, tell no tab, and leave a tab's switch
    based on that version current."""
    await client.upsert_user("erin")
    start = await client.mirror_platforms("erin", ACCOUNTS)
    tab = await running.tab((await client.mint_session("erin")).token, "t")
    version = start.state.version
    default = next(p for p in start.platforms if p.is_default)
    user_id = await user_id_of(running.database, "erin")
    assert user_id is not None

    def last_write(connection: Connection) -> object:
        column = db.platforms.c.updated_at
        return connection.execute(
            select(func.max(column)).where(db.platforms.c.user_id == user_id)
        ).scalar_one()

    # Without is_default, the first active account (by id) is the default: Pixelfed here.
    unnamed = [msgspec.structs.replace(a, is_default=False) for a in ACCOUNTS]
    first = await client.mirror_platforms("erin", unnamed)
    assert [p.is_default for p in first.platforms] == [True, False]
    assert first.state.version == version + 1
    version, start, default = first.state.version, first, first.platforms[0]
    while tab.version < version:
        await tab.receive_type("state")
    heard = len(tab.received)
    written = await running.database.read(last_write)
    for answer in [
        await client.mirror_platforms("erin", unnamed),  # no default named: none moves
        await client.mirror_platforms("erin", list(reversed(unnamed))),  # order is no change
        await client.change_platform("erin", default.id, PlatformUpdate(name=default.name)),
        await client.change_platform("erin", default.id, PlatformUpdate(is_default=True)),
        await client.platforms("erin"),
    ]:
        assert answer.state == start.state and answer.platforms == start.platforms
    assert await running.database.read(last_write) == written  # nothing was written
    # The next message the tab gets is the answer to its switch at the version it had: no
    # state came in between, and the switch was not made stale.
    switched = await tab.switch("e1", other_platform(tab.hello["state"]), base=version)
    assert switched["type"] == "switched" and switched["version"] == version + 1, switched
    before_answer = tab.received[heard : tab.received.index(switched)]
    assert [m for m in before_answer if m["type"] == "state"] == []
    # A mirror that does change something still moves the version, once.
    renamed = [msgspec.structs.replace(ACCOUNTS[0], name="Renamed"), *ACCOUNTS[1:]]
    changed = await client.mirror_platforms("erin", renamed)
    assert changed.state.version == version + 2
    async with asyncio.timeout(5):
        while tab.version < version + 2:
            await tab.receive_type("state")
    assert tab.version == version + 2
    await tab.close()


async def test_the_openapi_document_describes_every_route(running: RunningHub) -> None:
    """GET /api/host/openapi.json (no key needed) names exactly the routes the hub serves,
    and every schema it refers to is defined."""
    async with httpx.AsyncClient(base_url=running.url) as http:
        response = await http.get("/api/host/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.1")
    served = {
        (method.lower(), re.sub(r":\w+}", "}", route.path))
        for route in host.routes()
        for method in route.methods or ()
        if method != "HEAD" and not route.path.endswith("openapi.json")
    }
    described = {(m, p) for p, methods in document["paths"].items() for m in methods}
    assert described == served == {(method, path) for method, path, *_ in ENDPOINTS}
    text = response.text
    for name in document["components"]["schemas"]:
        assert f'"#/components/schemas/{name}"' in text or name in {"ErrorCode"}
    refs = {part.split('"')[0] for part in text.split("#/components/schemas/")[1:]}
    assert refs <= set(document["components"]["schemas"])


async def test_an_upsert_with_a_password_sets_it_for_a_new_and_an_existing_user(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A password given at creation logs in; given again for the existing user, it replaces
    the old one; an upsert without one keeps it."""
    async with httpx.AsyncClient(base_url=running.url) as http:

        async def login(password: str) -> int:
            body = {"username": "erin", "password": password}
            return (await http.post("/api/login", json=body)).status_code

        assert (await client.upsert_user("erin", "first-password")).created
        assert await login("first-password") == 200
        assert not (await client.upsert_user("erin", "second-password")).created
        assert (await login("first-password"), await login("second-password")) == (401, 200)
        await client.upsert_user("erin")
        assert await login("second-password") == 200


async def test_a_password_reset_ends_the_users_other_sessions_unless_told_not_to(
    running: RunningHub, client: AsyncHostClient
) -> None:
    """A new password for an existing user ends its live sessions (their tabs get
    session_ended, revoked) in the same transaction; with end_sessions false they stay."""
    await client.upsert_user("fay", "first-password")
    old = await running.login("fay", "first-password")
    tab = await running.tab(old, "old")
    reset = await client.upsert_user("fay", "second-password")
    assert reset.sessions_ended == 1
    code, messages = await tab.closed()
    assert code == 4001 and session_ended("revoked") in messages
    kept = await running.login("fay", "second-password")
    again = await client.upsert_user("fay", "third-password", end_sessions=False)
    assert again.sessions_ended == 0
    async with running.http(kept) as http:
        assert (await http.get("/api/state")).status_code == 200


async def test_user_names_follow_one_written_rule(running: RunningHub) -> None:
    """docs/integration.md's rule: 1 to 64 characters, no control character, no "/", not "."
    or ".."; case and Unicode form count (two users). Refused names create nothing."""
    headers = {"Authorization": f"Bearer {KEY}"}
    async with httpx.AsyncClient(base_url=running.url + "/api/host/users/") as http:
        for name in ("x" * 65, "a%00b", "tab%09in", "%2E", "%2E%2E", "a%2Fb"):
            answer = await http.put(name, json={}, headers=headers)
            assert answer.status_code in (404, 422), (name, answer.text)
        for name in ("x" * 65, "a\x00b", "tab\tin", ".", "..", "a/b"):
            assert await user_id_of(running.database, name) is None
        for name in ("x" * 64, "Zoë", "Zoe\u0308", "zoë", "ZOË"):
            answer = await http.put(urllib.parse.quote(name, safe=""), json={}, headers=headers)
            assert answer.status_code == 201 and answer.json()["name"] == name, answer.text
        ids = {await user_id_of(running.database, n) for n in ("Zoë", "Zoe\u0308", "zoë", "ZOË")}
        assert len(ids) == 4 and None not in ids
    with pytest.raises(UsageError):
        await add_user(running.database, "a/b", None)
