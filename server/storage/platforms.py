"""Platform management: add, rename, deactivate, reactivate, make default, delete.

Each change is one write transaction that also moves the user's version (a change that changes
nothing moves nothing and tells no tab), so it reaches every
tab as a state, in version order with the switches: it locks the user's state row first, as
a switch batch does (SQLite has one writer anyway), so a switch racing a change is decided
either wholly before it or wholly after it. The rules, checked inside that transaction:

- names are unique per user, and so are accounts (instance URL and username) and the host
  app's external ids;
- the last active platform can be neither deactivated nor deleted;
- among the active platforms exactly one is the default: deactivating or deleting the
  default makes the first remaining active one the default;
- when the active choice is deactivated or deleted, it moves to the default platform.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Collection, Sequence
from typing import Any

from sqlalchemy import Connection, delete, insert, update

from server import db
from server.api import (
    PlatformCreate,
    PlatformDetail,
    PlatformList,
    PlatformMirrored,
    PlatformsMirror,
    PlatformUpdate,
)
from server.db import Database
from server.errors import PlatformRefused
from server.events import StateChanged
from server.protocol import PLATFORMS_CAUSE, ErrorCode
from server.rules import active_platform, default_platform
from server.storage import backplane
from server.storage.switches import PLATFORM_ROWS, read_state

__all__ = [
    "External",
    "PlatformRef",
    "add",
    "change",
    "check_room",
    "listing",
    "mirror",
    "remove",
    "seed",
]

_platforms = db.platforms
_states = db.platform_states


class External(str):
    """A platform named by the host app's external id rather than the hub's id."""

    __slots__ = ()


# A platform as the host API names it: the hub's id, or the host app's external id.
PlatformRef = int | External


async def listing(database: Database, user_id: int) -> PlatformList:
    """Return every platform of a user, active or not, and the state tabs see."""

    def work(connection: Connection) -> PlatformList:
        _, _, state = read_state(connection, user_id)
        return PlatformList(platforms=tuple(_details(connection, user_id)), state=state)

    return await database.read(work)


async def add(database: Database, user_id: int, new: PlatformCreate) -> PlatformList:
    """Connect a platform account; the first one, or one asked to be, becomes the default."""

    most = database.settings.max_platforms_per_user

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> Deleted:
        check_room(len(rows) + 1, most)
        _check_unique(rows, new.name, (new.instance_url, new.username), new.external_id)
        if new.is_default:
            _clear_default(connection, user_id, now)
        _insert(connection, user_id, new, now, active=True)
        return ()

    return await _apply(database, user_id, mutate)


async def change(
    database: Database, user_id: int, platform: PlatformRef, edit: PlatformUpdate
) -> PlatformList:
    """Rename a platform, deactivate or reactivate it, or make it the default."""

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> Deleted:
        target = _find(rows, platform)
        values: dict[str, Any] = {}
        if edit.name is not None and edit.name != target.name:
            _check_unique([r for r in rows if r.id != target.id], edit.name, None)
            values["name"] = edit.name
        active = target.is_active if edit.is_active is None else edit.is_active
        if target.is_active and not active:
            _check_not_last_active(rows, target)
        if active != target.is_active:
            values["is_active"] = active
        if edit.is_default and not target.is_default:
            if not active:
                raise PlatformRefused(
                    ErrorCode.INACTIVE_PLATFORM,
                    f"{target.name} is deactivated; reactivate it to make it the default.",
                )
            _clear_default(connection, user_id, now)
            values["is_default"] = True
        if values:
            connection.execute(
                update(_platforms)
                .where(_platforms.c.id == target.id)
                .values(updated_at=now, **values)
            )
        return ()

    return await _apply(database, user_id, mutate)


async def remove(database: Database, user_id: int, platform: PlatformRef) -> PlatformList:
    """Delete a platform connection (the hub keeps no credentials to forget)."""

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> Deleted:
        target = _find(rows, platform)
        if target.is_active:
            _check_not_last_active(rows, target)
        connection.execute(delete(_platforms).where(_platforms.c.id == target.id))
        return (target.id,)

    return await _apply(database, user_id, mutate)


async def mirror(database: Database, user_id: int, wanted: PlatformsMirror) -> PlatformList:
    """Make a user's platforms what the host app says, matched by external id where given,
    else by account; one new version, or none when the list is what is stored.

    The host app is the source of truth here, so a list without an active platform is
    accepted: the user then has none, and tabs are told to set one up (``active`` null).
    """
    check_room(len(wanted.platforms), database.settings.max_platforms_per_user)
    accounts = [(p.instance_url, p.username) for p in wanted.platforms]
    names = [p.name for p in wanted.platforms]
    externals = [p.external_id for p in wanted.platforms if p.external_id is not None]
    if any(len(set(listed)) < len(listed) for listed in (accounts, names, externals)):
        raise PlatformRefused(
            ErrorCode.NAME_TAKEN,
            "Each platform's name, account and external id must appear once.",
        )
    if sum(p.is_default and p.is_active for p in wanted.platforms) > 1:
        raise PlatformRefused(ErrorCode.DEFAULT_TAKEN, "At most one platform can be the default.")

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> Deleted:
        pairs = _matched(wanted.platforms, rows)
        kept_ids = {row.id for _, row in pairs if row is not None}
        gone = [r.id for r in rows if r.id not in kept_ids]
        if gone:
            connection.execute(delete(_platforms).where(_platforms.c.id.in_(gone)))
        default = _mirrored_default(pairs)
        # Only the rows that differ are written (a mirror of what is stored writes nothing).
        kept = [
            (p, row)
            for p, row in pairs
            if row is not None and _mirrored(p, row.id == default) != _mirrored(row, row.is_default)
        ]
        # Names, accounts and external ids are unique per user: park the changing ones first,
        # so a swap cannot collide. A parked name or username holds a control character,
        # which no real one may (protocol.LINE), and not NUL, which PostgreSQL cannot store;
        # a parked external id is null, which never collides.
        for platform, row in kept:
            parked: dict[str, Any] = {}
            if platform.name != row.name:
                parked["name"] = f"\x1f{row.id}"
            if (platform.instance_url, platform.username) != (row.instance_url, row.username):
                parked["username"] = f"\x1f{row.id}"
            if platform.external_id != row.external_id:
                parked["external_id"] = None
            if parked:
                connection.execute(
                    update(_platforms).where(_platforms.c.id == row.id).values(**parked)
                )
        for platform, row in kept:
            connection.execute(
                update(_platforms)
                .where(_platforms.c.id == row.id)
                .values(
                    name=platform.name,
                    kind=platform.kind,
                    instance_url=platform.instance_url,
                    username=platform.username,
                    external_id=platform.external_id,
                    is_active=platform.is_active,
                    is_default=row.id == default,
                    updated_at=now,
                )
            )
        for platform, paired in pairs:
            if paired is None:
                _insert(connection, user_id, platform, now, active=platform.is_active)
        return gone

    return await _apply(database, user_id, mutate)


def _matched(
    wanted: Sequence[PlatformMirrored], rows: list[PlatformDetail]
) -> list[tuple[PlatformMirrored, PlatformDetail | None]]:
    """Pair each listed platform with the stored row it is (None: a new one): by external id
    first, then, for the rest, by account among the rows not yet paired. So an account whose
    URL or username changed keeps its row (and its id, and the active choice), and rows
    mirrored before the host app gave external ids adopt theirs."""
    by_external = {r.external_id: r for r in rows if r.external_id is not None}
    paired: list[PlatformDetail | None] = [
        by_external.get(p.external_id) if p.external_id else None for p in wanted
    ]
    taken = {row.id for row in paired if row is not None}
    by_account = {(r.instance_url, r.username): r for r in rows}
    for index, platform in enumerate(wanted):
        found = by_account.get((platform.instance_url, platform.username))
        if paired[index] is None and found is not None and found.id not in taken:
            paired[index] = found
            taken.add(found.id)
    return list(zip(wanted, paired, strict=True))


def _mirrored(platform: PlatformMirrored | PlatformDetail, default: bool) -> tuple[Any, ...]:
    """What a mirror may change of a kept row: all but its id."""
    return (
        platform.name,
        platform.kind,
        platform.instance_url,
        platform.username,
        platform.external_id,
        platform.is_active,
        default,
    )


def _mirrored_default(
    pairs: Sequence[tuple[PlatformMirrored, PlatformDetail | None]],
) -> int | None:
    """The kept row a mirror leaves as the default (None: none of them), as _normalize_default
    will: the listed active default, else the first active account in id order; new rows get
    ids after every kept one, so they come after them."""
    listed = [(p, row) for p, row in pairs if p.is_active and p.is_default]
    if listed:
        row = listed[0][1]
        return row.id if row is not None else None
    active = [row.id for p, row in pairs if row is not None and p.is_active]
    return min(active) if active else None


def seed(
    connection: Connection,
    user_id: int,
    new: Sequence[PlatformCreate],
    now: dt.datetime,
    *,
    most: int,
) -> None:
    """Write a new user's first platforms, in the transaction that creates the user (no tab
    of theirs can exist yet, so no version moves): the rules of ``add``, all at once."""
    check_room(len(new), most)
    rows: list[PlatformDetail] = []
    for platform in new:
        account = (platform.instance_url, platform.username)
        _check_unique(rows, platform.name, account, platform.external_id)
        rows.append(
            PlatformDetail(0, platform.name, platform.kind, platform.instance_url,
                           platform.username, True, platform.is_default, platform.external_id)
        )  # fmt: skip
        _insert(connection, user_id, platform, now, active=True)
    _normalize_default(connection, user_id, now)


def check_room(count: int, most: int) -> None:
    """Refuse a change that would leave a user more than ``most`` platforms."""
    if count > most:
        raise PlatformRefused(
            ErrorCode.TOO_MANY_PLATFORMS, f"A user may connect at most {most} platforms."
        )


# A change's own writes; it returns the ids of the rows it deleted. SQLite (no AUTOINCREMENT)
# gives a row inserted after deleting the highest id that same id again, so a deleted active
# platform must not pass for the new row that took its id.
Deleted = Collection[int]
_Mutation = Callable[[Connection, list[PlatformDetail], dt.datetime], Deleted]


async def _apply(database: Database, user_id: int, mutate: _Mutation) -> PlatformList:
    now = database.clock()
    origin = database.origin

    def work(connection: Connection) -> PlatformList:
        # The state row first, locked (FOR UPDATE on PostgreSQL), as a switch batch takes it:
        # this change and any switch of the user are decided one after the other.
        version, _, before = read_state(connection, user_id, lock=True)
        found = _details(connection, user_id)
        deleted = mutate(connection, found, now)
        stored = None if before.active in deleted else before.active
        rows = _normalize_default(connection, user_id, now)
        # The next version is past 0, so the choice tabs saw stays while it is active.
        active = active_platform(version + 1, stored, [r for r in rows if r.is_active])
        if rows == found and active == before.active:
            # A change that changes nothing (a mirror of what is stored, a rename to the same
            # name): no new version, nothing to tell, and no tab's switch made stale by it.
            return PlatformList(platforms=tuple(rows), state=before)
        moved = connection.execute(
            update(_states)
            .where(_states.c.user_id == user_id, _states.c.version == version)
            .values(version=version + 1, active_platform_id=active, updated_at=now)
        )
        if moved.rowcount != 1:
            raise RuntimeError(f"version arbiter: user {user_id} has no state row at {version}")
        _, _, state = read_state(connection, user_id)
        event = StateChanged(
            user=user_id, version=state.version, active=state.active, cause=PLATFORMS_CAUSE
        )
        backplane.stage(connection, origin, [event])
        return PlatformList(platforms=tuple(rows), state=state)

    return await database.write(work)


def _insert(
    connection: Connection,
    user_id: int,
    platform: PlatformCreate | PlatformMirrored,
    now: dt.datetime,
    *,
    active: bool,
) -> None:
    connection.execute(
        insert(_platforms).values(
            user_id=user_id,
            name=platform.name,
            kind=platform.kind,
            instance_url=platform.instance_url,
            username=platform.username,
            external_id=platform.external_id,
            is_active=active,
            is_default=platform.is_default and active,
            created_at=now,
            updated_at=now,
        )
    )


def _details(connection: Connection, user_id: int) -> list[PlatformDetail]:
    rows = connection.execute(PLATFORM_ROWS, {"users": [user_id]})
    return [PlatformDetail(id_, *rest) for id_, _user_id, *rest in rows]


def _normalize_default(
    connection: Connection, user_id: int, now: dt.datetime
) -> list[PlatformDetail]:
    """Leave exactly one default among the active platforms (none if none is active)."""
    rows = _details(connection, user_id)
    active = [r for r in rows if r.is_active]
    defaults = [r for r in active if r.is_default]
    stray = [r.id for r in rows if r.is_default and not r.is_active] + [r.id for r in defaults[1:]]
    wanted = default_platform(active)
    if not stray and (wanted is None or defaults):
        return rows
    if stray:
        connection.execute(
            update(_platforms)
            .where(_platforms.c.id.in_(stray))
            .values(is_default=False, updated_at=now)
        )
    if wanted is not None and not defaults:
        connection.execute(
            update(_platforms)
            .where(_platforms.c.id == wanted)
            .values(is_default=True, updated_at=now)
        )
    return _details(connection, user_id)


def _clear_default(connection: Connection, user_id: int, now: dt.datetime) -> None:
    connection.execute(
        update(_platforms)
        .where(_platforms.c.user_id == user_id, _platforms.c.is_default)
        .values(is_default=False, updated_at=now)
    )


def _find(rows: list[PlatformDetail], platform: PlatformRef) -> PlatformDetail:
    # Another user's platform and a missing one get the same answer.
    for row in rows:
        if (row.external_id if isinstance(platform, External) else row.id) == platform:
            return row
    raise PlatformRefused(ErrorCode.UNKNOWN_PLATFORM, "You have no such platform.")


def _check_unique(
    rows: list[PlatformDetail],
    name: str,
    account: tuple[str, str] | None,
    external_id: str | None = None,
) -> None:
    if any(r.name == name for r in rows):
        raise PlatformRefused(ErrorCode.NAME_TAKEN, f"You already have a platform named {name!r}.")
    if account is not None and any((r.instance_url, r.username) == account for r in rows):
        raise PlatformRefused(
            ErrorCode.ACCOUNT_TAKEN,
            f"@{account[1]} on {account[0]} is connected already.",
        )
    if external_id is not None and any(r.external_id == external_id for r in rows):
        raise PlatformRefused(
            ErrorCode.ACCOUNT_TAKEN, f"A platform with external id {external_id!r} exists already."
        )


def _check_not_last_active(rows: list[PlatformDetail], target: PlatformDetail) -> None:
    if not any(r.is_active and r.id != target.id for r in rows):
        raise PlatformRefused(
            ErrorCode.LAST_ACTIVE_PLATFORM,
            f"{target.name} is your last active platform; connect another one first.",
        )
