"""Harness: a real hub (uvicorn on 127.0.0.1, port 0) on a real SQLite file, real clients."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import re
import socket
import subprocess
import threading
import time
import warnings
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, Protocol

import httpx
import pytest
import uvicorn
from sqlalchemy import exc as sa_exc
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from server.db import Database
from server.hub import Hub
from server.protocol import decode_server
from server.settings import Settings
from server.storage.users import seed_demo
from server.web.app import create_app
from server.web.credentials import COOKIE
from server.web.serving import uvicorn_config
from tests.support.postgres import fresh_database

# SQLAlchemy's warnings (such as a connection garbage-collected while checked out) fail tests.
warnings.simplefilter("error", sa_exc.SAWarning)

TIMEOUT = 5.0


class RunningHub:
    """A hub served by uvicorn in this event loop, on its own port."""

    def __init__(self, settings: Settings, port: int = 0) -> None:
        self.settings = settings
        self.app = create_app(settings)
        self._sock = socket.socket()
        # A restarted hub takes its predecessor's port, whose connections may be in TIME_WAIT.
        self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._sock.bind(("127.0.0.1", port))
        self.port: int = self._sock.getsockname()[1]
        config = uvicorn_config(
            self.app, settings, host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self._task: asyncio.Task[None] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def database(self) -> Database:
        database: Database = self.app.state.database
        return database

    @property
    def hub(self) -> Hub:
        hub: Hub = self.app.state.hub
        return hub

    async def start(self) -> RunningHub:
        self._task = asyncio.create_task(self.server.serve(sockets=[self._sock]))
        async with asyncio.timeout(TIMEOUT):
            while not self.server.started:
                if self._task.done():
                    self._task.result()
                await asyncio.sleep(0.01)
        return self

    async def stop(self) -> None:
        if self._task is None:
            return
        self.server.should_exit = True
        await asyncio.wait_for(self._task, 15)
        self._task = None
        self._sock.close()

    async def login(self, name: str, password: str | None = None) -> str:
        """Log in over HTTP and return the session token from the cookie."""
        async with httpx.AsyncClient(base_url=self.url) as client:
            response = await client.post(
                "/api/login", json={"username": name, "password": password or f"{name}-demo-pw"}
            )
        assert response.status_code == 200, response.text
        return response.cookies[COOKIE]

    def http(self, token: str | None = None, **headers: str) -> httpx.AsyncClient:
        """Return an HTTP client carrying ``token`` as the session cookie, as a page would."""
        cookies = {COOKIE: token} if token else None
        # As a page sends them: a cookie comes with the page's Origin (the hub refuses a
        # cookie without one on a state change, as a browser never sends that).
        if token and not any(name.lower() == "origin" for name in headers):
            headers = {"Origin": self.url, **headers}
        return httpx.AsyncClient(
            base_url=self.url, cookies=cookies, headers=headers, timeout=TIMEOUT
        )

    async def tab(self, token: str, tab: str | None = None, **kwargs: Any) -> Tab:
        """Open a WebSocket as a tab and read its hello."""
        query = f"?tab={tab}" if tab else ""
        connection = await connect(
            f"ws://127.0.0.1:{self.port}/ws{query}",
            additional_headers={"Authorization": f"Bearer {token}"},
            open_timeout=TIMEOUT,
            **kwargs,
        )
        opened = Tab(connection)
        opened.hello = await opened.receive()
        assert opened.hello["type"] == "hello", opened.hello
        opened.version = opened.hello["state"]["version"]
        return opened


class Tab:
    """A WebSocket client standing in for a browser tab, recording what it received."""

    def __init__(self, connection: ClientConnection) -> None:
        self.connection = connection
        self.hello: dict[str, Any] = {}
        self.version = -1
        self.received: list[dict[str, Any]] = []
        self.devices: list[dict[str, Any]] = []  # as the hello or the last presence said

    async def send(self, message: dict[str, Any] | str | bytes) -> None:
        await self.connection.send(
            message if isinstance(message, str | bytes) else json.dumps(message)
        )

    async def receive(self, within: float = TIMEOUT) -> dict[str, Any]:
        """Receive the next message other than ``presence``: a whole server message
        (``protocol.decode_server`` refuses a frame with a missing, extra or mistyped field),
        as a plain dict. Presence (a tab of the user came or went) is kept in ``received``
        and ``devices``, and is read with ``receive_type("presence")``: the tests of other
        behaviour need not foresee it."""
        async with asyncio.timeout(within):
            while (message := await self._next())["type"] == "presence":
                pass
        return message

    async def receive_type(self, kind: str, within: float = TIMEOUT) -> dict[str, Any]:
        """Receive until a message of ``kind`` arrives."""
        async with asyncio.timeout(within):
            while (message := await self._next())["type"] != kind:
                pass
        return message

    async def _next(self) -> dict[str, Any]:
        frame = await self.connection.recv()
        decode_server(frame)
        message: dict[str, Any] = json.loads(frame)
        self.received.append(message)
        if "state" in message and message["state"] and message["type"] in {"hello", "state"}:
            self.version = message["state"]["version"]
        if message["type"] in {"hello", "presence"}:
            self.devices = message["devices"]
        return message

    async def switch(self, request: str, platform: int, base: int | None = None) -> dict[str, Any]:
        """Send a switch and return the answer to it (switched or rejected)."""
        base = self.version if base is None else base
        await self.send({"type": "switch", "id": request, "platform": platform, "base": base})
        async with asyncio.timeout(TIMEOUT):
            while True:
                message = await self.receive()
                if message["type"] in {"switched", "rejected"} and message["id"] == request:
                    return message

    async def closed(self, within: float = TIMEOUT) -> tuple[int | None, list[dict[str, Any]]]:
        """Read until the hub closes the connection; return the close code and what came."""
        messages = []
        async with asyncio.timeout(within):
            while True:
                try:
                    messages.append(await self.receive(within))
                except ConnectionClosed:
                    break
        return self.connection.close_code, messages

    async def close(self) -> None:
        await self.connection.close()


_SCENARIOS: dict[str, str] = {}  # node id -> the first line of its docstring


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if item.get_closest_marker("scenario") is not None:
            doc = getattr(getattr(item, "function", None), "__doc__", None) or ""
            lines = doc.strip().splitlines()
            _SCENARIOS[item.nodeid] = lines[0] if lines else "running"


def pytest_runtest_logstart(nodeid: str, location: tuple[str, int | None, str]) -> None:
    """Name each heavy scenario as it starts: each runs for tens of seconds, and a line of
    dots that stops moving for that long looks like a hang."""
    if nodeid in _SCENARIOS and _REPORTER and _REPORTER[0].verbosity <= 0:
        _REPORTER[0].write_line(f"scenario {location[2]}: {_SCENARIOS[nodeid]}")


_REPORTER: list[Any] = []


@pytest.hookimpl(trylast=True)
def pytest_configure(config: pytest.Config) -> None:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        _REPORTER.append(reporter)


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    """Return Settings for a test: a fresh SQLite file and fast timers."""
    base: dict[str, Any] = {
        "database_url": f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}",
        "session_check_s": 0.1,
        "collect_interval_s": 3600,
        "heartbeat_s": 5,
        # scrypt at 2**12 (4 MiB, a few ms): the suite opens many sessions; the default
        # cost is tested where it matters (tests/storage/test_sessions.py).
        "password_cost": 2**12,
    }
    base.update(overrides)
    return Settings(**base)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return make_settings(tmp_path)


class MakeSettings(Protocol):
    """make_settings, bound to one test's database: call it with the overrides only."""

    def __call__(self, **overrides: Any) -> Settings: ...


