"""The backplane: committed changes reach the tabs of every hub process.

Each process delivers to its own tabs. A change is staged inside the transaction that makes
it (``stage``), so only committed changes travel, and in commit order:

- on PostgreSQL, as ``NOTIFY`` on one channel; each process LISTENs on a connection of its own
  (``Listener``) and hands what other processes committed to its hub;
- on SQLite there is one process, which publishes to its tabs itself after each commit, so
  staging sends nothing and nothing listens (``listener_for`` returns None).

Each notification names the database handle (one per process) that committed it, and a
process ignores its own: it has published them to its tabs already, after the asking tab's
answer, and a notification can arrive before that answer is sent.

Notifications are lost while the listening connection is down. The listener reconnects with
backoff, LISTENs first, then resyncs every user with tabs here from the table: versions make
that idempotent, and tabs never regress. Sessions are also rechecked from the table every
``session_check_s`` (server/storage/sessions.py), which catches a lost logout.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Iterable, Iterator, Sequence
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import Connection, text

from server.events import Event, SessionsEnded
from server.storage import feed

__all__ = [
    "CHANNEL",
    "Listener",
    "decode_events",
    "listener_for",
    "stage",
]

logger = logging.getLogger("hub.backplane")

CHANNEL = "hub_events"
# PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more; a batch's events are split.
_MAX_PAYLOAD = 7000
_SESSIONS_PER_EVENT = 250


class _Notice(msgspec.Struct, frozen=True):
    origin: str  # the committing process's database handle (Database.origin)
    events: list[Event]
    # When it was staged (Unix time, inside the committing transaction), for the lag.
    sent: float = 0.0


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(_Notice)
_NOTIFY = text("SELECT pg_notify(:channel, :payload)")


def stage(connection: Connection, origin: str, events: Iterable[Event]) -> None:
    """Send ``events`` with the transaction open on ``connection``, if they need sending.

    ``origin`` names the sender (Database.origin), whose own listener ignores them.

    They are appended to the change feed (server/storage/feed.py) on both engines. On
    PostgreSQL they are also delivered to every listening process when, and only if, the
    transaction commits; on SQLite the serving process publishes its own changes itself, and
    the feed's reader brings those of other processes (the command line).
    """
    listed = list(events)
    feed.append(connection, origin, listed)
    if connection.dialect.name != "postgresql":
        return
    for payload in _payloads(origin, listed):
        connection.execute(_NOTIFY, {"channel": CHANNEL, "payload": payload})


def decode_events(payload: str | bytes) -> tuple[str, list[Event]]:
    """Decode one notification: its origin and its events."""
    notice = _decoder.decode(payload)
    return notice.origin, notice.events


def _split(events: Sequence[Event]) -> Iterator[Event]:
    # A revoke-all of 1,600 sessions was one event over NOTIFY's limit (a 500): sessions go
    # in events of at most _SESSIONS_PER_EVENT ids (about 5 KB), so no count can break it.
    for event in events:
        if isinstance(event, SessionsEnded) and len(event.sessions) > _SESSIONS_PER_EVENT:
            for start in range(0, len(event.sessions), _SESSIONS_PER_EVENT):
                chunk = event.sessions[start : start + _SESSIONS_PER_EVENT]
                yield SessionsEnded(sessions=chunk, reason=event.reason)
        else:
            yield event


def _payloads(origin: str, events: Sequence[Event]) -> Iterator[str]:
    batch: list[Event] = []
    size = 0
    for event in _split(events):
        length = len(_encoder.encode(event)) + 1
        if batch and size + length > _MAX_PAYLOAD:
            yield _encoder.encode(_Notice(origin, batch, time.time())).decode()
            batch, size = [], 0
        batch.append(event)
        size += length
    if batch:
        yield _encoder.encode(_Notice(origin, batch, time.time())).decode()


class Listener:
    """LISTEN on PostgreSQL and hand every event to ``deliver``; reconnect and resync on loss.

    ``resync`` runs after each (re)connection's LISTEN, before anything is delivered, so what
    was committed while the connection was down still reaches the tabs.
    """

    def __init__(
        self,
        dsn: str,
        origin: str,
        deliver: Callable[[Event], None],
        resync: Callable[[], Awaitable[object]],
        *,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
    ) -> None:
        self.dsn = dsn
        self.origin = origin
        self.deliver = deliver
        self.resync = resync
        self.backoff_s = backoff_s
        self.backoff_max_s = backoff_max_s
        self.connected = asyncio.Event()
        self.reconnects = 0  # connections made after the first
        # Told the seconds from each notification's staging (in the committing transaction,
        # on the sender's clock) to its delivery here (metrics).
        self.on_lag: Callable[[float], None] | None = None
        self.backend_pid: int | None = None  # of the listening connection, for tests
        self._lost: asyncio.Event = asyncio.Event()

    async def run_forever(self) -> None:
        """Listen until cancelled, reconnecting with jittered backoff whenever it drops."""
        attempt = 0
        first = True
        while True:
            try:
                connection = await asyncpg.connect(self.dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                attempt += 1
                delay = random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2**attempt))
                logger.warning("backplane: cannot listen (%s); again in %.2f s", error, delay)
                await asyncio.sleep(delay)
                continue
            try:
                await self._listen(connection, first)
                first, attempt = False, 0
                await self._lost.wait()
                logger.warning("backplane: the listening connection was lost; reconnecting")
                # Jittered, so processes that lost PostgreSQL together do not return together.
                await asyncio.sleep(random.uniform(self.backoff_s / 2, self.backoff_s))
            except (OSError, asyncpg.PostgresError) as error:
                logger.warning("backplane: listening failed (%s); reconnecting", error)
                attempt += 1
                await asyncio.sleep(random.uniform(0, self.backoff_s * 2**attempt))
            finally:
                self.connected.clear()
                self.backend_pid = None
                if not connection.is_closed():
                    connection.terminate()

    async def _listen(self, connection: asyncpg.Connection, first: bool) -> None:
        self._lost.clear()
        connection.add_termination_listener(lambda _: self._lost.set())
        # Held back until the resync has read the table: a notification it already covers
        # is then dropped by the outboxes, never delivered out of order.
        held: list[str] = []
        resyncing = True

        def received(_connection: Any, _pid: int, _channel: str, payload: str) -> None:
            if resyncing:
                held.append(payload)
            else:
                self._deliver(payload)

        await connection.add_listener(CHANNEL, received)
        self.backend_pid = connection.get_server_pid()
        if not first:
            self.reconnects += 1
        await self.resync()
        resyncing = False
        for payload in held:
            self._deliver(payload)
        self.connected.set()

    def _deliver(self, payload: str) -> None:
        try:
            notice = _decoder.decode(payload)
        except msgspec.DecodeError:
            logger.error("backplane: an undecodable notification was dropped: %.200s", payload)
            return
        if notice.origin == self.origin:
            return
        if self.on_lag is not None and notice.sent:
            self.on_lag(max(0.0, time.time() - notice.sent))
        for event in notice.events:
            self.deliver(event)


def listener_for(
    database_url: str,
    origin: str,
    deliver: Callable[[Event], None],
    resync: Callable[[], Awaitable[object]],
    *,
    backoff_s: float = 0.1,
) -> Listener | None:
    """Return the listener a database needs: one on PostgreSQL, none on SQLite."""
    if not database_url.startswith("postgresql"):
        return None
    dsn = "postgresql://" + database_url.split("://", 1)[1]
    return Listener(dsn, origin, deliver, resync, backoff_s=backoff_s)
