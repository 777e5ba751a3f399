"""The HTTP and WebSocket endpoints: auth, origins, bad input, limits and the HTTP fallback."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosedError, InvalidStatus

from server.protocol import restart_reason
from server.storage.users import seed_demo
from server.web.security_headers import CONTENT_SECURITY_POLICY
from tests.conftest import TIMEOUT, MakeSettings, RunningHub, make_settings, other_platform, serve
from tests.support.processes import wait_until


async def refused_status(running: RunningHub, **kwargs: object) -> tuple[int, bytes]:
    with pytest.raises(InvalidStatus) as refused:
        await connect(f"ws://127.0.0.1:{running.port}/ws?tab=x", open_timeout=5, **kwargs)  # type: ignore[arg-type]
    return refused.value.response.status_code, bytes(refused.value.response.body or b"")


async def test_foreign_origin_is_refused_before_the_upgrade(running: RunningHub) -> None:
    """A WebSocket from an origin outside the allowlist gets HTTP 403, even with a valid session."""
    token = await running.login("alice")
    status, body = await refused_status(
        running,
        origin="http://evil.example",
        additional_headers={"Authorization": f"Bearer {token}"},
    )
    assert status == 403 and b"forbidden_origin" in body


async def test_own_and_allowlisted_origins_are_accepted(tmp_path: Path) -> None:
    """The hub's own origin and HUB_ALLOWED_ORIGINS entries may connect."""
    async with serve(make_settings(tmp_path, allowed_origins=("https://app.example",))) as running:
        token = await running.login("alice")
        for origin in (running.url, "https://app.example"):
            tab = await running.tab(token, "a", origin=origin)
            await tab.close()
        async with running.http(token, origin="https://other.example") as client:
            refused = await client.post("/api/switch", json={"id": "r", "platform": 1, "base": 0})
        assert refused.status_code == 403 and refused.json()["error"] == "forbidden_origin"


async def test_missing_and_invalid_sessions_are_refused_before_the_upgrade(
    running: RunningHub,
) -> None:
    """No session, an unknown token, or a malformed tab id: an HTTP error, no WebSocket."""
    assert (await refused_status(running))[0] == 401
    status, body = await refused_status(
        running, additional_headers={"Authorization": "Bearer nope"}
    )
    assert status == 401 and b'"reason":"invalid"' in body
    token = await running.login("alice")
    with pytest.raises(InvalidStatus) as refused:
        await connect(
            f"ws://127.0.0.1:{running.port}/ws?tab=bad%20id",
            additional_headers={"Authorization": f"Bearer {token}"},
        )
    assert refused.value.response.status_code == 400


async def test_cookie_authenticates_a_websocket(running: RunningHub) -> None:
    """A browser's hub_session cookie is enough to connect."""
    token = await running.login("alice")
    async with connect(
        f"ws://127.0.0.1:{running.port}/ws?tab=c",
        additional_headers={"Cookie": f"hub_session={token}"},
        origin=running.url,  # type: ignore[arg-type]
    ) as connection:
        assert '"type":"hello"' in str(await connection.recv())


@pytest.mark.parametrize(
    ("frame", "fragment"),
    [
        ("not json", "not valid JSON"),
        ('{"type":"dance"}', "Unknown message type"),
        ('{"id":"x"}', "no `type` field"),
        ('{"type":"switch","id":"x","base":0}', "missing required field `platform`"),
        ('{"type":"switch","id":"x","platform":"two","base":0}', "Expected `int`"),
        ('{"type":"switch","id":"","platform":1,"base":0}', "length >= 1"),
        ('{"type":"switch","id":"x","platform":1,"base":-1}', "Expected `int` >= 0"),
        ('{"type":"ping","extra":1}', "unknown field `extra`"),
        ("[]", "Expected `object`"),
        (b"\x00binary", "Binary frames are not supported"),
    ],
)
async def test_bad_input_gets_an_error_and_the_connection_stays(
    running: RunningHub, frame: str | bytes, fragment: str
) -> None:
    """Every malformed frame is answered with bad_message, and the tab keeps working."""
    token = await running.login("alice")
    tab = await running.tab(token, "a")
    await tab.send(frame)
    error = await tab.receive()
    assert error["type"] == "error" and error["code"] == "bad_message"
    assert fragment in error["message"]
    answer = await tab.switch("after", other_platform(tab.hello["state"]))
    assert answer["type"] == "switched"
    await tab.close()


