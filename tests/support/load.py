"""Load harness: a real hub process, thousands of real WebSocket tabs, every frame recorded.

Used by tests/e2e/test_scenarios.py (and usable from a shell). The hub runs as `python -m server
serve` on a SQLite file; users and sessions are created in that file beforehand. Each tab is a
`websockets` client whose frames feed a TabRecorder, so a run ends in a History that
tests.support.history.check judges against the database's final state and switch log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.client import ClientProtocol
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus
from websockets.frames import Close, Frame, Opcode
from websockets.uri import parse_uri

from server.settings import Settings
from tests.support.population import Population, database_facts
from tests.support.processes import wait_until
from tests.support.recording import History, Operation, TabRecorder


class RawFlood:
    """A hostile tab at the socket: one handshake, then switch frames as fast as TCP takes them.

    Frames are built once by websockets' sans-I/O client and written in blocks, so flooding
    costs the flooder little CPU; it reads (and keeps) what comes back but never answers the
    close. Used by tests/web/test_hostile.py and bench/load.py's flood mode.
    """

    def __init__(self, url: str, headers: dict[str, str], frames_per_block: int = 500) -> None:
        self.uri = parse_uri(url)
        self.headers = headers
        self.frames_per_block = frames_per_block
        self.protocol = ClientProtocol(self.uri)
        self.received = bytearray()
        self.written = 0  # bytes handed to TCP after the handshake

    async def run(self, until: Callable[[], bool]) -> bool:
        """Handshake, then flood until the hub drops the connection or ``until()``.

        Returns False when the handshake is refused."""
        request = self.protocol.connect()
        request.headers.update(self.headers)
        self.protocol.send_request(request)
        reader, writer = await asyncio.open_connection(self.uri.host, self.uri.port)
        try:
            for chunk in self.protocol.data_to_send():
                writer.write(chunk)
            self.protocol.receive_data(await reader.readuntil(b"\r\n\r\n"))
            self.protocol.events_received()  # the handshake's response
            if self.protocol.handshake_exc is not None:
                return False
            for n in range(self.frames_per_block):
                message = {"type": "switch", "id": f"flood-{n}", "platform": 1, "base": 0}
                self.protocol.send_text(json.dumps(message).encode())
            block = b"".join(self.protocol.data_to_send())
            reading = asyncio.create_task(self._read(reader))
            with contextlib.suppress(ConnectionError):
                while not reading.done() and not until():
                    writer.write(block)
                    self.written += len(block)
                    with contextlib.suppress(TimeoutError):  # to look at until() again
                        await asyncio.wait_for(writer.drain(), 0.5)
            reading.cancel()
            await asyncio.gather(reading, return_exceptions=True)
            return True
        finally:
            writer.close()

    def close_code(self) -> int | None:
        """Return the code of the hub's close frame among what was received, if any."""
        self.protocol.receive_data(bytes(self.received))
        for event in self.protocol.events_received():
            if isinstance(event, Frame) and event.opcode == Opcode.CLOSE:
                return Close.parse(event.data).code
        return None

    async def _read(self, reader: asyncio.StreamReader) -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                self.received.extend(chunk)


@dataclass
class LoadTab:
    """One tab: a WebSocket that reconnects, its recorder, its answers and close codes."""

    user: int
    name: str
    token: str
    platforms: tuple[int, ...]
    recorder: TabRecorder
    version: int = 0
    active: int | None = None
    connection: ClientConnection | None = None
    answers: dict[str, asyncio.Future[dict[str, Any]]] = field(default_factory=dict)
    close_codes: list[int | None] = field(default_factory=list)
    handshake_errors: list[str] = field(default_factory=list)
    connected: asyncio.Event = field(default_factory=asyncio.Event)
    last_received: float = 0.0

    def see(self, message: dict[str, Any]) -> None:
        self.last_received = time.monotonic()
        self.recorder.received(message)
        state = message.get("state")
        kinds = {"hello", "state", "rejected"}
        if state and message["type"] in kinds and state["version"] >= self.version:
            self.version, self.active = state["version"], state["active"]
        if message["type"] in {"switched", "rejected"}:
            future = self.answers.pop(message["id"], None)
            if future and not future.done():
                future.set_result(message)


