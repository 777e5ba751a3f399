"""The switch batch around rules.decide, and the reads of a user's state and holds."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
from collections.abc import Callable, Sequence
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    insert,
    select,
    update,
)

from server import db
from server.db import (
    Database,
)
from server.protocol import (
    Device,
    HoldView,
    RejectReason,
    SessionEndReason,
    StateView,
    Switch,
)
from server.rules import (
    NO_PLATFORMS,
    Accepted,
    Decision,
    Logged,
    Platforms,
    Refused,
    Seen,
    SessionGone,
    announced,
    decide,
)
from server.settings import Settings
from server.storage import backplane
from server.storage.commits import GroupCommit
from server.storage.devices import live_devices, read_devices
from server.storage.expiry import LIVENESS_BY_IDS, ended_reason, format_time, slide
from server.storage.lists import one_of
from server.storage.reads import GroupRead
from server.store import Joining

__all__ = [
    "PLATFORM_ROWS",
    "PendingSwitch",
    "SqlStore",
    "read_holds",
    "read_state",
    "read_states",
]


class SqlStore:
    """Decide switches with a conditional update on the version, many per transaction.

    Switches go through a group commit (server/storage/commits.py): the switches that queue while a
    batch commits are decided together, in arrival order, in the next transaction. Each
    decision is the one a lone transaction would take, because a batch reads everything it
    needs under the write lock and applies its decisions in order.
    """

    def __init__(
        self,
        database: Database,
        *,
        max_batch: int | None = None,
        on_commit: Callable[[int, float], None] | None = None,
    ) -> None:
        self.database = database
        # Concurrent joins (a reconnect storm) share their reads of states and holds.
        self._states: GroupRead[int, StateView] = GroupRead(self._fetch_states)
        self._holds: GroupRead[int, HoldView] = GroupRead(self._fetch_holds)
        self._devices: GroupRead[int, list[tuple[int, Device]]] = GroupRead(
            functools.partial(live_devices, database)
        )
        self._joinings: GroupRead[int, Joining] = GroupRead(self._fetch_joinings)
        batch = database.settings.commit_batch_max if max_batch is None else max_batch
        # on_commit: told each batch's size and commit time (metrics).
        self.commits: GroupCommit[PendingSwitch, Decision] = GroupCommit(
            self._decide, max_batch=batch, on_commit=on_commit
        )

    async def close(self) -> None:
        """Decide the queued switches, then stop taking more."""
        await self.commits.close()

    async def load_state(self, user_id: int) -> StateView:
        """Read a user's state (with the other users' asked meanwhile: server/storage/reads.py)."""
        state = await self._states.get(user_id)
        assert state is not None  # every user asked has one, if only an empty one
        return state

    async def load_hold(self, user_id: int) -> HoldView | None:
        """Read the hold in force for a user, if any (batched as the states are)."""
        return await self._holds.get(user_id)

    async def load_devices(self, user_id: int) -> list[tuple[int, Device]]:
        """Read a user's live sessions, by id, as devices (batched as the states are)."""
        return await self._devices.get(user_id) or []

    async def load_joining(self, user_id: int) -> Joining:
        """Read a user's state, hold and devices in one transaction (batched as the states
        are): what the user's first tab on this process needs, in one hop to the database."""
        joining = await self._joinings.get(user_id)
        assert joining is not None  # every user asked has one
        return joining

    async def _fetch_joinings(self, user_ids: Sequence[int]) -> dict[int, Joining]:
        database, now = self.database, self.database.clock()

        def work(connection: Connection) -> dict[int, Joining]:
            states = read_states(connection, user_ids)
            holds = read_holds(connection, user_ids, now)
            devices = read_devices(connection, database, user_ids, now)
            return {u: (states[u][2], holds.get(u), devices[u]) for u in user_ids}

        return await database.read(work)

    async def _fetch_states(self, user_ids: Sequence[int]) -> dict[int, StateView]:
        def work(connection: Connection) -> dict[int, StateView]:
            return {user_id: read[2] for user_id, read in read_states(connection, user_ids).items()}

        return await self.database.read(work)

    async def _fetch_holds(self, user_ids: Sequence[int]) -> dict[int, HoldView]:
        now = self.database.clock()
        return await self.database.read(lambda c: read_holds(c, user_ids, now))

    async def switch(
        self, user_id: int, session_id: int, request: Switch, tab_id: str | None
    ) -> Decision:
        """Decide one switch; return once the decision and any new state are committed."""
        return await self.commits.submit(PendingSwitch(user_id, session_id, request, tab_id))

    async def _decide(self, batch: Sequence[PendingSwitch]) -> list[Decision]:
        now = self.database.clock()
        settings = self.database.settings

        origin = self.database.origin

        def work(connection: Connection) -> list[Decision]:
            decisions = _Batch(connection, batch, now, settings).decide()
            # Other processes learn of each new version with this commit, in commit order.
            backplane.stage(
                connection,
                origin,
                (d.event for d in decisions if isinstance(d, Accepted) and d.event is not None),
            )
            return decisions

        return await self.database.write(work)