async def test_repeated_abuse_closes_with_4002(running: RunningHub) -> None:
    """After max_bad_messages malformed frames the hub closes the tab with 4002."""
    tab = await running.tab(await running.login("alice"), "a")
    for _ in range(running.settings.max_bad_messages + 1):
        await tab.send("garbage")
    code, messages = await tab.closed()
    assert code == 4002
    assert len(messages) == running.settings.max_bad_messages
    assert all(m["code"] == "bad_message" for m in messages)


async def test_oversized_frame_closes_with_1009_and_changes_nothing(running: RunningHub) -> None:
    """A frame over max_message_bytes closes the connection with 1009; other tabs carry on."""
    token = await running.login("alice")
    big, other = await running.tab(token, "big"), await running.tab(token, "other")
    padding = "x" * running.settings.max_message_bytes
    await big.send('{"type":"switch","id":"' + padding + '","platform":2,"base":0}')
    code, _ = await big.closed()
    assert code == 1009
    answer = await other.switch("ok", other_platform(other.hello["state"]))
    assert answer == {"type": "switched", "id": "ok", "version": 1}
    await other.close()


async def test_rate_limit_rejects_excess_switches(tmp_path: Path) -> None:
    """Past the burst, switches are rejected rate_limited with the current state; none applied."""
    # One token per 10 s: no refill can sneak in while the six frames are handled.
    settings = make_settings(tmp_path, messages_per_second=0.1, message_burst=3)
    async with serve(settings) as running:
        tab = await running.tab(await running.login("alice"), "a")
        active = tab.hello["state"]["active"]
        for i in range(6):
            await tab.send({"type": "switch", "id": f"r{i}", "platform": active, "base": 0})
        answers = [await tab.receive() for _ in range(6)]
        reasons = [a.get("reason") for a in answers]
        assert reasons[:3] == [None, None, None]
        assert reasons[3:] == ["rate_limited"] * 3
        assert answers[5]["state"]["version"] == 0
        await tab.close()


async def test_the_http_fallback_is_rate_limited_per_session(tmp_path: Path) -> None:
    """POST /api/switch past the session's burst: 429 rate_limited with the state, nothing
    applied; another session of the same user has a burst of its own, and so does a tab."""
    settings = make_settings(tmp_path, messages_per_second=0.1, message_burst=3)
    async with serve(settings) as running:
        token, other = await running.login("alice"), await running.login("alice")
        tab = await running.tab(token, "a")
        platforms = [p["id"] for p in tab.hello["state"]["platforms"]]
        answers = []
        async with running.http(token, origin=running.url) as http:
            for n in range(6):  # each to the platform not active, from the current version
                body = {"id": f"h{n}", "platform": platforms[(n + 1) % 2], "base": min(n, 3)}
                answers.append(await http.post("/api/switch", json=body))
        assert [a.status_code for a in answers] == [200, 200, 200, 429, 429, 429]
        refused = answers[-1].json()
        assert refused["reason"] == "rate_limited" and refused["state"]["version"] == 3
        assert (await running.hub.store.load_state(1)).version == 3
        async with running.http(other, origin=running.url) as http:
            body = {"id": "o1", "platform": platforms[0], "base": 3}
            assert (await http.post("/api/switch", json=body)).json()["version"] == 4
        assert (await tab.switch("t1", platforms[1], base=4)) == {
            "type": "switched",
            "id": "t1",
            "version": 5,
        }
        await tab.close()


