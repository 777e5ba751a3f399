"""Hostile input and access: only documented answers, never a crash, never a state change.

The handshake matrix and the fuzzing of the live endpoint use a real hub (the fuzzing one a
separate process, driven by a synchronous websockets client under Hypothesis).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import string
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import Connection, update
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as connect_sync

from server import db
from server.errors import BadMessage
from server.logs import redact
from server.protocol import Ping, Switch, decode
from server.settings import Settings
from server.storage.sessions import token_hash
from server.web.credentials import COOKIE
from tests.conftest import RunningHub, make_settings, other_platform, serve
from tests.support.load import RawFlood
from tests.support.population import seed_demo_file
from tests.support.processes import HubProcess

# Handshakes.


async def handshake(running: RunningHub, headers: dict[str, str]) -> int:
    """Try a WebSocket handshake; return the HTTP status (101 if it was accepted)."""
    try:
        connection = await connect(
            f"ws://127.0.0.1:{running.port}/ws?tab=h", additional_headers=headers
        )
    except InvalidStatus as refused:
        return refused.response.status_code
    await connection.close()
    return 101


async def test_the_handshake_is_refused_for_every_bad_origin_and_credential(
    running: RunningHub,
) -> None:
    """403 for foreign and look-alike origins, 401 for bad sessions: never 101."""
    port = running.port
    token = await running.login("alice")
    cookie = {"Cookie": f"{COOKIE}={token}"}
    own = {"Origin": f"http://127.0.0.1:{port}"}
    assert await handshake(running, {**own, **cookie}) == 101  # the baseline is accepted

    for origin in (
        "http://evil.example",
        f"http://127.0.0.1:{port}.evil",  # look-alikes
        f"http://127.0.0.1.evil:{port}",
        f"http://evil.example/?http://127.0.0.1:{port}",
        f"http://127.0.0.1:{port + 1}",  # another port
        f"https://127.0.0.1:{port}",  # another scheme
        "null",
    ):
        assert await handshake(running, {"Origin": origin, **cookie}) == 403, origin
    # A cookie without an Origin is not from a page: refused. A bearer token may omit it.
    assert await handshake(running, cookie) == 403
    assert await handshake(running, {"Authorization": f"Bearer {token}"}) == 101

    # Missing, forged, expired and revoked sessions.
    assert await handshake(running, own) == 401
    assert await handshake(running, {**own, "Cookie": f"{COOKIE}={token[:-2]}xx"}) == 401
    expired = await running.login("alice")

    def expire(connection: Connection) -> None:
        past = running.database.clock() - dt.timedelta(seconds=1)
        sessions = db.login_sessions
        connection.execute(
            update(sessions)
            .where(sessions.c.token_hash == token_hash(expired))
            .values(idle_expires_at=past)
        )

    await running.database.write(expire)
    assert await handshake(running, {**own, "Cookie": f"{COOKIE}={expired}"}) == 401
    revoked = await running.login("alice")
    async with running.http(revoked) as http:
        assert (await http.post("/api/logout")).status_code == 200
    assert await handshake(running, {**own, "Cookie": f"{COOKIE}={revoked}"}) == 401
    assert running.hub.tabs() == []


async def test_a_secure_deployment_sets_secure_cookies_and_the_token_is_nowhere_on_disk(
    tmp_path: Path,
) -> None:
    async with serve(make_settings(tmp_path, cookie_secure=True)) as running:
        async with running.http() as http:
            response = await http.post(
                "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
            )
        cookie = response.headers["set-cookie"]
        assert "Secure" in cookie and "HttpOnly" in cookie and "SameSite=lax" in cookie
        assert f"Max-Age={int(running.settings.session_absolute_s)}" in cookie
        token = response.cookies[COOKIE]
    stored = b"".join(p.read_bytes() for p in sorted(tmp_path.glob("hub.db*")))  # noqa: ASYNC240
    assert token.encode() not in stored
    assert token_hash(token).encode() in stored  # what is kept instead


async def test_a_stalled_handshake_is_closed_at_its_deadline(tmp_path: Path) -> None:
    """A client that never finishes its request headers is dropped, without an answer."""
    async with serve(make_settings(tmp_path, handshake_timeout_s=0.3)) as running:
        for opening in (b"", b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"):
            reader, writer = await asyncio.open_connection("127.0.0.1", running.port)
            writer.write(opening)
            assert await asyncio.wait_for(reader.read(), 5) == b""  # closed, nothing sent
            writer.close()
        # A client that finishes in time is served as usual.
        async with httpx.AsyncClient(base_url=running.url) as http:
            assert (await http.get("/healthz")).status_code == 200


async def test_a_flooding_tab_is_limited_then_closed_and_other_users_keep_working(
    running: RunningHub,
) -> None:
    """300 switches at once from one tab: past its burst they are refused `rate_limited`, then
    the flood closes the tab with 4002; another user's switch meanwhile goes through."""
    bob = await running.tab(await running.login("bob"), "flood")
    alice = await running.tab(await running.login("alice"), "calm")
    for n in range(300):
        await bob.send({"type": "switch", "id": f"f{n}", "platform": 10**6, "base": 0})
    answer = await alice.switch("calm-1", other_platform(alice.hello["state"]))
    assert answer["type"] == "switched"
    code, messages = await bob.closed()
    reasons = [m.get("reason") for m in messages if m["type"] == "rejected"]
    assert code == 4002
    # The bucket refills while the flood is worked through (20 a second), so how many frames
    # got an answer before the run of refusals depends on the machine's speed; the run that
    # closes the tab does not: max_bad_messages refusals in a row, the next frame closes it.
    limit = running.settings.max_bad_messages
    assert reasons[-limit:] == ["rate_limited"] * limit
    assert set(reasons) == {"unknown_platform", "rate_limited"}


