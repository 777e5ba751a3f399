"""server/storage/reads.py: concurrent reads by key share a read transaction.

The batching itself on a fetch function the tests control; then real handshakes on each
engine: tabs that connect at once share their session, state and hold reads, and each still
gets its own answer (its own user's state, or its own refusal).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path

import pytest
from sqlalchemy import text
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from server.errors import StoreUnavailable
from server.protocol import SessionEndReason
from server.settings import Settings
from server.storage import sessions
from server.storage.reads import GroupRead
from server.storage.switches import SqlStore
from tests.conftest import TIMEOUT, RunningHub, make_settings, serve
from tests.support.postgres import fresh_database


class Fetcher:
    """A fetch that records its batches and waits for the test to let each one finish."""

    def __init__(self, fail_on: str | None = None) -> None:
        self.batches: list[list[str]] = []
        self.release = asyncio.Event()
        self.fail_on = fail_on

    async def __call__(self, keys: Sequence[str]) -> dict[str, str]:
        self.batches.append(list(keys))
        await self.release.wait()
        if self.fail_on in keys:
            raise StoreUnavailable("the database did not answer")
        return {key: key.upper() for key in keys if key != "missing"}


async def settled(reader: GroupRead[str, str]) -> None:
    await asyncio.sleep(0)
    async with asyncio.timeout(TIMEOUT):
        while reader._reader is not None:  # noqa: ASYNC110 (the reader task ends)
            await asyncio.sleep(0.001)


async def test_keys_asked_while_a_read_runs_share_the_next_one() -> None:
    """The first key is read alone; the 50 asked while it runs (one of them twice, and one
    that has no row) are read together next, each caller getting its own key's value."""
    fetch = Fetcher()
    reader: GroupRead[str, str] = GroupRead(fetch)
    first = asyncio.ensure_future(reader.get("k0"))
    await asyncio.sleep(0)
    keys = [f"k{n}" for n in range(1, 50)] + ["k7", "missing"]
    rest = [asyncio.ensure_future(reader.get(key)) for key in keys]
    await asyncio.sleep(0)
    fetch.release.set()
    assert await first == "K0"
    assert await asyncio.gather(*rest) == [None if k == "missing" else k.upper() for k in keys]
    assert fetch.batches == [["k0"], [f"k{n}" for n in range(1, 50)] + ["missing"]]
    assert (reader.reads, reader.keys) == (2, 51)


async def test_a_batch_holds_at_most_max_batch_keys() -> None:
    fetch = Fetcher()
    fetch.release.set()
    reader: GroupRead[str, str] = GroupRead(fetch, max_batch=3)
    values = await asyncio.gather(*(reader.get(f"k{n}") for n in range(7)))
    assert values == [f"K{n}" for n in range(7)]
    assert [len(batch) for batch in fetch.batches] == [3, 3, 1]


async def test_a_failed_read_fails_its_batch_only_and_the_next_one_reads() -> None:
    """Every caller of a batch whose read fails gets the error; the keys asked after it are
    read in the next batch, which succeeds."""
    fetch = Fetcher(fail_on="bad")
    reader: GroupRead[str, str] = GroupRead(fetch)
    doomed = [asyncio.ensure_future(reader.get(key)) for key in ("bad", "k1")]
    await asyncio.sleep(0)
    later = asyncio.ensure_future(reader.get("k2"))
    await asyncio.sleep(0)
    fetch.release.set()
    for future in doomed:
        with pytest.raises(StoreUnavailable):
            await future
    assert await later == "K2"
    assert fetch.batches == [["bad", "k1"], ["k2"]]


async def test_a_caller_that_goes_away_leaves_the_others_their_answer() -> None:
    fetch = Fetcher()
    reader: GroupRead[str, str] = GroupRead(fetch)
    gone = asyncio.ensure_future(reader.get("k1"))
    staying = asyncio.ensure_future(reader.get("k1"))
    await asyncio.sleep(0)
    gone.cancel()
    fetch.release.set()
    assert await staying == "K1"
    await settled(reader)
    assert gone.cancelled() and fetch.batches == [["k1"]]


async def test_a_reader_cancelled_before_it_ran_is_replaced() -> None:
    """A reader task cancelled before its first step never clears itself: the next get
    starts another instead of queueing behind it forever."""
    fetch = Fetcher()
    fetch.release.set()
    reader: GroupRead[str, str] = GroupRead(fetch)
    first = asyncio.ensure_future(reader.get("k1"))
    await asyncio.sleep(0)
    assert reader._reader is not None
    reader._reader.cancel()
    await asyncio.sleep(0)
    async with asyncio.timeout(TIMEOUT):
        assert await reader.get("k2") == "K2"
        assert await first == "K1"


def test_a_batch_of_no_key_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        GroupRead(Fetcher(), max_batch=0)


@pytest.fixture
def settings(settings_on_each_engine: Settings) -> Settings:
    """The handshakes run on a fresh SQLite file and on a fresh PostgreSQL database."""
    return settings_on_each_engine


