"""Presence across processes: each process's open tabs per login session, kept in a table.

PostgreSQL only: on SQLite one process holds every tab. The hub (server/presence.py) reports
a session's count of tabs here when it changes; within ``batch_s`` the changes are written
in one transaction, which stages a DevicesChanged event per user, so the processes with
tabs of those users read the user's devices anew (server/storage/devices.py). Every
``presence_heartbeat_s`` the process vouches for its rows. The other processes ignore rows
not vouched for within 3 heartbeats and re-read, every heartbeat, the users with tabs
elsewhere: the tabs of a process that dies leave every list within 4 heartbeats. A process
that stops cleanly deletes its rows, and the others hear of it at once.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable

from sqlalchemy import (
    Connection,
    DateTime,
    Interval,
    bindparam,
    delete,
    func,
    literal,
    select,
    tuple_,
    update,
)
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.exc import IntegrityError

from server import db
from server.db import Database
from server.errors import StoreUnavailable
from server.events import DevicesChanged
from server.storage import backplane

__all__ = ["TabCounts"]

logger = logging.getLogger("hub.presence")
_counts = db.tab_counts
_sessions = db.login_sessions

# The database's clock, in UTC as the tables keep time: every process vouches and is judged
# by the same clock, whatever its host's says.
_NOW = func.timezone("UTC", func.now(), type_=DateTime())
# A session's count, unless the session is gone (collected): then nothing, not an error.
_INSERT = insert(_counts).from_select(
    ["origin", "session_id", "user_id", "tabs", "seen_at"],
    select(
        bindparam("origin", type_=_counts.c.origin.type),
        _sessions.c.id,
        _sessions.c.user_id,
        bindparam("tabs", type_=_counts.c.tabs.type),
        _NOW,
    ).where(_sessions.c.id == bindparam("session")),
)
_UPSERT = _INSERT.on_conflict_do_update(
    index_elements=[_counts.c.origin, _counts.c.session_id],
    set_={"tabs": _INSERT.excluded.tabs, "seen_at": _INSERT.excluded.seen_at},
)


class TabCounts:
    """This process's tabs per login session, written for the other processes."""

    def __init__(self, database: Database, *, batch_s: float = 0.25) -> None:
        self.database = database
        self.origin = database.origin
        self.heartbeat_s = database.settings.presence_heartbeat_s
        self.batch_s = batch_s
        self._pending: dict[int, tuple[int, int]] = {}  # session: (its user, its tabs here)
        self._wake = asyncio.Event()
        # Told after each heartbeat: the hub re-reads the users with tabs elsewhere.
        self.on_beat: Callable[[], None] | None = None
        self.writes = 0

    def report(self, user_id: int, session_id: int, tabs: int) -> None:
        """Record that this process has ``tabs`` open tabs of a session (0: none)."""
        self._pending[session_id] = (user_id, tabs)
        self._wake.set()

    async def run_forever(self) -> None:
        """Write reported counts in batches and vouch for them every heartbeat, until
        cancelled. A write that fails is tried again at the next heartbeat (a session
        collected mid-write: at once), and the first vouch after a lapse of more than two
        heartbeats tells the other processes, which had stopped counting these tabs."""
        loop = asyncio.get_running_loop()
        beat = vouched = loop.time()
        lapsed = False
        while True:
            # asyncio.timeout, not wait_for: 3.11's wait_for can turn a cancellation that
            # meets its timeout into a TimeoutError, and this loop would never stop.
            try:
                async with asyncio.timeout(max(0.0, beat - loop.time())):
                    await self._wake.wait()
            except TimeoutError:
                pass
            else:
                await asyncio.sleep(self.batch_s)  # a storm's changes share one write
            self._wake.clear()
            vouch = loop.time() >= beat
            lapsed = lapsed or loop.time() - vouched > 2 * self.heartbeat_s  # a stalled loop
            try:
                await self._write(vouch, tell_all=vouch and lapsed)
            except StoreUnavailable as error:
                logger.warning("tab counts not written: %s", error)
                beat, lapsed = loop.time() + self.heartbeat_s, True
                continue
            except IntegrityError as error:
                # A session deleted (collected) between the read and the insert of its row:
                # the next write finds it gone and skips it.
                logger.info("tab counts written again: %s", error.orig)
                self._wake.set()
                continue
            except Exception:
                # Not the database's outage: a bug. Say so, and go on at the next heartbeat.
                logger.exception("tab counts not written")
                beat, lapsed = loop.time() + self.heartbeat_s, True
                continue
            if vouch:
                vouched = loop.time()
                beat, lapsed = vouched + self.heartbeat_s, False
                if self.on_beat is not None:
                    self.on_beat()

    async def close(self, within: float = 1.0) -> None:
        """Delete this process's rows, telling the others (a clean stop); a database that
        does not answer within ``within`` seconds leaves them to age out."""
        origin = self.origin

        def work(connection: Connection) -> None:
            gone = delete(_counts).where(_counts.c.origin == origin).returning(_counts.c.user_id)
            users = sorted(set(connection.scalars(gone)))
            backplane.stage(connection, origin, [DevicesChanged(user) for user in users])

        with contextlib.suppress(StoreUnavailable, TimeoutError):
            async with asyncio.timeout(within):
                await self.database.write(work)

    async def _write(self, vouch: bool, *, tell_all: bool = False) -> None:
        pending, self._pending = self._pending, {}
        if not pending and not vouch:
            return
        origin = self.origin
        kept = [
            {"origin": origin, "session": session, "tabs": tabs}
            for session, (_, tabs) in sorted(pending.items())
            if tabs > 0
        ]
        dropped = sorted(session for session, (_, tabs) in pending.items() if tabs == 0)
        users = {user for user, _ in pending.values()}
        forgotten = _NOW - literal(dt.timedelta(seconds=20 * self.heartbeat_s), Interval())

        def work(connection: Connection) -> None:
            if kept:
                connection.execute(_UPSERT, kept)
            if dropped:
                connection.execute(
                    delete(_counts).where(
                        _counts.c.origin == origin, _counts.c.session_id.in_(dropped)
                    )
                )
            if vouch:
                mine = update(_counts).where(_counts.c.origin == origin).values(seen_at=_NOW)
                # After a lapse the others stopped counting these rows: tell them all.
                vouched = connection.scalars(mine.returning(_counts.c.user_id))
                if tell_all:
                    users.update(vouched)
                # Rows of processes long gone (killed): ignored since, now deleted, but not
                # those another process is deleting (no waiting on each other).
                stale = (
                    select(_counts.c.origin, _counts.c.session_id)
                    .where(_counts.c.seen_at < forgotten)
                    .with_for_update(skip_locked=True)
                )
                key = tuple_(_counts.c.origin, _counts.c.session_id)
                connection.execute(delete(_counts).where(key.in_(stale)))
            events = [DevicesChanged(user) for user in sorted(users)]
            backplane.stage(connection, origin, events)

        try:
            await self.database.write(work)
        except BaseException:
            for session, value in pending.items():  # newer reports win
                self._pending.setdefault(session, value)
            raise
        self.writes += 1
