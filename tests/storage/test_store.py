"""The Store contract: one body, run on the in-memory store, SQLite and PostgreSQL.

Every store decides with rules.decide; this proves they also read and write alike, so the
hub's unit tests on the memory store (tests/support/memory.py) speak for the real ones.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Protocol

import pytest

from server.api import PlatformCreate
from server.db import Database
from server.protocol import HoldView, RejectReason, SessionEndReason, Switch
from server.rules import Accepted, Refused, SessionGone
from server.storage import holds, sessions
from server.storage.switches import SqlStore
from server.storage.users import add_user
from server.store import Store
from tests.conftest import make_settings
from tests.support.memory import MemoryStore
from tests.support.postgres import fresh_database


class World(Protocol):
    """A store, and the ways to set up what it reads."""

    store: Store

    async def add_user(
        self, name: str, platforms: list[tuple[str, bool]]
    ) -> tuple[int, list[int]]: ...

    async def open_session(self, user_id: int) -> int: ...

    async def revoke(self, session_id: int) -> None: ...

    async def hold(self, user_id: int, reason: str | None) -> None: ...


class MemoryWorld:
    def __init__(self) -> None:
        self.memory = MemoryStore()
        self.store: Store = self.memory

    async def add_user(self, name: str, platforms: list[tuple[str, bool]]) -> tuple[int, list[int]]:
        return self.memory.add_user(platforms)

    async def open_session(self, user_id: int) -> int:
        return self.memory.open_session(user_id)

    async def revoke(self, session_id: int) -> None:
        self.memory.end_session(session_id, SessionEndReason.REVOKED)

    async def hold(self, user_id: int, reason: str | None) -> None:
        later = dt.datetime.now(dt.UTC) + dt.timedelta(minutes=5)
        held = HoldView(reason=reason, expires_at=later.isoformat()) if reason else None
        self.memory.hold(user_id, held)


class SqlWorld:
    def __init__(self, database: Database) -> None:
        self.database = database
        self.store: Store = SqlStore(database)

    async def add_user(self, name: str, platforms: list[tuple[str, bool]]) -> tuple[int, list[int]]:
        listed = [
            PlatformCreate(
                name=platform, kind="mastodon", instance_url=f"https://{platform.lower()}.example",
                username="u", is_default=default,
            )
            for platform, default in platforms
        ]  # fmt: skip
        user_id = await add_user(self.database, name, None, listed)
        state = await self.store.load_state(user_id)
        return user_id, [p.id for p in state.platforms]

    async def open_session(self, user_id: int) -> int:
        _, login = await sessions.open_session(self.database, user_id)
        return login.id

    async def revoke(self, session_id: int) -> None:
        await sessions.revoke(self.database, session_id, SessionEndReason.REVOKED)

    async def hold(self, user_id: int, reason: str | None) -> None:
        if reason is None:
            await holds.release(self.database, user_id)
        else:
            await holds.place(self.database, user_id, reason, 300)


@contextlib.asynccontextmanager
async def world(kind: str, tmp_path: Path) -> AsyncIterator[World]:
    if kind == "memory":
        yield MemoryWorld()
        return
    async with contextlib.AsyncExitStack() as stack:
        url = await stack.enter_async_context(fresh_database()) if kind == "postgresql" else None
        settings = make_settings(tmp_path, **({"database_url": url} if url else {}))
        database = Database(settings)
        await database.create_schema()
        sql = SqlWorld(database)
        try:
            yield sql
        finally:
            await sql.store.close()
            await database.dispose()


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
async def test_every_store_decides_and_remembers_alike(kind: str, tmp_path: Path) -> None:
    """Accept, replay, stale, unknown, no-op, busy, released, ended: the same decisions and
    states from every store."""
    async with world(kind, tmp_path) as w:
        store = w.store
        user, (pix, masto, fosst) = await w.add_user(
            "ann", [("Pix", False), ("Masto", True), ("Fosst", False)]
        )
        session = await w.open_session(user)
        first = await store.load_state(user)
        assert (first.version, first.active) == (0, masto)  # the default rule
        assert [p.id for p in first.platforms] == [pix, masto, fosst]

        moved = await store.switch(user, session, Switch(id="a", platform=pix, base=0), "t")
        assert isinstance(moved, Accepted) and (moved.version, moved.changed) == (1, True)
        assert moved.state.active == pix and moved.event is not None
        assert (moved.event.user, moved.event.version, moved.event.cause.tab) == (user, 1, "t")

        again = await store.switch(user, session, Switch(id="a", platform=pix, base=0), "t")
        assert isinstance(again, Accepted) and (again.version, again.changed) == (1, False)

        stale = await store.switch(user, session, Switch(id="b", platform=fosst, base=0), "t")
        assert isinstance(stale, Refused) and stale.reason is RejectReason.STALE
        assert stale.state is not None and (stale.state.version, stale.state.active) == (1, pix)

        unknown = await store.switch(user, session, Switch(id="c", platform=10**9, base=1), "t")
        assert isinstance(unknown, Refused) and unknown.reason is RejectReason.UNKNOWN_PLATFORM

        noop = await store.switch(user, session, Switch(id="d", platform=pix, base=1), "t")
        assert isinstance(noop, Accepted) and (noop.version, noop.changed) == (1, False)

        await w.hold(user, "captioning")
        assert (await store.load_hold(user)) is not None
        busy = await store.switch(user, session, Switch(id="e", platform=fosst, base=1), "t")
        assert isinstance(busy, Refused) and (busy.reason, busy.detail) == (
            RejectReason.BUSY,
            "captioning",
        )
        await w.hold(user, None)
        assert (await store.load_hold(user)) is None
        later = await store.switch(user, session, Switch(id="e", platform=fosst, base=1), "t")
        assert isinstance(later, Accepted) and later.version == 2  # busy was not remembered

        await w.revoke(session)
        gone = await store.switch(user, session, Switch(id="f", platform=pix, base=2), "t")
        assert gone == SessionGone(SessionEndReason.REVOKED)
        last = await store.load_state(user)
        assert (last.version, last.active) == (2, fosst)


@pytest.mark.parametrize("kind", ["memory", "sqlite", "postgresql"])
async def test_a_joining_read_is_the_three_reads_at_once(kind: str, tmp_path: Path) -> None:
    """load_joining gives what load_state, load_hold and load_devices give, user by user,
    also when many users join at once (one batch on the SQL stores): each gets its own."""
    async with world(kind, tmp_path) as w:
        store = w.store
        users = []
        for n in range(6):
            user, _ = await w.add_user(f"u{n}", [("A", n % 2 == 0), ("B", n % 2 == 1)])
            for _ in range(n % 3):
                await w.open_session(user)
            if n % 2:
                await w.hold(user, f"held {n}")
            users.append(user)
        await w.revoke(await w.open_session(users[0]))  # ended: not a device

        joined = await asyncio.gather(*(store.load_joining(user) for user in users))
        for user, (state, hold, devices) in zip(users, joined, strict=True):
            assert state == await store.load_state(user)
            assert hold == await store.load_hold(user)
            assert list(devices) == list(await store.load_devices(user))
        assert [len(devices) for _, _, devices in joined] == [0, 1, 2, 0, 1, 2]
        assert [hold is not None for _, hold, _ in joined] == [False, True] * 3
        assert len({state.platforms[0].id for state, _, _ in joined}) == 6  # each its own