async def test_a_session_closed_for_flooding_waits_for_its_rate_limit_before_a_new_tab(
    tmp_path: Path,
) -> None:
    """After a 4002 for flooding, the session's next tab is held before its handshake
    completes until the rate limit has refilled (here 4 messages at 2 a second: 2 s), then
    served with a full burst; another session of the same user connects at once."""
    settings = make_settings(tmp_path, messages_per_second=2, message_burst=4)
    async with serve(settings) as running:
        flooder_token, calm_token = await running.login("bob"), await running.login("bob")
        flooder = await running.tab(flooder_token, "flood")
        for n in range(30):
            await flooder.send({"type": "switch", "id": f"f{n}", "platform": 10**6, "base": 0})
        assert (await flooder.closed())[0] == 4002

        held = asyncio.create_task(running.tab(flooder_token, "again"))
        calm = await running.tab(calm_token, "calm")  # another session: not held
        done, _ = await asyncio.wait([held], timeout=0.5)
        assert not done, "the flooding session's new tab was accepted during its cooldown"
        again = await held
        platforms = [p["id"] for p in again.hello["state"]["platforms"]]
        answers, version = [], again.version
        for n in range(4):  # a full burst again
            answers.append(await again.switch(f"a{n}", platforms[n % 2], base=version))
            version = answers[-1].get("version", version)
        assert [a["type"] for a in answers] == ["switched"] * 4, answers
        await again.close()
        await calm.close()


async def test_a_tab_that_floods_and_never_answers_the_close_is_dropped_unread(
    running: RunningHub,
) -> None:
    """A raw client writes switches as fast as TCP takes them and never answers the close.

    The hub parses only what it reads, closes the tab (4002), then drops the connection
    instead of parsing the rest for its close reply (uvicorn alone reads on for 10 s: hundreds
    of MB here). So the bytes the flooder gets into the socket stay within the kernel's
    buffers and one read, and another user is served meanwhile.
    """
    token = await running.login("bob")
    flood = RawFlood(
        running.url.replace("http", "ws") + "/ws?tab=flood", {"Authorization": f"Bearer {token}"}
    )
    async with asyncio.timeout(30):  # far past uvicorn's own 10 s close timeout
        assert await flood.run(until=lambda: False)
    assert flood.close_code() == 4002
    assert flood.written < 64 * 2**20, f"the flooder got {flood.written / 2**20:.0f} MiB in"
    alice = await running.tab(await running.login("alice"), "calm")
    answer = await alice.switch("calm-1", other_platform(alice.hello["state"]))
    assert answer["type"] == "switched"