async def test_tab_limit_closes_the_extra_tab_with_4003(tmp_path: Path) -> None:
    """A user's tab beyond max_tabs_per_user is closed with 4003; a reused tab id replaces."""
    async with serve(make_settings(tmp_path, max_tabs_per_user=2)) as running:
        token = await running.login("alice")
        first, _second = await running.tab(token, "a"), await running.tab(token, "b")
        with pytest.raises(ConnectionClosedError) as closed:
            await running.tab(token, "c")
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 4003
        # The same tab id again (a reload) takes the old connection's place with 4005.
        await running.tab(token, "a")
        code, _ = await first.closed()
        assert code == 4005
        assert len(running.hub.tabs()) == 2


async def test_silent_tab_is_closed_with_4004(tmp_path: Path) -> None:
    """A tab that sends nothing, not even pings, for idle_timeout_s is closed with 4004."""
    async with serve(make_settings(tmp_path, idle_timeout_s=1.0)) as running:
        token = await running.login("alice")
        silent, talking = await running.tab(token, "silent"), await running.tab(token, "talking")
        for _ in range(20):
            await talking.send({"type": "ping"})
            await talking.receive()
            await asyncio.sleep(0.1)
        code, _ = await silent.closed()
        assert code == 4004
        await talking.send({"type": "ping"})
        assert await talking.receive() == {"type": "pong"}


async def test_shutdown_closes_every_tab_with_1012(running: RunningHub) -> None:
    """Stopping the hub closes every tab with 1012 (service restart): with HUB_RECONNECT_RATE
    set, telling each within how long to come back (its connections at that rate)."""
    assert running.settings.reconnect_rate == 0  # the default: a bare 1012
    tabs = [await running.tab(await running.login(name), name) for name in ("alice", "bob")]
    await running.stop()
    for tab in tabs:
        assert (await tab.closed())[0] == 1012
        assert tab.connection.close_reason == ""


@pytest.mark.parametrize(("rate", "reason"), [(4, restart_reason(1500)), (0, "")])
async def test_the_restart_window_is_the_tabs_at_the_reconnect_rate(
    make_on_each_engine: MakeSettings, rate: float, reason: str
) -> None:
    """Six tabs at four a second: each is asked to come back within 1.5 s; with no rate (0),
    a bare 1012 (the client's backoff alone). On each engine."""
    async with serve(make_on_each_engine(reconnect_rate=rate)) as running:
        token = await running.login("alice")
        tabs = [await running.tab(token, f"t{n}") for n in range(6)]
        connections = running.server.server_state.connections
        await wait_until(lambda: len(connections) == 6, TIMEOUT, "the login's connection closed")
        await running.stop()
    for tab in tabs:
        assert (await tab.closed())[0] == 1012
        assert tab.connection.close_reason == reason


async def test_http_fallback_has_the_same_semantics_and_broadcast(running: RunningHub) -> None:
    """POST /api/switch answers 200/409/404/422/401 and broadcasts to the user's tabs."""
    token = await running.login("alice")
    tab = await running.tab(token, "a")
    target = other_platform(tab.hello["state"])
    async with running.http(token) as client:
        state = (await client.get("/api/state")).json()
        assert state["state"] == tab.hello["state"] and state["user"]["name"] == "alice"

        switched = await client.post(
            "/api/switch", json={"id": "h1", "platform": target, "base": 0}
        )
        assert switched.status_code == 200
        assert switched.json() == {"type": "switched", "id": "h1", "version": 1}
        broadcast = await tab.receive_type("state")
        assert broadcast["cause"] == {"kind": "switch", "tab": None, "request": "h1"}

        stale = await client.post("/api/switch", json={"id": "h2", "platform": target, "base": 0})
        assert stale.status_code == 409 and stale.json()["reason"] == "stale"
        assert stale.json()["state"]["version"] == 1

        unknown = await client.post("/api/switch", json={"id": "h3", "platform": 9999, "base": 1})
        assert unknown.status_code == 404 and unknown.json()["reason"] == "unknown_platform"

        bad = await client.post("/api/switch", content=b'{"id":"h4"}')
        assert bad.status_code == 422 and bad.json()["error"] == "bad_request"

        assert (await client.get("/api/state")).json()["state"]["version"] == 1
    async with running.http() as anonymous:
        response = await anonymous.post(
            "/api/switch", json={"id": "h5", "platform": target, "base": 1}
        )
        assert response.status_code == 401 and response.json()["error"] == "unauthenticated"
    await tab.close()


