"""A person's devices: their live login sessions, described from the user agent, by user.

What presence (server/presence.py) shows each tab of a person: per live session, a short
description ("Chrome on macOS"), when it signed in and was last seen, and on PostgreSQL the
tabs other hub processes hold of it (server/storage/presence.py). No token and no IP
address leave this module. The user agent is parsed by ua-parser (the Browserscope rules
that most analytics use) once, when the session is opened (server/storage/sessions.py), and
kept with it: a reconnect storm reads descriptions, it parses nothing.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Sequence

from sqlalchemy import Connection, DateTime, Interval, bindparam, func, select
from ua_parser import parse

from server import db
from server.db import Database
from server.protocol import Device
from server.storage.expiry import LIVENESS_COLUMNS, ended_reason, format_time, handle_of
from server.storage.lists import one_of

__all__ = ["describe", "live_devices", "read_devices"]

_sessions = db.login_sessions
_counts = db.tab_counts
_BY_USERS = (
    select(
        *LIVENESS_COLUMNS,
        _sessions.c.created_at,
        _sessions.c.device,
        _sessions.c.user_agent,
        _sessions.c.token_hash,
    )
    .where(
        one_of(_sessions.c.user_id, "users"),
        _sessions.c.revoked_at.is_(None),
    )
    .order_by(_sessions.c.created_at.desc(), _sessions.c.id.desc())
)
_NOW = func.timezone("UTC", func.now(), type_=DateTime())
_ELSEWHERE = (
    select(_counts.c.session_id, func.sum(_counts.c.tabs))
    .where(
        one_of(_counts.c.user_id, "users"),
        _counts.c.origin != bindparam("origin"),
        # By the database's clock, as the processes vouch (server/storage/presence.py).
        _counts.c.seen_at
        > func.timezone("UTC", func.now(), type_=DateTime())
        - bindparam("window", type_=Interval()),
    )
    .group_by(_counts.c.session_id)
)
# Operating systems as people name them (ua-parser's families otherwise).
_SYSTEMS = {"Mac OS X": "macOS", "Chrome OS": "ChromeOS"}


@functools.lru_cache(maxsize=4096)
def describe(user_agent: str | None) -> str:
    """Describe a device in a few words from its user agent: "Firefox on Linux"."""
    if not user_agent:
        return "Unknown device"
    parsed = parse(user_agent[:300])
    browser = parsed.user_agent.family if parsed.user_agent else None
    system = parsed.os.family if parsed.os else None
    browser = None if browser in (None, "Other") else browser
    system = None if system in (None, "Other") else _SYSTEMS.get(system, system)
    # Families are taken from the user agent's own text: kept short, for one line.
    if browser and system:
        return f"{browser} on {system}"[:80]
    return (browser or system or "Unknown device")[:80]


async def live_devices(
    database: Database, user_ids: Sequence[int]
) -> dict[int, list[tuple[int, Device]]]:
    """Return the live sessions of each user, by id, as devices, newest sign-in first, with
    ``tabs`` the tabs other processes vouched for within 3 heartbeats (none on SQLite)."""
    now = database.clock()
    return await database.read(lambda c: read_devices(c, database, user_ids, now))


def read_devices(
    connection: Connection, database: Database, user_ids: Sequence[int], now: dt.datetime
) -> dict[int, list[tuple[int, Device]]]:
    """``live_devices`` in the transaction open on ``connection``."""
    window = dt.timedelta(seconds=3 * database.settings.presence_heartbeat_s)
    users = list(user_ids)
    elsewhere: dict[int, int] = {}
    if connection.dialect.name == "postgresql":
        found = {"users": users, "origin": database.origin, "window": window}
        elsewhere = {row[0]: int(row[1]) for row in connection.execute(_ELSEWHERE, found)}
    devices: dict[int, list[tuple[int, Device]]] = {user_id: [] for user_id in users}
    for row in connection.execute(_BY_USERS, {"users": users}):
        if ended_reason(row, now) is None:
            devices[row.user_id].append(
                (
                    row.id,
                    Device(
                        session=handle_of(row.token_hash),
                        # Described at sign-in; a session older than that, here.
                        description=row.device or describe(row.user_agent),
                        signed_in_at=format_time(row.created_at),
                        last_active_at=format_time(row.last_seen_at),
                        tabs=elsewhere.get(row.id, 0),
                    ),
                )
            )
    return devices