@pytest.mark.parametrize("log_format", ["text", "json"])
async def test_tokens_are_never_logged(tmp_path: Path, log_format: str) -> None:
    """Run a hub process at debug level through logins, tabs, switches, a forged token and
    logouts; neither a token nor its hash appears in its log. In JSON every line is one
    object, and what a tab's connection logs names its tab, user and switch request."""
    settings = make_settings(tmp_path, log_level="debug", log_format=log_format)
    await seed_demo_file(settings)
    log = tmp_path / "hub.log"
    hub = await HubProcess(settings, log).start()
    tokens = []
    try:
        async with httpx.AsyncClient(base_url=hub.url) as http:
            for _ in range(2):
                login = await http.post(
                    "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
                )
                tokens.append(login.cookies[COOKIE])
            origin = {"Origin": hub.url}
            async with connect(
                f"ws://127.0.0.1:{hub.port}/ws?tab=a",
                additional_headers={**origin, "Cookie": f"{COOKIE}={tokens[0]}"},
            ) as tab:
                await tab.recv()
                await tab.send(json.dumps({"type": "switch", "id": "r", "platform": 2, "base": 0}))
                await tab.recv()
            with pytest.raises(InvalidStatus):
                await connect(
                    f"ws://127.0.0.1:{hub.port}/ws?tab=b",
                    additional_headers={"Authorization": f"Bearer {tokens[1]}x"},
                )
            # A quoted cookie value, and a token in a query string (refused, but logged).
            quoted = await http.get("/api/state", headers={"Cookie": f'{COOKIE}="{tokens[1]}"'})
            assert quoted.status_code == 200
            await http.get(f"/api/state?token={tokens[1]}&access_token={tokens[1]}")
            with pytest.raises(InvalidStatus):
                await connect(f"ws://127.0.0.1:{hub.port}/ws?tab=c&token={tokens[1]}")
            http.cookies.set(COOKIE, tokens[1])
            await http.get("/api/state")
            await http.post("/api/logout", headers=origin)
    finally:
        await hub.terminate()
    text = log.read_text()
    assert "GET /api/state" in text  # the log did record the requests
    for token in tokens:
        assert token not in text and token_hash(token) not in text
        assert token[:16] not in text
    if log_format == "json":
        records = [json.loads(line) for line in text.splitlines() if line.strip()]
        assert all({"time", "level", "logger", "message"} <= set(r) for r in records)
        accepted = [r for r in records if "[accepted]" in r["message"]]
        assert accepted and accepted[0]["tab"] == "a" and accepted[0]["user"] == 1
        decided = [r for r in records if r["message"] == "switch to platform 2: accepted"]
        assert decided and decided[0]["request"] == "r" and decided[0]["tab"] == "a"


def test_the_log_filter_redacts_cookies_and_bearer_tokens() -> None:
    line = "< cookie: a=1; hub_session=abc123-_XYZ; b=2 | Authorization: Bearer tok.en/+=="
    assert redact(line) == (
        "< cookie: a=1; hub_session=[redacted]; b=2 | Authorization: Bearer [redacted]"
    )
    # A quoted cookie value authenticates as well (RFC 6265 allows the quotes).
    assert redact('cookie: hub_session="abc123-_XYZ"; b=2') == (
        'cookie: hub_session="[redacted]"; b=2'
    )
    # A token in a query string is refused, but the request line is logged first.
    assert redact('"GET /ws?tab=t&token=abc123 HTTP/1.1" 401') == (
        '"GET /ws?tab=t&token=[redacted] HTTP/1.1" 401'
    )
    assert redact("/api/state?access_token=x.y.z&b=1") == "/api/state?access_token=[redacted]&b=1"


# The decoder.


def _json_containers(inner: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    # A named function, not a lambda: Hypothesis 6.170 reads a lambda's source to check that
    # it uses its argument, and in a full run sometimes misreads this one (a false warning).
    return st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner)


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=False)
    | st.text(max_size=80),
    _json_containers,
    max_leaves=12,
)
field_values = json_values | st.text(min_size=65, max_size=200) | st.integers(2**62, 2**64)
messages = st.fixed_dictionaries(
    {"type": st.sampled_from(["switch", "ping", "SWITCH", "hello", "", 1])},
    optional={"id": field_values, "platform": field_values, "base": field_values},
)


def frames() -> st.SearchStrategy[str | bytes]:
    return st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200),
        messages.map(json.dumps),
        json_values.map(json.dumps),
        st.integers(1, 2000).map(lambda depth: "[" * depth + "]" * depth),
        st.integers(1, 2000).map(lambda depth: '{"a":' * depth + "1" + "}" * depth),
        st.text(string.ascii_letters, min_size=1000, max_size=5000).map(
            lambda s: json.dumps({"type": "switch", "id": s, "platform": 1, "base": 0})
        ),
    )