async def test_healthz_and_static_files(running: RunningHub) -> None:
    """/healthz reports the version and the database; / and the client are served."""
    async with running.http() as client:
        health = await client.get("/healthz")
        assert health.status_code == 200
        assert health.json() == {
            "status": "ok",
            "version": "0.1.0",
            "tabs": 0,
            "pid": os.getpid(),  # the hub runs in this process
            "connections_checked_out": 0,
        }
        page = await client.get("/")
        assert page.status_code == 200 and "navigation.js" in page.text
        script = await client.get("/client/navigation.js")
        assert script.status_code == 200 and "export class HubClient" in script.text


async def test_an_idle_tab_holds_no_writer_task(running: RunningHub) -> None:
    """A tab's writer runs only while its outbox holds frames: idle tabs cost no task, and
    the next broadcast starts one again."""
    token = await running.login("alice")
    first, second = await running.tab(token, "first"), await running.tab(token, "second")
    tabs = running.hub.tabs()
    await wait_until(lambda: all(tab.writer is None for tab in tabs), TIMEOUT, "writers end")
    answer = await first.switch("idle-1", other_platform(first.hello["state"]))
    assert answer["type"] == "switched"
    assert (await second.receive_type("state"))["state"]["version"] == answer["version"]
    await wait_until(lambda: all(tab.writer is None for tab in tabs), TIMEOUT, "writers end")
    assert len(tabs) == 2 and not any(tab.gone for tab in tabs)


async def test_the_starlette_app_alone_serves_tabs_too(tmp_path: Path) -> None:
    """Under uvicorn_config, /ws skips Starlette (_FrontDoor); the Starlette app by itself, as
    another ASGI server would run it, serves the same endpoint."""
    running = RunningHub(make_settings(tmp_path))
    assert type(running.server.config.app).__name__ == "_FrontDoor"
    running.server.config.app = running.app
    await running.start()
    try:
        await seed_demo(running.database)
        token = await running.login("alice")
        first, second = await running.tab(token, "first"), await running.tab(token, "second")
        answer = await first.switch("plain", other_platform(first.hello["state"]))
        assert answer["type"] == "switched"
        assert (await second.receive_type("state"))["state"]["version"] == answer["version"]
    finally:
        await running.stop()


async def test_the_listening_socket_has_the_configured_backlog(tmp_path: Path) -> None:
    """HUB_ACCEPT_BACKLOG reaches listen(): the kernel reports it as the listening socket's
    Send-Q (ss(8)), capped at net.core.somaxconn."""
    running = RunningHub(make_settings(tmp_path, accept_backlog=1234))
    await running.start()
    try:
        port = running.url.rsplit(":", 1)[1]

        def listen_queue() -> tuple[list[str], int]:
            command = ["ss", "-Hltn", f"sport = :{port}"]
            listing = subprocess.run(command, capture_output=True, text=True, check=True)
            return listing.stdout.split(), int(Path("/proc/sys/net/core/somaxconn").read_text())

        listing, cap = await asyncio.to_thread(listen_queue)
        assert int(listing[2]) == min(1234, cap), listing
    finally:
        await running.stop()
    with pytest.raises(ValueError, match="accept_backlog"):
        make_settings(tmp_path, accept_backlog=0)


async def test_pages_scripts_and_answers_carry_the_security_headers(running: RunningHub) -> None:
    """The page, its scripts and the API's answers (errors included) carry the CSP, nosniff,
    no-referrer and no-framing headers."""
    async with httpx.AsyncClient(base_url=running.url) as http:
        answers = [
            await http.get("/"),
            await http.get("/client/navigation.js"),
            await http.get("/client/demo.js"),
            await http.get("/api/state"),
            await http.post("/api/login", content=b"{"),
        ]
    for answer in answers:
        assert answer.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "frame-ancestors 'none'" in answer.headers["content-security-policy"]
        assert answer.headers["x-content-type-options"] == "nosniff"
        assert answer.headers["referrer-policy"] == "no-referrer"
    assert answers[1].headers["content-type"].startswith("text/javascript")