@dataclasses.dataclass(frozen=True, slots=True)
class PendingSwitch:
    """A switch request waiting for its batch."""

    user_id: int
    session_id: int
    request: Switch
    tab_id: str | None


_sessions = db.login_sessions
_states = db.platform_states
_platforms = db.platforms
_log = db.switch_log
_holds = db.holds


class _Batch:
    """One transaction's worth of switch decisions: read once, decide in order, write once."""

    def __init__(
        self,
        connection: Connection,
        batch: Sequence[PendingSwitch],
        now: dt.datetime,
        settings: Settings,
    ) -> None:
        self.connection, self.batch, self.now, self.settings = connection, batch, now, settings
        self.logins: dict[int, Any] = {}
        self.touched: set[int] = set()
        # Per user: (version, stored active id) as decided so far in this batch.
        self.states: dict[int, tuple[int, int | None]] = {}
        self.platforms: dict[int, Platforms] = {}
        self.holds: dict[int, HoldView] = {}
        # Per (user, request id): the decision already taken.
        self.logged: dict[tuple[int, str], Logged] = {}
        self.updates: list[dict[str, Any]] = []
        self.log_rows: list[dict[str, Any]] = []
        self.used: dict[int, dt.datetime] = {}

    def decide(self) -> list[Decision]:
        self._read()
        decisions = [self._one(pending) for pending in self.batch]
        self._write()
        return decisions

    def _read(self) -> None:
        connection = self.connection
        session_ids = sorted({p.session_id for p in self.batch})
        user_ids = sorted({p.user_id for p in self.batch})
        rows = connection.execute(LIVENESS_BY_IDS, {"ids": session_ids})
        self.logins = {row.id: row for row in rows}
        self.states = _read_states(connection, user_ids, lock=True)
        # After the state rows' lock: a hold placed meanwhile (server/storage/holds.py takes the
        # same lock first) is either committed and seen here, or placed after this batch.
        self.holds = read_holds(connection, user_ids, self.now)
        self.platforms = _read_platforms(connection, user_ids, inactive=True)
        # Joined from a VALUES list: SQLite answers "(a, b) IN (VALUES ...)" with a scan of
        # the whole log, and this with one primary-key lookup per request. Sent as the
        # driver's own SQL: SQLAlchemy would compile a statement of each length anew.
        asked = sorted({(p.user_id, p.request.id) for p in self.batch})
        logged = connection.exec_driver_sql(
            _logged_sql(connection.dialect.paramstyle, len(asked)),
            tuple(value for pair in asked for value in pair),
        )
        self.logged = {
            (row.user_id, row.request_id): Logged(
                None if row.accepted else RejectReason(row.reason), row.version
            )
            for row in logged
        }

    def _one(self, pending: PendingSwitch) -> Decision:
        user_id, request = pending.user_id, pending.request
        # Expiry and logout win over a switch racing them: a switch commits only under a
        # live session, checked inside the same transaction.
        login = self.logins.get(pending.session_id)
        ended = SessionEndReason.REVOKED if login is None else ended_reason(login, self.now)
        version, stored = self.states.get(user_id, (0, None))
        hold = self.holds.get(user_id)
        seen = Seen(
            session_ended=ended,
            version=version,
            stored=stored,
            has_state=user_id in self.states,
            platforms=self.platforms.get(user_id, NO_PLATFORMS),
            hold_reason=hold.reason if hold is not None else None,
            logged=self.logged.get((user_id, request.id)),
        )
        decision = decide(request, seen)
        if isinstance(decision, SessionGone):
            return decision
        self._touch(login)
        if decision.record:
            self._log(pending, decision)
        if isinstance(decision, Accepted) and decision.changed:
            decision = announced(decision, user_id, request, pending.tab_id)
            self.updates.append(
                {
                    "b_user_id": user_id,
                    "b_base": version,
                    "version": decision.version,
                    "active_platform_id": request.platform,
                    "updated_at": self.now,
                }
            )
            self.states[user_id] = (decision.version, request.platform)
            self.used[request.platform] = self.now
        return decision

    def _touch(self, login: Any) -> None:
        if login.id in self.touched:
            return
        if (self.now - login.last_seen_at).total_seconds() >= self.settings.session_touch_s:
            self.touched.add(login.id)

    def _log(self, pending: PendingSwitch, decision: Accepted | Refused) -> None:
        reason = decision.reason if isinstance(decision, Refused) else None
        if isinstance(decision, Accepted):
            version = decision.version
        else:  # refused at the version it saw; a batch always reads the user's state
            assert decision.state is not None
            version = decision.state.version
        row = {
            "user_id": pending.user_id,
            "request_id": pending.request.id,
            "accepted": reason is None,
            "reason": reason.value if reason else None,
            "version": version,
            "platform_id": pending.request.platform,
            "tab_id": pending.tab_id,
            "decided_at": self.now,
        }
        self.log_rows.append(row)
        self.logged[(pending.user_id, pending.request.id)] = Logged(reason, version)

    def _write(self) -> None:
        connection, now = self.connection, self.now
        if self.updates:
            result = connection.execute(_MOVE, self.updates)
            rowcount = getattr(result, "rowcount", -1)
            if rowcount >= 0 and rowcount != len(self.updates):
                # The reads above were taken under the write lock, so this cannot happen;
                # if it does, nothing of this batch is committed.
                raise RuntimeError(
                    f"version arbiter: {rowcount} of {len(self.updates)} conditional updates"
                )
            connection.execute(
                _USED, [{"b_id": pid, "last_used_at": at} for pid, at in self.used.items()]
            )
        if self.log_rows:
            connection.execute(_LOG, self.log_rows)
        if self.touched:
            live = [self.logins[login_id] for login_id in self.touched]
            slide(connection, live, now, self.settings.session_idle_s)


