"""The hub's background tasks: the session watcher and the collector, until cancelled."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable

from server.db import Database
from server.errors import StoreUnavailable
from server.hub import Hub
from server.protocol import SessionEndReason
from server.storage import buckets as shared_buckets
from server.storage import expiry, sessions

__all__ = ["check", "collect_forever", "watch_forever"]

logger = logging.getLogger("hub.sessions")


async def check(database: Database, hub: Hub) -> None:
    """End the tabs of sessions that ended, and warn those of sessions about to expire."""
    told = hub.session_ids()
    if not told:
        return
    statuses = await expiry.statuses(database, told)
    now = database.clock()
    warning = dt.timedelta(seconds=database.settings.session_warning_s)
    for session_id in told:
        status = statuses.get(session_id)
        if status is None:
            # Collected already: it was revoked or it expired; say which we can tell.
            hub.end_session(session_id, SessionEndReason.REVOKED)
            continue
        ended, expires_at = status
        if ended is not None:
            hub.end_session(session_id, ended)
        elif expires_at - now <= warning:
            hub.warn_session(session_id, sessions.format_time(expires_at))
        else:
            hub.extend_session(session_id, sessions.format_time(expires_at))


async def watch_forever(database: Database, hub: Hub) -> None:
    """Check connected sessions and idle tabs every ``session_check_s``, until cancelled."""
    interval = database.settings.session_check_s
    while True:
        await asyncio.sleep(interval)
        hub.close_idle()
        try:
            await check(database, hub)
        except StoreUnavailable as error:
            logger.warning("session check skipped: %s", error)


async def collect_forever(
    database: Database,
    *,
    on_collect: Callable[[int], None] | None = None,
    buckets: bool = False,
) -> None:
    """Collect ended sessions and old switch-log rows every ``collect_interval_s``, and the
    shared rate limits' full buckets if ``buckets``.

    ``on_collect`` is told how many sessions each collection deleted (metrics).
    """
    while True:
        await asyncio.sleep(database.settings.collect_interval_s)
        try:
            if buckets:
                await shared_buckets.collect(database)
            collected = await sessions.collect(database)
        except StoreUnavailable as error:
            logger.warning("collection skipped: %s", error)
            continue
        if on_collect is not None:
            on_collect(collected.sessions)
        if collected.sessions or collected.switches:
            logger.info(
                "collected %d sessions and %d switch-log rows",
                collected.sessions,
                collected.switches,
            )