class Load:
    """Many tabs against one hub URL; they reconnect (full jitter) when the hub goes away."""

    def __init__(self, population: Population, tabs_per_user: int, seed: int = 1) -> None:
        self.history = History()
        self.random = random.Random(seed)
        self.tabs: list[LoadTab] = []
        self.port = 0
        self.ports: list[int] = []
        self.running = True
        self.tasks: list[asyncio.Task[None]] = []
        self.handshake = asyncio.Semaphore(64)  # concurrent handshakes, like a browser's limit
        for user, token in population.tokens.items():
            for n in range(tabs_per_user):
                name = f"u{user}-t{n}"
                recorder = TabRecorder(self.history, user, name)
                self.tabs.append(LoadTab(user, name, token, population.platforms[user], recorder))
            self.history.user(user).initial_active = population.platforms[user][0]

    async def connect_all(self, port: int | Sequence[int]) -> None:
        """Connect every tab; with several ports (hub processes), tab n starts on port n mod
        their number, and a tab whose connection fails tries the next, as behind a proxy."""
        self.ports = [port] if isinstance(port, int) else list(port)
        self.port = self.ports[0]
        self.tasks = [
            asyncio.create_task(self._keep_connected(tab, n)) for n, tab in enumerate(self.tabs)
        ]
        await asyncio.wait_for(asyncio.gather(*(tab.connected.wait() for tab in self.tabs)), 120)

    async def _keep_connected(self, tab: LoadTab, home: int = 0) -> None:
        attempt = 0
        failures = 0
        while self.running:
            tab.recorder.connecting()
            ports = self.ports or [self.port]
            port = ports[(home + failures) % len(ports)]
            try:
                async with self.handshake:
                    connection = await connect(
                        f"ws://127.0.0.1:{port}/ws?tab={tab.name}",
                        additional_headers={"Authorization": f"Bearer {tab.token}"},
                        open_timeout=30,
                        ping_interval=None,
                        max_queue=None,
                    )
            except (OSError, InvalidHandshake, TimeoutError) as error:
                if isinstance(error, InvalidStatus):
                    tab.handshake_errors.append(str(error))
                attempt += 1
                failures += 1
                await asyncio.sleep(self.random.uniform(0, min(2.0, 0.05 * 2**attempt)))
                continue
            attempt = 0
            tab.connection = connection
            try:
                async for frame in connection:
                    message = json.loads(frame)
                    tab.see(message)
                    if message["type"] == "hello":
                        tab.connected.set()
            except ConnectionClosed:
                pass
            tab.close_codes.append(connection.close_code)
            tab.connected.clear()
            tab.connection = None
            for future in tab.answers.values():
                if not future.done():
                    future.set_result({"type": "lost"})
            tab.answers.clear()
            if connection.close_code == 4001:
                return
            await asyncio.sleep(self.random.uniform(0, 0.5))

    async def switch(
        self, tab: LoadTab, *, stale: bool, noop: bool = False, within: float = 30
    ) -> str:
        """Send one switch and wait for its answer: "switched", "rejected:<reason>", "lost".

        With ``noop``, it asks for the platform the tab shows as active, from the tab's version:
        a no-op (answered at the unchanged version) unless another tab moved the version first.
        """
        await asyncio.wait_for(tab.connected.wait(), within)
        connection = tab.connection
        if connection is None:  # it dropped again before this task resumed; nothing sent
            return "lost"
        if noop and tab.active is not None:
            base, platform = tab.version, tab.active
        else:
            base = max(0, tab.version - 1) if stale and tab.version > 0 else tab.version
            choices = [p for p in tab.platforms if p != tab.active] or list(tab.platforms)
            platform = self.random.choice(choices)
        request = f"{tab.name}-{self.random.getrandbits(48):012x}"
        return await self._send(tab, connection, request, base, platform, within)

    async def resend(self, tab: LoadTab, within: float = 30) -> str:
        """Resend one of the tab's earlier switches, same id, base and platform, as a client
        retries: the hub answers with its logged decision (tests/support/history.py checks that it
        is the first answer again), or decides anew one that it never logged."""
        await asyncio.wait_for(tab.connected.wait(), within)
        connection = tab.connection
        if connection is None:
            return "lost"
        earlier = [op for op in tab.recorder.operations.values() if op.request not in tab.answers]
        if not earlier:
            return await self.switch(tab, stale=False, within=within)
        op = self.random.choice(earlier)
        return await self._send(tab, connection, op.request, op.base, op.platform, within)

    async def _send(
        self,
        tab: LoadTab,
        connection: ClientConnection,
        request: str,
        base: int,
        platform: int,
        within: float,
    ) -> str:
        future = asyncio.get_running_loop().create_future()
        tab.answers[request] = future
        tab.recorder.sent(request, base, platform)
        message = {"type": "switch", "id": request, "platform": platform, "base": base}
        try:
            await connection.send(json.dumps(message))
        except ConnectionClosed:
            return "lost"
        try:
            answer = await asyncio.wait_for(future, within)
        except TimeoutError:
            return "timeout"
        kind: str = answer["type"]
        return f"rejected:{answer['reason']}" if kind == "rejected" else kind

    async def run(
        self,
        switches: int,
        *,
        stale_share: float = 0.5,
        noop_share: float = 0.1,
        resend_share: float = 0.1,
        in_flight_per_user: int = 2,
    ) -> dict[str, int]:
        """Make ``switches`` switches from random tabs, ``in_flight_per_user`` at once per user.

        About ``resend_share`` of them resend an earlier request of their tab (same id), and
        ``noop_share`` ask for the platform already active (no-ops, unless they lose a race).
        Of the others, about ``stale_share`` go out with a base one version behind (stale by
        choice); the rest use the tab's newest version and still lose some races.
        """
        counts: dict[str, int] = {}
        by_user: dict[int, list[LoadTab]] = {}
        for tab in self.tabs:
            by_user.setdefault(tab.user, []).append(tab)
        drivers = [tabs for tabs in by_user.values() for _ in range(in_flight_per_user)]
        shares = [switches // len(drivers)] * len(drivers)
        for i in range(switches % len(drivers)):
            shares[i] += 1

        async def drive(tabs: list[LoadTab], n: int) -> None:
            for _ in range(n):
                tab = self.random.choice(tabs)
                roll = self.random.random()
                try:
                    if roll < resend_share:
                        kind = await self.resend(tab)
                    else:
                        noop = roll < resend_share + noop_share
                        stale = self.random.random() < stale_share
                        kind = await self.switch(tab, stale=stale, noop=noop)
                except TimeoutError:
                    kind = "not connected"
                counts[kind] = counts.get(kind, 0) + 1

        await asyncio.gather(*(drive(t, n) for t, n in zip(drivers, shares, strict=True)))
        return counts

    def operations(self) -> list[Operation]:
        """Every switch recorded so far, of every user."""
        return [op for user in self.history.users.values() for op in user.operations]

    def answered(self) -> int:
        """How many switches have been answered so far."""
        return sum(op.outcome is not None for op in self.operations())

    def converged(self, states: dict[int, tuple[int, int | None]]) -> bool:
        return all((tab.version, tab.active) == states[tab.user] for tab in self.tabs)

    async def close(self) -> None:
        self.running = False
        for tab in self.tabs:
            if tab.connection is not None:
                await tab.connection.close()
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)


async def record_facts(load: Load, settings: Settings, *, open_tabs: bool = False) -> None:
    """Give the history each user's stored state and accepted log rows (and open tabs)."""
    states, logs = await database_facts(settings)
    for user, state in states.items():
        facts = load.history.user(user)
        facts.final = state
        facts.log = logs.get(user, {})
        if open_tabs:
            facts.open_tabs = {tab.name for tab in load.tabs if tab.user == user}


async def converge(load: Load, settings: Settings, within: float) -> float:
    """Wait until every tab shows its user's stored state; return how long it took."""
    started = time.monotonic()
    states, _ = await database_facts(settings)
    try:
        await wait_until(lambda: load.converged(states), within, "convergence")
    except TimeoutError:
        behind = [t.name for t in load.tabs if (t.version, t.active) != states[t.user]]
        raise AssertionError(f"{len(behind)} tabs never converged, e.g. {behind[:5]}") from None
    return time.monotonic() - started
