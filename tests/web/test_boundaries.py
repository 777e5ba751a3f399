"""Hostile text and ids at the protocol boundary, on SQLite and on PostgreSQL.

NUL (which PostgreSQL cannot store), other control characters, invalid URLs and ids past
their types' range get the documented refusal (``bad_message`` on a WebSocket, 422 or 404
over HTTP), never a 500, and nothing is stored; the hub keeps serving everyone meanwhile.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import quote

import httpx
import pytest

from server.protocol import is_line
from server.web.credentials import COOKIE
from tests.conftest import MakeSettings, RunningHub, other_platform, serve

KEY = "boundary-test-key"
POISON = ["a\u0000b", "\u0000", "tab\there", "line\nbreak", "bell\u0007", "del\u007f"]


@pytest.fixture
async def running(make_on_each_engine: MakeSettings) -> AsyncIterator[RunningHub]:
    async with serve(make_on_each_engine(api_key=KEY)) as hub:
        yield hub


def host(running: RunningHub) -> httpx.AsyncClient:
    return running.http(authorization=f"Bearer {KEY}")


async def test_control_characters_are_refused_at_every_text_field(running: RunningHub) -> None:
    """Every text a client or the host app sends, with NUL or another control character in
    it, is refused as malformed (422, or 404 for a name in a path); nothing is stored. The one
    exception is a minted session's user agent, a header as received: it is kept without
    its control characters."""
    token = await running.login("alice")
    async with running.http() as anonymous, running.http(token) as alice, host(running) as api:
        before = (await alice.get("/api/platforms")).json()["platforms"]
        for text in POISON:
            answers: dict[str, httpx.Response] = {
                "login name": await anonymous.post(
                    "/api/login", json={"username": text, "password": "whatever-pw"}
                ),
                "switch id": await alice.post(
                    "/api/switch", json={"id": text, "platform": 1, "base": 0}
                ),
                "platform name": await alice.post(
                    "/api/platforms",
                    json={
                        "name": text,
                        "kind": "pixelfed",
                        "instance_url": "https://pixey.org",
                        "username": "alice",
                    },
                ),
                "account name": await alice.post(
                    "/api/platforms",
                    json={
                        "name": "Fine",
                        "kind": "pixelfed",
                        "instance_url": "https://pixey.org",
                        "username": text,
                    },
                ),
                "host user name": await api.put(f"/api/host/users/{quote(text, safe='')}", json={}),
                "hold reason": await api.put(
                    "/api/host/users/alice/hold", json={"reason": text, "ttl_s": 5}
                ),
                "session ip": await api.post("/api/host/users/alice/sessions", json={"ip": text}),
                "mirrored name": await api.put(
                    "/api/host/users/alice/platforms",
                    json={
                        "platforms": [
                            {
                                "name": text,
                                "kind": "pixelfed",
                                "instance_url": "https://pixey.org",
                                "username": "alice",
                            }
                        ]
                    },
                ),
            }
            for what, answer in answers.items():
                assert answer.status_code == 422, (what, text, answer.status_code, answer.text)
                assert answer.json()["error"] == "bad_request", (what, answer.text)
            # A name in a path is a name no user can have: unknown, without a lookup.
            answer = await api.get(f"/api/host/users/{quote(text, safe='')}/sessions")
            assert answer.status_code == 404 and answer.json()["error"] == "unknown_user"
        state = (await alice.get("/api/state")).json()["state"]
        platforms = (await alice.get("/api/platforms")).json()["platforms"]
        sessions = (await api.get("/api/host/users/alice/sessions")).json()["sessions"]
    assert state["version"] == 0
    assert platforms == before
    assert len(sessions) == 1  # the login's; no session was minted
    # A user agent is the browser's header as the host app received it: like the hub's own
    # login, minting keeps it without its control characters rather than refusing it.
    async with host(running) as api:
        for text in POISON:
            minted = await api.post("/api/host/users/alice/sessions", json={"user_agent": text})
            assert minted.status_code == 201, minted.text
            kept = minted.json()["session"]["user_agent"]
            assert kept is None or is_line(kept), (text, kept)


async def test_control_characters_in_a_switch_over_the_websocket_are_bad_messages(
    running: RunningHub,
) -> None:
    """A switch id with NUL gets an error (bad_message) and the tab stays; the next valid
    switch is decided as usual."""
    tab = await running.tab(await running.login("bob"))
    target = other_platform(tab.hello["state"])
    for text in POISON:
        await tab.send({"type": "switch", "id": text, "platform": target, "base": 0})
        error = await tab.receive()
        assert error["type"] == "error" and error["code"] == "bad_message", error
        assert "control characters" in error["message"]
    assert (await tab.switch("fine", target))["type"] == "switched"


@pytest.mark.parametrize(
    "url",
    [
        "https://x:99999",
        "https://x:0",
        "https://user:pw@pixey.org",
        "https://pix ey.org",
        "https://pixey.org:80a",
        "https://" + "a" * 600,
        "ftp://pixey.org",
    ],
)
async def test_an_instance_url_is_validated_whole(running: RunningHub, url: str) -> None:
    """A URL with a port out of range, credentials, a bad host or scheme is refused with
    422, by the page's API and the host API alike."""
    body = {"name": "New", "kind": "pixelfed", "instance_url": url, "username": "alice"}
    async with running.http(await running.login("alice")) as alice, host(running) as api:
        answers = [
            await alice.post("/api/platforms", json=body),
            await api.post("/api/host/users/alice/platforms", json=body),
            await api.put("/api/host/users/alice/platforms", json={"platforms": [body]}),
        ]
    for answer in answers:
        assert answer.status_code == 422 and answer.json()["error"] == "bad_request", answer.text


