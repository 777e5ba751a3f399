"""Holds: while a job of the host app runs for a user, that user's switches are refused.

In the app the hub serves, a user may start a long job on the active platform (caption
generation); a switch then must not half-apply. The host app places a hold with a reason
and a TTL; until it is released or its TTL runs out, switches are rejected ``busy`` with the
hold's reason, and every tab is told when the hold starts and ends.

A hold is a row (one per user). Placing or releasing one locks the user's state row first,
as a switch batch does, and the batch reads holds after that lock: a switch is decided
wholly before a placement (and the placement's answer shows its result) or after it (and is
refused). The change travels to other processes with its commit (server/storage/backplane.py); each
process with tabs of the user tells them, and ends the hold there when its TTL runs out.
"""

from __future__ import annotations

import datetime as dt

from sqlalchemy import Connection, delete, insert

from server import db
from server.api import UserState
from server.db import Database
from server.events import HoldChanged
from server.protocol import HoldView
from server.storage import backplane
from server.storage.expiry import format_time
from server.storage.switches import read_holds, read_state

__all__ = ["place", "release", "state_of"]

_holds = db.holds


async def place(database: Database, user_id: int, reason: str, ttl_s: float) -> UserState:
    """Hold a user's switches for ``ttl_s`` seconds (replacing any hold); return it."""
    now = database.clock()
    # To the millisecond, as tabs are told it: the end they hear is the end that is stored.
    expires = now + dt.timedelta(seconds=ttl_s)
    expires -= dt.timedelta(microseconds=expires.microsecond % 1000)
    hold = HoldView(reason=reason, expires_at=format_time(expires))
    origin = database.origin

    def work(connection: Connection) -> UserState:
        _, _, state = read_state(connection, user_id, lock=True)
        connection.execute(delete(_holds).where(_holds.c.user_id == user_id))
        connection.execute(
            insert(_holds).values(user_id=user_id, reason=reason, placed_at=now, expires_at=expires)
        )
        backplane.stage(connection, origin, [HoldChanged(user=user_id, hold=hold)])
        return UserState(hold=hold, state=state)

    return await database.write(work)


async def release(database: Database, user_id: int) -> UserState:
    """End a user's hold, if there is one; switches are decided again."""
    origin = database.origin

    def work(connection: Connection) -> UserState:
        _, _, state = read_state(connection, user_id, lock=True)
        connection.execute(delete(_holds).where(_holds.c.user_id == user_id))
        backplane.stage(connection, origin, [HoldChanged(user=user_id, hold=None)])
        return UserState(hold=None, state=state)

    return await database.write(work)


async def state_of(database: Database, user_id: int) -> UserState:
    """Read a user's state and the hold in force, in one read transaction (three indexed
    queries, no lock): what a host app reads to render a page or start a job."""
    now = database.clock()

    def work(connection: Connection) -> UserState:
        _, _, state = read_state(connection, user_id)
        return UserState(hold=read_holds(connection, [user_id], now).get(user_id), state=state)

    return await database.read(work)