@pytest.fixture(params=["sqlite", "postgresql"])
async def make_on_each_engine(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[MakeSettings]:
    """make_settings on a fresh SQLite file, then on a fresh PostgreSQL database.

    A test that takes this runs twice, once per engine (tests/support/postgres.py has the rules).
    """
    if request.param == "sqlite":
        yield functools.partial(make_settings, tmp_path)
        return
    async with fresh_database() as url:
        yield functools.partial(make_settings, tmp_path, database_url=url)


@pytest.fixture
def settings_on_each_engine(make_on_each_engine: MakeSettings) -> Settings:
    """Settings on each engine in turn; a module takes it as its ``settings`` fixture."""
    return make_on_each_engine()


@contextlib.asynccontextmanager
async def serve(settings: Settings, port: int = 0) -> AsyncIterator[RunningHub]:
    """Run a hub seeded with the demo users (alice, bob, carol) for the block's duration."""
    hub = await RunningHub(settings, port).start()
    try:
        await seed_demo(hub.database)
        yield hub
    finally:
        database = hub.database
        await hub.stop()
    # Database hygiene: once the hub has stopped, no pooled connection is checked out, and
    # no connection's worker thread is left running.
    assert database.checked_out() == 0
    async with asyncio.timeout(TIMEOUT):
        while True:  # they stop a moment after their connection closes
            if not database_threads():
                break
            await asyncio.sleep(0.01)


def database_threads() -> list[threading.Thread]:
    """Database threads still alive: aiosqlite's (one per connection) and the hub's SQLite pools."""
    return [
        t
        for t in threading.enumerate()
        if "_connection_worker_thread" in t.name or t.name.startswith("hub-sqlite")
    ]


@pytest.fixture
async def running(settings: Settings) -> AsyncIterator[RunningHub]:
    """A running hub seeded with the demo users."""
    async with serve(settings) as hub:
        yield hub


# The words a person reads when a session ends, as docs/protocol.md promises them (written
# here, not read from the code under test).
ENDED_WORDS = {
    "logout": "You are signed out.",
    "expired": "Your session expired. Sign in again to continue.",
    "revoked": "Your session was ended. Sign in again to continue.",
}


def session_ended(reason: str) -> dict[str, Any]:
    """The session_ended message tabs get for ``reason``, words included."""
    return {"type": "session_ended", "reason": reason, "message": ENDED_WORDS[reason]}


def platform_ids(tab: Tab) -> list[int]:
    return [p["id"] for p in tab.hello["state"]["platforms"]]


def other_platform(state: dict[str, Any]) -> int:
    return int(next(p["id"] for p in state["platforms"] if p["id"] != state["active"]))


def reported_port(process: subprocess.Popen[str], within: float = 30) -> int:
    """Read a starting `hub serve --port 0` process's stderr until it says its port."""
    assert process.stderr is not None
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = re.search(r"running on http://127\.0\.0\.1:(\d+)", process.stderr.readline())
        if found:
            return int(found.group(1))
    raise AssertionError("hub serve did not report its port")