async def test_tabs_that_connect_at_once_share_reads_and_each_gets_its_own_answer(
    running: RunningHub,
) -> None:
    """60 tabs of three users, and 30 handshakes with a revoked, an unknown and no token,
    all at once: every tab's hello names its own user with that user's state, every refusal
    is its own 401 reason, and the session, state and hold reads took fewer transactions
    than there were handshakes (they were shared)."""
    tokens = {name: await running.login(name) for name in ("alice", "bob", "carol")}
    revoked = await running.login("alice")
    login = await sessions.authenticate(running.database, revoked)
    await sessions.revoke(running.database, login.id, SessionEndReason.LOGOUT)
    url = f"ws://127.0.0.1:{running.port}/ws"

    async def tab(name: str, n: int) -> dict[str, object]:
        headers = {"Authorization": f"Bearer {tokens[name]}"}
        async with connect(f"{url}?tab={name}{n}", additional_headers=headers) as connection:
            hello: dict[str, object] = json.loads(await connection.recv())
            return hello

    async def refused(token: str | None) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(InvalidStatus) as refusal:
            async with connect(url, additional_headers=headers):
                pass
        response = refusal.value.response
        return response.status_code, json.loads(response.body or b"{}").get("reason")

    names = ["alice", "bob", "carol"] * 20
    lookups = running.database.group_read("sessions_by_token", lambda _: asyncio.sleep(0))
    store = running.hub.store
    assert isinstance(store, SqlStore)
    before = (lookups.reads, store._states.reads)
    async with asyncio.timeout(TIMEOUT):
        hellos, refusals = await asyncio.gather(
            asyncio.gather(*(tab(name, n) for n, name in enumerate(names))),
            asyncio.gather(*(refused(t) for t in [revoked, "unknown-token", None] * 10)),
        )
    for name, n, hello in zip(names, range(len(names)), hellos, strict=True):
        assert hello["type"] == "hello" and hello["tab"] == f"{name}{n}"
        assert hello["user"]["name"] == name  # type: ignore[index]
    states = {name: hello["state"] for name, hello in zip(names, hellos, strict=True)}
    for name, hello in zip(names, hellos, strict=True):
        assert hello["state"] == states[name]
    # Each refusal says why for its own token: the batched reads did not mix them up.
    assert refusals == [(401, "logout"), (401, "invalid"), (401, "missing")] * 10
    session_reads = lookups.reads - before[0]
    state_reads = store._states.reads - before[1]
    print(f"\n90 handshakes: {session_reads} session reads, {state_reads} state reads")
    assert session_reads < 90 and state_reads < 60


@contextlib.asynccontextmanager
async def reads_stalled(running: RunningHub) -> AsyncIterator[None]:
    """Hold the hub's session reads: an ACCESS EXCLUSIVE lock on login_sessions."""
    async with running.database.engine.connect() as connection:
        transaction = await connection.begin()
        await connection.execute(text("LOCK TABLE login_sessions IN ACCESS EXCLUSIVE MODE"))
        try:
            yield
        finally:
            await transaction.rollback()


async def until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(TIMEOUT):
        while not condition():  # noqa: ASYNC110 (the hub's state, polled)
            await asyncio.sleep(0.01)


async def test_handshakes_whose_peers_left_are_not_read_for(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """While the session reads stall, a tab's handshake waits for its read and 30 more
    arrive, and their peers reset the connections (a flood of aborted handshakes). When the
    database answers, the tab gets its hello, and nothing is read for the 30: their
    handshakes were cancelled and their keys skipped; nothing was logged as an error. (They
    were each read, and each task ran to an answer no one read: a flood of them held
    legitimate hellos for 20 s.)

    On PostgreSQL alone: it is what can hold the hub's reads for the test. SQLite's WAL
    readers never wait for a writer, and its exclusive locking mode cannot be taken while
    the hub has the file open; the code under test is the same on both engines."""
    async with fresh_database() as url:
        settings = make_settings(tmp_path, database_url=url, database_timeout_s=60)
        await handshakes_whose_peers_left(settings)
    assert "Exception in ASGI application" not in caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text


async def handshakes_whose_peers_left(settings: Settings) -> None:
    async with serve(settings) as running:
        token = await running.login("alice")
        await sessions.authenticate(running.database, token)  # the batched read exists
        reads = running.database._group_reads["sessions_by_token"]
        request = (
            "GET /ws?tab=gone HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            "Sec-WebSocket-Version: 13\r\nAuthorization: Bearer junk{n}\r\n\r\n"
        )
        async with reads_stalled(running):
            legit = asyncio.ensure_future(running.tab(token, "legit"))
            await until(lambda: reads._reader is not None)
            writers = []
            for n in range(30):
                _, writer = await asyncio.open_connection("127.0.0.1", running.port)
                writer.write(request.format(port=running.port, n=n).encode())
                writers.append(writer)
            await until(lambda: len(reads._waiting) == 30)
            for writer in writers:
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                writer.close()
            await until(lambda: all(f.done() for fs in reads._waiting.values() for f in fs))
            before = (reads.reads, reads.keys)
        async with asyncio.timeout(TIMEOUT):
            tab = await legit
        await until(lambda: reads._reader is None)
        assert (reads.reads - before[0], reads.keys - before[1]) == (1, 1)
        await tab.close()