@settings(max_examples=500, deadline=None)
@given(frames())
def test_the_decoder_returns_a_message_or_says_what_is_wrong(frame: str | bytes) -> None:
    try:
        message = decode(frame)
    except BadMessage as error:
        assert str(error)
        return
    assert isinstance(message, Switch | Ping)
    if isinstance(message, Switch):
        assert 1 <= len(message.id) <= 64 and message.platform >= 1 and message.base >= 0


# The live endpoint.

DOCUMENTED_CLOSES = {1007, 1009}  # invalid UTF-8, frame too big (docs/protocol.md)


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, str]]:
    """A hub process that lets one tab send as much, and as badly, as it likes."""
    tmp = tmp_path_factory.mktemp("fuzz")
    settings = Settings(
        database_url=f"sqlite+aiosqlite:///{tmp / 'hub.db'}",
        max_bad_messages=10**9,
        messages_per_second=10**6,
        message_burst=10**6,
        log_level="warning",
    )

    async def start() -> tuple[HubProcess, str]:
        await seed_demo_file(settings)
        hub = await HubProcess(settings, tmp / "hub.log").start()
        async with httpx.AsyncClient(base_url=hub.url) as http:
            login = await http.post(
                "/api/login", json={"username": "alice", "password": "alice-demo-pw"}
            )
        return hub, login.cookies[COOKIE]

    hub, token = asyncio.run(start())
    try:
        yield hub, token
    finally:
        hub.stop()


class FuzzTab:
    def __init__(self, hub: HubProcess, token: str) -> None:
        self.hub, self.token = hub, token
        self.connections = contextlib.ExitStack()
        self.connection: ClientConnection | None = None
        self.switched = 0
        self.answers: dict[str, int] = {}

    def open(self) -> ClientConnection:
        if self.connection is None:
            self.connection = self.connections.enter_context(
                connect_sync(
                    f"ws://127.0.0.1:{self.hub.port}/ws?tab=fuzz",
                    additional_headers={"Authorization": f"Bearer {self.token}"},
                )
            )
            assert json.loads(self.connection.recv(timeout=5))["type"] == "hello"
        return self.connection

    def send(self, frame: str | bytes) -> None:
        connection = self.open()
        try:
            if isinstance(frame, bytes) and frame[:1] == b"\x01":
                connection.send(frame[1:], text=True)  # raw bytes in a text frame
            else:
                connection.send(frame)
            answer = json.loads(connection.recv(timeout=5))
        except ConnectionClosed:
            code = connection.protocol.close_code
            assert code in DOCUMENTED_CLOSES, code
            self.answers[f"close {code}"] = self.answers.get(f"close {code}", 0) + 1
            self.connection = None
            return
        kind = answer["type"]
        key = f"{kind} {answer.get('code') or answer.get('reason') or ''}".strip()
        self.answers[key] = self.answers.get(key, 0) + 1
        assert kind in {"error", "pong", "rejected", "switched"}, answer
        if kind == "error":
            assert answer["code"] == "bad_message" and answer["message"]
        if kind == "switched":
            self.switched += 1


@pytest.fixture(scope="module")
def fuzz_tab(fuzz_hub: tuple[HubProcess, str]) -> Iterator[FuzzTab]:
    tab = FuzzTab(*fuzz_hub)
    yield tab
    tab.connections.close()
    # After everything, the state moved only by switches the hub accepted, and it still
    # serves: a new tab gets its hello.
    with connect_sync(
        f"ws://127.0.0.1:{tab.hub.port}/ws?tab=after",
        additional_headers={"Authorization": f"Bearer {tab.token}"},
    ) as connection:
        hello = json.loads(connection.recv(timeout=5))
    assert hello["state"]["version"] == tab.switched, (hello["state"], tab.answers)
    print(f"\nlive fuzzing answers: {json.dumps(tab.answers, sort_keys=True)}")


live_frames = frames() | st.binary(min_size=1, max_size=50).map(lambda b: b"\x01" + b"\xff" + b)


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(live_frames)
def test_the_live_endpoint_answers_every_frame_as_documented(
    fuzz_tab: FuzzTab, frame: str | bytes
) -> None:
    fuzz_tab.send(frame)


def test_oversized_frames_close_with_1009_and_the_next_connection_works(
    fuzz_tab: FuzzTab,
) -> None:
    fuzz_tab.send("x" * 70_000)
    assert fuzz_tab.answers.get("close 1009", 0) >= 1
    fuzz_tab.send('{"type":"ping"}')
    assert fuzz_tab.answers.get("pong", 0) >= 1


