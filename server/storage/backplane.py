"""The backplane: what other hub processes on PostgreSQL committed reaches this one's tabs.

Each process delivers its own changes to its tabs itself. Every commit also writes its events
to the change feed (server/storage/feed.py), a row per shard of the users it changed
(server/events.py), in its own transaction; ``stage`` does that and wakes the processes that
read those shards: a NOTIFY on each shard's channel (``hub_feed_<n>``) carrying the
committer's origin, so it can ignore its own, and the ids of the shard's users it changed (up
to ``HINT_USERS`` of them), so a process with none of their tabs need not look. A wake-up
carries no change: no payload limit bounds a change, and a lost wake-up costs latency, never
a change.

Each process (``Listener``) LISTENs, on a connection of its own, on the channels of the shards
of the users with tabs on it, and after a wake-up reads the feed's new rows of those shards
under one snapshot: one statement's (one round trip), or past a page of rows one REPEATABLE
READ transaction's; it decodes only the rows that list a user with tabs on it. New rows are
told by transaction ids, not positions (a position is drawn at insert, so a row can commit
after a higher one): each look keeps its snapshot's
``xmax`` and the transactions it saw in flight (``xip``), and the next look reads the rows of
transactions at or above that ``xmax`` or among those in flight. Those are exactly the rows
committed in between, each read once, in position order (the order in which each user's
changes committed); a long transaction holds back nothing but its own rows.

When the connection drops, the listener reconnects with jittered backoff and reads on from
where it was: nothing is resynced. Only a listener that starts, or whose unread rows may have
been collected meanwhile (the collection records the highest transaction it deleted rows of,
and deletes only rows of transactions that ended at least ``feed_retention_s`` ago:
server/storage/feed.py), resyncs every user with tabs here from the tables. Sessions are also
rechecked every ``session_check_s`` (server/storage/sessions.py).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import Any

import asyncpg
import msgspec
from sqlalchemy import Connection, text

from server.events import Event
from server.storage import feed

__all__ = ["CHANNEL", "Listener", "channel", "listener_for", "stage"]

logger = logging.getLogger("hub.backplane")

CHANNEL = "hub_feed"
# Whether commits wake the readers of their shards. A hub always does; bench/commits.py turns
# it off to measure what NOTIFY costs a commit (it takes a lock held to the commit's end).
WAKE = True
_NOTIFY = text(
    "SELECT pg_notify(CAST(:prefix AS text) || t.shard, t.payload)"
    " FROM unnest(CAST(:shards AS int[]), CAST(:payloads AS text[])) AS t(shard, payload)"
)
# A wake-up names the users of its shard that the commit changed, when they are this few (a
# batch of switches spreads a few over each shard); past that it names none, and wakes every
# reader of the shard.
HINT_USERS = 32
# A look's snapshot: its xmax, the transactions in flight (as bigints), and the highest
# transaction whose rows the feed's collection deleted (server/storage/feed.py).
_SNAPSHOT = (
    "SELECT pg_snapshot_xmax(s)::text::bigint AS xmax,"
    " ARRAY(SELECT x::text::bigint FROM pg_snapshot_xip(s) AS x) AS xip,"
    " (SELECT coalesce(max(tx), 0) FROM feed_collected) AS collected"
    " FROM pg_current_snapshot() AS s"
)
_PAGE = 500
_NEW = (  # the rows of hosted shards committed since the last look, not this process's
    "SELECT position, events, created_at, users FROM changes"
    " WHERE (tx >= $1 OR tx = ANY($2::bigint[])) AND shard = ANY($3::smallint[])"
    " AND origin <> $4"
)
_ROWS = f"{_NEW} AND position > $5 ORDER BY position LIMIT {_PAGE}"
# The common look in one statement, so one round trip: the statement's own snapshot (a
# READ COMMITTED statement reads under one, and pg_current_snapshot() returns it) and the new
# rows under it, at least one row (the snapshot's, with a null position when nothing is new).
_LOOK = (
    f"WITH snap AS MATERIALIZED ({_SNAPSHOT})"
    " SELECT snap.xmax, snap.xip, snap.collected, c.position, c.events, c.created_at, c.users"
    f" FROM snap LEFT JOIN LATERAL ({_NEW} ORDER BY position LIMIT {_PAGE}) AS c ON true"
    " ORDER BY c.position"
)
_decoder = msgspec.json.Decoder(list[Event])


def channel(shard: int) -> str:
    """Return the channel that wakes the readers of ``shard``."""
    return f"{CHANNEL}_{shard}"


def stage(connection: Connection, origin: str, events: Iterable[Event]) -> None:
    """Send ``events`` with the transaction open on ``connection``.

    ``origin`` names the sender (Database.origin), which publishes to its own tabs itself.
    They are appended to the change feed on both engines (on SQLite, its reader brings those
    of other processes, such as the command line); on PostgreSQL the readers of their shards
    are woken when, and only if, the transaction commits.
    """
    shards = feed.append(connection, origin, list(events))
    if shards and WAKE and connection.dialect.name == "postgresql":
        payloads = [
            " ".join([origin, *map(str, users)]) if len(users) <= HINT_USERS else origin
            for users in shards.values()
        ]
        connection.execute(
            _NOTIFY, {"prefix": CHANNEL + "_", "shards": list(shards), "payloads": payloads}
        )


class Listener:
    """Read what other processes committed, for the shards hosted here, and hand every event
    to ``deliver``; reconnect and read on after a loss.

    ``hosted`` returns the shards of the users with tabs here, and ``users`` (when given) those
    users: a live collection, for ``in``; ``wake`` must be called when a shard gains its first
    user (server/rooms.py's Interest.on_new). With ``users``, a wake-up that names none of
    them is passed over, and a row that lists none of them is not decoded (asked as it is
    delivered: a user that gets its first tab later reads its state after the row committed;
    a row of an older hub lists none, and is decoded).

    ``resync`` runs after the first look, and whenever rows this process had not read were
    collected (it was away longer than the feed keeps them), a row could not be read or
    ``deliver`` failed; until it succeeds it is tried again.

    Delivery is at least once and in commit order per user: a look that fails part-way is
    read again whole after the reconnection (versions make a repeated state harmless).
    """

    def __init__(
        self,
        dsn: str,
        origin: str,
        deliver: Callable[[Event], None],
        resync: Callable[[], Awaitable[object]],
        *,
        hosted: Callable[[], Iterable[int]] = lambda: (),
        users: Callable[[], Collection[int]] | None = None,
        backoff_s: float = 0.1,
        backoff_max_s: float = 2.0,
        look_timeout_s: float = 10.0,
        look_every_s: float = 5.0,
    ) -> None:
        self.dsn, self.origin = dsn, origin
        self.deliver, self.resync, self.hosted, self.users = deliver, resync, hosted, users
        self.backoff_s, self.backoff_max_s = backoff_s, backoff_max_s
        self.look_timeout_s = look_timeout_s
        # A look at least this often without a wake-up: a connection that stalls without
        # breaking is found within look_every_s + look_timeout_s, and reconnected.
        self.look_every_s = look_every_s
        self.connected = asyncio.Event()
        self.reconnects = 0  # connections made after the first
        self.resyncs = 0
        self.looks = 0
        self.delivered = 0  # events of other processes handed over
        self.passed = 0  # wake-ups passed over: they named none of the users here
        self.skipped = 0  # rows not decoded: they listed none of the users here
        # Told the seconds from each row's commit (on the sender's clock) to its delivery.
        self.on_lag: Callable[[float], None] | None = None
        self.backend_pid: int | None = None  # of the listening connection, for tests
        # Where the last look ended: its snapshot's xmax and in-flight transactions.
        self._xmax: int | None = None
        self._xip: list[int] = []
        self._resync_due = True  # until a resync succeeds: the start, a gap, a bad row
        self._wake = asyncio.Event()
        self._listening: set[int] = set()
        self._generation = 0  # counts wake(): shards newly hosted

    def wake(self) -> None:
        """Look at the feed soon: a shard is newly hosted here."""
        self._generation += 1
        self._wake.set()

    async def run_forever(self) -> None:
        """Listen and read until cancelled, reconnecting with jittered backoff on a loss."""
        failures = 0  # in a row: connections refused, or lost before their first look
        first = True
        while True:
            looked = self.looks
            try:
                connection = await asyncpg.connect(self.dsn, timeout=5)
            except (OSError, asyncpg.PostgresError, TimeoutError) as error:
                failures += 1
                delay = self._backoff(failures)
                logger.warning("backplane: cannot listen (%s); again in %.2f s", error, delay)
                await asyncio.sleep(delay)
                continue
            try:
                if not first:
                    self.reconnects += 1
                first = False
                await self._serve(connection)
                logger.warning("backplane: the listening connection was lost; reconnecting")
            except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as error:
                logger.warning("backplane: listening failed (%r); reconnecting", error)
            except Exception:
                logger.exception("backplane: a look failed; reconnecting")
            finally:
                self.connected.clear()
                self.backend_pid = None
                self._listening.clear()
                if not connection.is_closed():
                    connection.terminate()
            failures = 0 if self.looks > looked else failures + 1
            # Jittered, so processes that lost PostgreSQL together do not return together.
            await asyncio.sleep(self._backoff(failures))

    def _backoff(self, failures: int) -> float:
        return random.uniform(0, min(self.backoff_max_s, self.backoff_s * 2 ** min(failures, 16)))

    async def _serve(self, connection: asyncpg.Connection) -> None:
        """Read on from the last look, then look after every wake-up (and every
        ``look_every_s``) until the connection is lost."""
        lost = asyncio.Event()
        connection.add_termination_listener(lambda _: lost.set())
        self.backend_pid = connection.get_server_pid()
        async with asyncio.timeout(self.look_timeout_s):
            await self._look(connection)
        await self._resync_if_due()  # not under the look's timeout: it may read many users
        self.connected.set()
        losing = asyncio.create_task(lost.wait())
        try:
            while True:
                waking = asyncio.create_task(self._wake.wait())
                await asyncio.wait(
                    [waking, losing], timeout=self.look_every_s, return_when=asyncio.FIRST_COMPLETED
                )
                waking.cancel()
                if lost.is_set():
                    return
                self._wake.clear()
                async with asyncio.timeout(self.look_timeout_s):
                    await self._look(connection)
                await self._resync_if_due()
        finally:
            losing.cancel()

    async def _resync_if_due(self) -> None:
        if self._resync_due:
            self.resyncs += 1
            await self.resync()
            self._resync_due = False

    async def _look(self, connection: asyncpg.Connection) -> None:
        """LISTEN for the shards newly hosted (and stop for those no longer), then deliver
        the rows committed since the last look; the first look only sets where reading
        begins."""
        hosted = set(self.hosted())
        for shard in hosted - self._listening:
            await connection.add_listener(channel(shard), self._woken)
        for shard in self._listening - hosted:
            await connection.remove_listener(channel(shard), self._woken)
        self._listening = hosted
        generation = self._generation
        shards = sorted(hosted)
        if self._xmax is None or not shards:
            found = [await connection.fetchrow(_SNAPSHOT)]
        else:
            found = await connection.fetch(_LOOK, self._xmax, self._xip, shards, self.origin)
        xmax, xip = found[0]["xmax"], found[0]["xip"]
        if self._gap(found[0]["collected"]):
            pass  # start afresh from here, resynced
        elif self._xmax is not None and shards:
            rows = [row for row in found if row["position"] is not None]
            if len(rows) < _PAGE and generation == self._generation:
                for row in rows:
                    self._deliver(row)
            else:
                # More than a page, or a shard came while the statement ran (its rows up to
                # the snapshot may be newer than its first tab's state read): read it all
                # again in one REPEATABLE READ snapshot, by pages, the shards asked after it.
                xmax, xip = await self._look_by_pages(connection)
        self._xmax, self._xip = xmax, list(xip)
        self.looks += 1

    def _gap(self, collected: int) -> bool:
        """Tell (and resync) whether rows this process had not read may have been collected:
        rows of transactions at or above the last look's xmax, or in flight at it."""
        if self._xmax is None or collected < min([self._xmax, *self._xip]):
            return False
        logger.warning("backplane: the feed was collected past this process; resyncing")
        self._resync_due = True
        return True

    async def _look_by_pages(self, connection: asyncpg.Connection) -> tuple[int, list[int]]:
        async with connection.transaction(isolation="repeatable_read", readonly=True):
            snapshot = await connection.fetchrow(_SNAPSHOT)
            # Asked after the snapshot: a shard that comes later has its rows up to here in
            # its first tab's state read, and the next look reads on from here.
            shards = [] if self._gap(snapshot["collected"]) else sorted(self.hosted())
            after = 0
            while shards:
                rows = await connection.fetch(
                    _ROWS, self._xmax, self._xip, shards, self.origin, after
                )
                for row in rows:
                    self._deliver(row)
                if len(rows) < _PAGE:
                    break
                after = rows[-1]["position"]
        return snapshot["xmax"], snapshot["xip"]

    def _deliver(self, row: Any) -> None:
        listed = row["users"]
        if self.users is not None and listed is not None:
            hosted = self.users()
            if not any(user in hosted for user in listed):
                self.skipped += 1
                return
        try:
            events = _decoder.decode(row["events"])
        except msgspec.DecodeError as error:
            # A newer hub's event: its users are resynced (the state tables are the truth).
            logger.error("backplane: row %d cannot be read (%s); resyncing", row["position"], error)
            self._resync_due = True
            return
        if self.on_lag is not None:
            committed = row["created_at"].replace(tzinfo=dt.UTC)
            self.on_lag(max(0.0, (dt.datetime.now(dt.UTC) - committed).total_seconds()))
        for event in events:
            try:
                self.deliver(event)
            except Exception:
                logger.exception("backplane: delivering %r failed; resyncing", event)
                self._resync_due = True
            else:
                self.delivered += 1

    def _woken(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        origin, _, named = payload.partition(" ")
        if origin == self.origin:
            return
        if named and self.users is not None:
            hosted = self.users()
            try:
                if not any(int(user) in hosted for user in named.split()):
                    self.passed += 1
                    return
            except ValueError:
                pass  # not a list of ids: look
        self._wake.set()


def listener_for(
    database_url: str,
    origin: str,
    deliver: Callable[[Event], None],
    resync: Callable[[], Awaitable[object]],
    *,
    hosted: Callable[[], Iterable[int]] = lambda: (),
    users: Callable[[], Collection[int]] | None = None,
    backoff_s: float = 0.1,
) -> Listener | None:
    """Return the listener a database needs: one on PostgreSQL, none on SQLite."""
    if not database_url.startswith("postgresql"):
        return None
    dsn = "postgresql://" + database_url.split("://", 1)[1]
    return Listener(
        dsn,
        origin,
        deliver,
        resync,
        hosted=hosted,
        users=users,
        backoff_s=backoff_s,
    )