@functools.lru_cache(maxsize=512)
def _logged_sql(paramstyle: str, pairs: int) -> str:
    """The switch-log lookup of ``pairs`` (user id, request id) pairs, in the driver's style."""
    if paramstyle == "qmark":
        marks = [("?", "?")] * pairs
    elif paramstyle in {"numeric_dollar", "format"}:
        marks = [(f"${2 * n + 1}", f"${2 * n + 2}") for n in range(pairs)]
    else:
        raise NotImplementedError(f"parameter style {paramstyle}")
    # The first row's casts give the columns their types on PostgreSQL.
    rows = ", ".join(
        [f"(CAST({marks[0][0]} AS BIGINT), CAST({marks[0][1]} AS VARCHAR(64)))"]
        + [f"({u}, {r})" for u, r in marks[1:]]
    )
    return (
        f"WITH asked(user_id, request_id) AS (VALUES {rows}) "
        "SELECT log.user_id, log.request_id, log.accepted, log.reason, log.version "
        "FROM asked JOIN switch_log AS log "
        "ON log.user_id = asked.user_id AND log.request_id = asked.request_id"
    )


# The hot path's statements, built once: building one costs more than running it.
_STATES = select(_states.c.user_id, _states.c.version, _states.c.active_platform_id).where(
    one_of(_states.c.user_id, "users")
)
# On PostgreSQL, FOR UPDATE (in user order, against deadlocks) makes the batch's reads the
# arbiter's; SQLite already holds the database's write lock and ignores the clause.
_STATES_LOCKED = _STATES.order_by(_states.c.user_id).with_for_update()
# A user's platforms, in id order, as rules.Platforms.of digests them (platforms.py reads
# them so too).
PLATFORM_ROWS = (
    select(
        _platforms.c.id,
        _platforms.c.user_id,
        _platforms.c.name,
        _platforms.c.kind,
        _platforms.c.instance_url,
        _platforms.c.username,
        _platforms.c.is_active,
        _platforms.c.is_default,
        _platforms.c.external_id,
    )
    .where(one_of(_platforms.c.user_id, "users"))
    .order_by(_platforms.c.id)
)
_ACTIVE_PLATFORMS = PLATFORM_ROWS.where(_platforms.c.is_active)
_HOLDS = select(_holds.c.user_id, _holds.c.reason, _holds.c.expires_at).where(
    one_of(_holds.c.user_id, "users")
)
_MOVE = update(_states).where(
    _states.c.user_id == bindparam("b_user_id"), _states.c.version == bindparam("b_base")
)
_USED = update(_platforms).where(_platforms.c.id == bindparam("b_id"))
_LOG = insert(_log)