async def test_ids_at_the_edges_of_their_types(running: RunningHub) -> None:
    """Platform ids and versions past 2**62, and path ids past a 64-bit integer, are refused
    as malformed or unknown; those inside are decided (unknown platform, stale)."""
    token = await running.login("alice")
    async with running.http(token) as alice, host(running) as api:
        edges: list[tuple[dict[str, Any], int, str]] = [
            ({"id": "e1", "platform": 2**62, "base": 0}, 404, "unknown_platform"),
            ({"id": "e2", "platform": 2**62 + 1, "base": 0}, 422, "bad_request"),
            ({"id": "e3", "platform": 1, "base": 2**62}, 409, "stale"),
            ({"id": "e4", "platform": 1, "base": 2**63}, 422, "bad_request"),
            ({"id": "e5", "platform": 0, "base": 0}, 422, "bad_request"),
            ({"id": "e6", "platform": -1, "base": -1}, 422, "bad_request"),
            ({"id": "x" * 65, "platform": 1, "base": 0}, 422, "bad_request"),
        ]
        for body, status, code in edges:
            answer = await alice.post("/api/switch", json=body)
            assert answer.status_code == status, (body, answer.text)
            assert code in (answer.json().get("reason"), answer.json().get("error")), answer.text
        for session in (0, 2**63 - 1, 2**63, 10**30):
            answer = await api.delete(f"/api/host/users/alice/sessions/{session}")
            assert answer.status_code == 404, (session, answer.text)
            assert answer.json()["error"] in {"unknown_session", "not_found"}, answer.text
        for platform in (2**63, 10**30):
            answer = await alice.delete(f"/api/platforms/{platform}")
            assert answer.status_code == 404, (platform, answer.text)


async def test_poisoned_requests_never_slow_another_users_switches(running: RunningHub) -> None:
    """Eight concurrent poisoned switches per round from one user, beside another user's
    switches: each poisoned one is refused at once and every one of the other user's
    switches is accepted (a poisoned request used to fail its whole batch)."""
    alice_token, bob_token = await running.login("alice"), await running.login("bob")
    tab = await running.tab(bob_token)
    platforms = [p["id"] for p in tab.hello["state"]["platforms"]]
    version = tab.version
    async with running.http(alice_token) as alice:
        for n in range(10):
            poisoned = [
                alice.post("/api/switch", json={"id": f"p{n}-{k}\u0000", "platform": 1, "base": 0})
                for k in range(8)
            ]
            target = platforms[n % 2 - 1]
            answers = await asyncio.gather(tab.switch(f"b{n}", target, version), *poisoned)
            assert answers[0]["type"] == "switched", answers[0]
            version = answers[0]["version"]
            assert all(a.status_code == 422 for a in answers[1:])
    assert version >= 9  # a switch to the active platform makes no version
    await tab.close()
    assert COOKIE  # the cookie name the sessions above were carried in


async def test_unknown_paths_and_methods_are_answered_in_json_with_every_allowed_method(
    running: RunningHub,
) -> None:
    """A path no route serves is a JSON 404; a method the path does not take is a JSON 405
    whose Allow header names every method the path does take."""
    async with host(running) as api:
        missing = await api.get("/api/host/users/alice/nothing")
        wrong = await api.patch("/api/host/users/alice/platforms")
        wrong_page = await api.put("/api/platforms")
    assert missing.status_code == 404 and missing.json()["error"] == "not_found"
    assert wrong.status_code == 405 and wrong.json()["error"] == "method_not_allowed"
    assert set(wrong.headers["allow"].split(", ")) == {"GET", "HEAD", "PUT", "POST"}
    assert set(wrong_page.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