async def test_state_changes_with_a_cookie_need_an_origin_as_the_websocket_does(
    running: RunningHub,
) -> None:
    """A cookie without an Origin is refused (403) on every state change over HTTP, as on
    the WebSocket; a bearer token needs none; the page's own Origin passes."""
    token = await running.login("alice")
    async with httpx.AsyncClient(base_url=running.url, cookies={COOKIE: token}) as bare:
        for path, body in [
            ("/api/switch", {"id": "o1", "platform": 2, "base": 0}),
            ("/api/session/extend", None),
            (
                "/api/platforms",
                {"name": "X", "kind": "pixelfed", "instance_url": "https://x.y", "username": "x"},
            ),
            ("/api/logout", None),
        ]:
            answer = await bare.post(path, json=body)
            assert answer.status_code == 403 and answer.json()["error"] == "forbidden_origin", path
        assert (await bare.get("/api/state")).status_code == 200  # reads need no Origin
    bearer = {"Authorization": f"Bearer {token}"}
    async with httpx.AsyncClient(base_url=running.url, headers=bearer) as client:
        assert (await client.post("/api/session/extend")).status_code == 200
    async with running.http(token) as page:  # with the page's Origin
        assert (await page.post("/api/logout")).status_code == 200


async def test_a_host_name_the_hub_is_not_served_under_is_refused(tmp_path: Path) -> None:
    """DNS rebinding: a request (or handshake) whose Host names another site gets 400
    forbidden_host, login included; the loopback names and the configured ones pass."""
    async with serve(make_settings(tmp_path, allowed_hosts=("hub.example",))) as running:
        async with httpx.AsyncClient(base_url=running.url) as http:
            for host, status in [("evil.example", 400), ("hub.example", 200), ("127.0.0.1", 400)]:
                answer = await http.get("/livez", headers={"Host": host})
                assert answer.status_code == status, (host, answer.text)
            rebound = await http.post(
                "/api/login",
                json={"username": "alice", "password": "alice-demo-pw"},
                headers={
                    "Host": f"evil.example:{running.port}",
                    "Origin": f"http://evil.example:{running.port}",
                },
            )
            assert rebound.status_code == 400 and rebound.json()["error"] == "forbidden_host"
        token = await login_as(running, "alice", host="hub.example")
        with pytest.raises(InvalidStatus) as refused:
            await connect(
                f"ws://127.0.0.1:{running.port}/ws",
                additional_headers={"Authorization": f"Bearer {token}", "Host": "evil.example"},
            )
        assert refused.value.response.status_code == 400
    async with serve(make_settings(tmp_path)) as running, running.http() as http:
        for host in ("127.0.0.1", "localhost", f"localhost:{running.port}", "[::1]:80"):
            assert (await http.get("/livez", headers={"Host": host})).status_code == 200, host
        assert (await http.get("/livez", headers={"Host": "evil.example"})).status_code == 400


async def login_as(running: RunningHub, name: str, *, host: str) -> str:
    async with httpx.AsyncClient(base_url=running.url, headers={"Host": host}) as http:
        login = await http.post(
            "/api/login", json={"username": name, "password": f"{name}-demo-pw"}
        )
    assert login.status_code == 200, login.text
    return login.cookies[COOKIE]


@pytest.mark.parametrize("origins", ["*", "https://a.example,*", "null"])
def test_a_wildcard_or_null_allowed_origin_is_refused_at_start(origins: str) -> None:
    """HUB_ALLOWED_ORIGINS=* (or null) would let any page call the hub with its users'
    cookies: the settings refuse it, saying why."""
    with pytest.raises(ValueError, match="may not hold"):
        Settings.from_environ({"HUB_ALLOWED_ORIGINS": origins})


@pytest.mark.parametrize(
    "variable",
    [
        "HUB_MESSAGES_PER_SECOND",
        "HUB_LOGIN_FAILURE_RATE",
        "HUB_MESSAGE_BURST",
        "HUB_LOGIN_FAILURE_BURST",
    ],
)
def test_a_rate_limit_of_zero_is_refused_at_start(variable: str) -> None:
    """A rate of 0 would divide by zero in the first shared bucket (a token every 1/0 s), and a
    burst of 0 would refuse everything: the settings refuse both at start."""
    with pytest.raises(ValueError, match="must be"):
        Settings.from_environ({variable: "0"})
