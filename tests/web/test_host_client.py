"""host-client/platform_hub_client: the host API's client package, sync and async, against a
real hub (on SQLite and PostgreSQL) and against servers that fail in every way a network can.

The sync HostClient blocks, so its calls run in a worker thread while the hub serves on the
test's event loop, as they would from a Flask view beside a running hub.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

import pytest

from platform_hub_client import (
    AsyncHostClient,
    HostApiError,
    HostClient,
    PlatformCreate,
    PlatformMirrored,
    PlatformUpdate,
)
from tests.conftest import MakeSettings, RunningHub, Tab, serve, session_ended

KEY = "host-client-test-key"
T = TypeVar("T")
ACCOUNTS = [
    PlatformMirrored(
        name="Photos", kind="pixelfed", instance_url="https://pixelfed.social", username="gus"
    ),
    PlatformMirrored(
        name="Toots",
        kind="mastodon",
        instance_url="https://mastodon.social",
        username="gus",
        is_default=True,
    ),
]


@pytest.fixture
async def running(make_on_each_engine: MakeSettings) -> AsyncIterator[RunningHub]:
    async with serve(make_on_each_engine(api_key=KEY)) as hub:
        yield hub


class Either:
    """One of the two clients behind one awaitable face: ``await either.call("state", n)``."""

    def __init__(self, kind: str, url: str, timeout: float = 10.0) -> None:
        self.kind = kind
        self.sync = HostClient(url, KEY, timeout=timeout) if kind == "sync" else None
        self.async_ = AsyncHostClient(url, KEY, timeout=timeout) if kind == "async" else None

    async def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        if self.sync is not None:
            bound: Callable[..., Any] = getattr(self.sync, method)
            return await asyncio.to_thread(functools.partial(bound, *args, **kwargs))
        assert self.async_ is not None
        coroutine: Awaitable[Any] = getattr(self.async_, method)(*args, **kwargs)
        return await coroutine

    async def close(self) -> None:
        if self.sync is not None:
            self.sync.close()
        if self.async_ is not None:
            await self.async_.aclose()


async def refused(call: Awaitable[Any]) -> HostApiError:
    with pytest.raises(HostApiError) as failure:
        await call
    return failure.value


async def test_the_sync_client_runs_a_host_apps_whole_flow(running: RunningHub) -> None:
    """From a worker thread, as a Flask view would, one HostClient (its pool reused): create
    the user, mirror, mint a session a tab connects with, read the state, switch the default,
    add and remove a platform, hold and release, list sessions, log out: the tab hears each
    change and then logout."""

    def flow(tab_ready: Callable[[str], None]) -> list[str]:
        seen: list[str] = []  # one line, returned from the thread
        with HostClient(running.url, KEY) as hub:
            assert hub.upsert_user("gus").created
            mirrored = hub.mirror_platforms("gus", ACCOUNTS)
            minted = hub.mint_session("gus", user_agent="Flask test", ip="192.0.2.1")
            tab_ready(minted.token)
            state = hub.state("gus")
            assert state.hold is None and state.state == mirrored.state
            photos = mirrored.platforms[0].id
            changed = hub.change_platform("gus", photos, PlatformUpdate(is_default=True))
            added = hub.add_platform(
                "gus",
                PlatformCreate(
                    name="Art", kind="pixelfed", instance_url="https://pixey.org", username="g"
                ),
            )
            art = next(p.id for p in added.platforms if p.name == "Art")
            removed = hub.remove_platform("gus", art)
            assert [p.id for p in removed.platforms] == [p.id for p in changed.platforms]
            held = hub.hold("gus", "Generating captions", 30)
            assert held.hold is not None and held.hold.reason == "Generating captions"
            assert hub.state("gus").hold == held.hold
            assert hub.release("gus").hold is None
            (listed,) = hub.sessions("gus").sessions
            assert (listed.id, listed.user_agent, listed.ip) == (
                minted.session.id,
                "Flask test",
                "192.0.2.1",
            )
            ended = hub.revoke_session("gus", minted.session.id, reason="logout")
            assert (ended.sessions, ended.tabs) == (1, 1)
            seen.append(f"version {hub.platforms('gus').state.version}")
        return seen

    loop = asyncio.get_running_loop()
    tabs: list[Tab] = []

    def connect(token: str) -> None:  # from the worker: the tab is open before the flow goes on
        tabs.append(asyncio.run_coroutine_threadsafe(running.tab(token, "t"), loop).result(10))

    (seen,) = await asyncio.to_thread(flow, connect)
    code, messages = await tabs[0].closed()
    kinds = [m["type"] for m in messages]
    # The default change, the add and the remove each move the version; the hold, its release.
    assert kinds == ["state", "state", "state", "hold", "hold", "session_ended"], kinds
    assert seen == f"version {messages[2]['state']['version']}"
    assert code == 4001 and messages[-1] == session_ended("logout")


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_user_names_travel_quoted_and_unsafe_ones_are_refused_unsent(
    running: RunningHub, kind: str
) -> None:
    """A name with ?, #, %, + , spaces or non-ASCII letters is one path segment: the user the
    hub creates has exactly that name. A name a path cannot carry as one segment ("/", ".",
    "..", empty) and ids that are neither an int nor an external id (a str) are refused as 422
    before anything is sent."""
    client = Either(kind, running.url)
    try:
        alice = await client.call("platforms", "alice")
        for name in ("a b?c#d", "50%+ünï", "ÅSA", "x&y=z"):
            view = await client.call("upsert_user", name)
            assert (view.name, view.created) == (name, True)
            assert (await client.call("state", name)).state.version == 0
        for name in ("a/b", ".", "..", "", "../alice"):
            failure = await refused(client.call("state", name))
            assert (failure.status, failure.code) == (422, "bad_request"), name
        for bad_id in (True, 1.0, None):
            failure = await refused(client.call("remove_platform", "alice", bad_id))
            assert (failure.status, failure.code) == (422, "bad_request"), bad_id
        # A str names a platform by the host app's external id: alice's have none.
        failure = await refused(client.call("remove_platform", "alice", "1"))
        assert (failure.status, failure.code) == (404, "unknown_platform")
        # alice is untouched by all of it.
        assert await client.call("platforms", "alice") == alice
    finally:
        await client.close()


@pytest.mark.parametrize("kind", ["sync", "async"])
async def test_every_failure_of_a_call_is_a_host_api_error(kind: str) -> None:
    """A hub that is down, one that never answers, a server that is not the hub, and an
    error that is not JSON: each is a HostApiError with a code (a host app's logout catches
    one exception), never a raw httpx or msgspec error; so are arguments the hub would
    refuse, caught before sending."""
    answering: list[bytes] = []
    release = asyncio.Event()
    handlers: set[asyncio.Task[None]] = set()

    async def serve_one(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        await reader.readuntil(b"\r\n\r\n")
        if answering:
            writer.write(answering.pop(0))  # b"": closed without an answer
            await writer.drain()
        else:
            await release.wait()  # holds the request: the client's timeout decides
        writer.close()
        await writer.wait_closed()

    server = await asyncio.start_server(serve_one, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    client = Either(kind, f"http://127.0.0.1:{port}", timeout=0.3)
    async with server:
        bad_arguments: list[tuple[str, tuple[Any, ...], dict[str, Any]]] = [
            ("mint_session", ("alice",), {"ip": "not-an-ip"}),
            ("mint_session", ("alice",), {"user_agent": "x" * 2001}),
            ("hold", ("alice", "captions", 0), {}),
            ("hold", ("alice", "", 30), {}),
            ("hold", ("alice", "captions", 10**9), {}),
            ("revoke_sessions", ("alice",), {"reason": "expired"}),
            ("upsert_user", ("alice", "short"), {}),
            # A body built by hand with a name the hub's pattern refuses.
            ("mirror_platforms", ("alice", [_mirrored(name="a\nb")]), {}),
            ("change_platform", ("alice", 1, PlatformUpdate(name="")), {}),
        ]
        for method, args, kwargs in bad_arguments:
            failure = await refused(client.call(method, *args, **kwargs))
            assert (failure.status, failure.code) == (422, "bad_request"), method
        assert not handlers  # nothing was sent
        stalled = await refused(client.call("state", "alice"))
        assert (stalled.status, stalled.code) == (504, "timeout")
        answering.append(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/html\r\ncontent-length: 9\r\n"
            b"connection: close\r\n\r\n<html/>\r\n"
        )
        strange = await refused(client.call("state", "alice"))
        assert (strange.status, strange.code) == (200, "bad_answer")
        answering.append(
            b"HTTP/1.1 502 Bad Gateway\r\ncontent-type: text/html\r\ncontent-length: 11\r\n"
            b"connection: close\r\n\r\nbad gateway"
        )
        proxy = await refused(client.call("state", "alice"))
        assert (proxy.status, proxy.code, proxy.message) == (502, "unknown", "bad gateway")
        answering.append(b"")  # the request arrived; the connection closed unanswered
        broken = await refused(client.call("mint_session", "alice"))
        assert (broken.status, broken.code) == (502, "interrupted")
        assert "may have been applied" in str(broken.message)
        release.set()
        await asyncio.gather(*handlers, return_exceptions=True)
    await client.close()
    client = Either(kind, f"http://127.0.0.1:{port}")  # closed now: refused
    down = await refused(client.call("revoke_sessions", "alice", reason="logout"))
    assert (down.status, down.code) == (503, "unreachable")
    await client.close()
    after_close = await refused(client.call("state", "alice"))  # a closed client: not sent
    assert (after_close.status, after_close.code) == (503, "unreachable")
    for text in ("a\udc80b", "x\ud800"):  # lone surrogates: not text a path can carry
        assert (await refused(client.call("state", text))).status == 422
        assert (await refused(client.call("remove_platform", "alice", text))).status == 422
    for base in ("127.0.0.1:8000", "ftp://hub", "http://"):
        with pytest.raises(ValueError, match="not an http"):
            HostClient(base, KEY)


def _mirrored(name: str) -> PlatformMirrored:
    return PlatformMirrored(
        name=name, kind="pixelfed", instance_url="https://pixelfed.social", username="gus"
    )