def read_state(
    connection: Connection, user_id: int, *, lock: bool = False
) -> tuple[int, int | None, StateView]:
    """Read a user's version, stored active choice and the state tabs see, in the open
    transaction; ``lock`` takes the state row as a switch batch does (storage/platforms.py)."""
    return read_states(connection, [user_id], lock=lock)[user_id]


def read_states(
    connection: Connection, user_ids: Sequence[int], *, lock: bool = False
) -> dict[int, tuple[int, int | None, StateView]]:
    """read_state for several users at once, one statement per table; every user asked has
    an entry (a user without a state row has version 0 and no platform chosen)."""
    states = _read_states(connection, user_ids, lock=lock)
    platforms = _read_platforms(connection, user_ids)
    found = {}
    for user_id in user_ids:
        version, stored = states.get(user_id, (0, None))
        found[user_id] = (
            version,
            stored,
            platforms.get(user_id, NO_PLATFORMS).state(version, stored),
        )
    return found


def read_holds(
    connection: Connection, user_ids: Sequence[int], now: dt.datetime
) -> dict[int, HoldView]:
    """Read the holds in force for these users at ``now``, in the open transaction."""
    rows = connection.execute(_HOLDS, {"users": list(user_ids)})
    return {
        user_id: HoldView(reason=reason, expires_at=format_time(expires_at))
        for user_id, reason, expires_at in rows
        if expires_at > now
    }


def _read_states(
    connection: Connection, user_ids: Sequence[int], *, lock: bool = False
) -> dict[int, tuple[int, int | None]]:
    rows = connection.execute(_STATES_LOCKED if lock else _STATES, {"users": list(user_ids)})
    return {row.user_id: (row.version, row.active_platform_id) for row in rows}


def _read_platforms(
    connection: Connection, user_ids: Sequence[int], *, inactive: bool = False
) -> dict[int, Platforms]:
    query = PLATFORM_ROWS if inactive else _ACTIVE_PLATFORMS
    grouped: dict[int, list[Any]] = {}
    for row in connection.execute(query, {"users": list(user_ids)}):
        grouped.setdefault(row[1], []).append(row)
    return {user_id: Platforms.of(rows) for user_id, rows in grouped.items()}
