"""Platform management: add, rename, deactivate, reactivate, make default, delete.

Each change is one write transaction that also moves the user's version (a change that changes
nothing moves nothing and tells no tab), so it reaches every
tab as a state, in version order with the switches: it locks the user's state row first, as
a switch batch does (SQLite has one writer anyway), so a switch racing a change is decided
either wholly before it or wholly after it. The rules, checked inside that transaction:

- names are unique per user, and so are accounts (instance URL and username);
- the last active platform can be neither deactivated nor deleted;
- among the active platforms exactly one is the default: deactivating or deleting the
  default makes the first remaining active one the default;
- when the active choice is deactivated or deleted, it moves to the default platform.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable, Sequence
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

__all__ = ["add", "change", "check_room", "listing", "mirror", "remove", "seed"]

_platforms = db.platforms
_states = db.platform_states


async def listing(database: Database, user_id: int) -> PlatformList:
    """Return every platform of a user, active or not, and the state tabs see."""

    def work(connection: Connection) -> PlatformList:
        _, _, state = read_state(connection, user_id)
        return PlatformList(platforms=tuple(_details(connection, user_id)), state=state)

    return await database.read(work)


async def add(database: Database, user_id: int, new: PlatformCreate) -> PlatformList:
    """Connect a platform account; the first one, or one asked to be, becomes the default."""

    most = database.settings.max_platforms_per_user

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> None:
        check_room(len(rows) + 1, most)
        _check_unique(rows, new.name, (new.instance_url, new.username))
        if new.is_default:
            _clear_default(connection, user_id, now)
        _insert(connection, user_id, new, now, active=True)

    return await _apply(database, user_id, mutate)


async def change(
    database: Database, user_id: int, platform_id: int, edit: PlatformUpdate
) -> PlatformList:
    """Rename a platform, deactivate or reactivate it, or make it the default."""

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> None:
        target = _find(rows, platform_id)
        values: dict[str, Any] = {}
        if edit.name is not None and edit.name != target.name:
            _check_unique([r for r in rows if r.id != platform_id], edit.name, None)
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
                .where(_platforms.c.id == platform_id)
                .values(updated_at=now, **values)
            )

    return await _apply(database, user_id, mutate)


async def remove(database: Database, user_id: int, platform_id: int) -> PlatformList:
    """Delete a platform connection (the hub keeps no credentials to forget)."""

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> None:
        target = _find(rows, platform_id)
        if target.is_active:
            _check_not_last_active(rows, target)
        connection.execute(delete(_platforms).where(_platforms.c.id == platform_id))

    return await _apply(database, user_id, mutate)


async def mirror(database: Database, user_id: int, wanted: PlatformsMirror) -> PlatformList:
    """Make a user's platforms what the host app says, matched by account; one new version,
    or none when the list is what is stored.

    The host app is the source of truth here, so a list without an active platform is
    accepted: the user then has none, and tabs are told to set one up (``active`` null).
    """
    check_room(len(wanted.platforms), database.settings.max_platforms_per_user)
    accounts = [(p.instance_url, p.username) for p in wanted.platforms]
    names = [p.name for p in wanted.platforms]
    if len(set(accounts)) < len(accounts) or len(set(names)) < len(names):
        raise PlatformRefused(
            ErrorCode.NAME_TAKEN, "Each platform's name, and each account, must appear once."
        )
    if sum(p.is_default and p.is_active for p in wanted.platforms) > 1:
        raise PlatformRefused(ErrorCode.DEFAULT_TAKEN, "At most one platform can be the default.")

    def mutate(connection: Connection, rows: list[PlatformDetail], now: dt.datetime) -> None:
        by_account = {(r.instance_url, r.username): r for r in rows}
        listed = set(accounts)
        gone = [r.id for r in rows if (r.instance_url, r.username) not in listed]
        if gone:
            connection.execute(delete(_platforms).where(_platforms.c.id.in_(gone)))
        pairs = [(p, by_account.get(a)) for p, a in zip(wanted.platforms, accounts, strict=True)]
        default = _mirrored_default(pairs)
        # Only the rows that differ are written (a mirror of what is stored writes nothing).
        kept = [
            (p, row)
            for p, row in pairs
            if row is not None and _mirrored(p, row.id == default) != _mirrored(row, row.is_default)
        ]
        # Names are unique per user: park the renamed ones first, so a swap cannot collide.
        # A parked name holds a control character, which no real name may (protocol.LINE),
        # and not NUL, which PostgreSQL cannot store.
        for platform, row in kept:
            if platform.name == row.name:
                continue
            connection.execute(
                update(_platforms).where(_platforms.c.id == row.id).values(name=f"\x1f{row.id}")
            )
        for platform, row in kept:
            connection.execute(
                update(_platforms)
                .where(_platforms.c.id == row.id)
                .values(
                    name=platform.name,
                    kind=platform.kind,
                    is_active=platform.is_active,
                    is_default=row.id == default,
                    updated_at=now,
                )
            )
        for platform, account in zip(wanted.platforms, accounts, strict=True):
            if account not in by_account:
                _insert(connection, user_id, platform, now, active=platform.is_active)

    return await _apply(database, user_id, mutate)


def _mirrored(
    platform: PlatformMirrored | PlatformDetail, default: bool
) -> tuple[str, str, bool, bool]:
    """What a mirror may change of a kept account: name, kind, active, default."""
    return (platform.name, platform.kind, platform.is_active, default)


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
        _check_unique(rows, platform.name, (platform.instance_url, platform.username))
        rows.append(
            PlatformDetail(0, platform.name, platform.kind, platform.instance_url,
                           platform.username, True, platform.is_default)
        )  # fmt: skip
        _insert(connection, user_id, platform, now, active=True)
    _normalize_default(connection, user_id, now)


def check_room(count: int, most: int) -> None:
    """Refuse a change that would leave a user more than ``most`` platforms."""
    if count > most:
        raise PlatformRefused(
            ErrorCode.TOO_MANY_PLATFORMS, f"A user may connect at most {most} platforms."
        )


_Mutation = Callable[[Connection, list[PlatformDetail], dt.datetime], None]


async def _apply(database: Database, user_id: int, mutate: _Mutation) -> PlatformList:
    now = database.clock()
    origin = database.origin

    def work(connection: Connection) -> PlatformList:
        # The state row first, locked (FOR UPDATE on PostgreSQL), as a switch batch takes it:
        # this change and any switch of the user are decided one after the other.
        version, _, before = read_state(connection, user_id, lock=True)
        found = _details(connection, user_id)
        mutate(connection, found, now)
        rows = _normalize_default(connection, user_id, now)
        # The next version is past 0, so the choice tabs saw stays while it is active.
        active = active_platform(version + 1, before.active, [r for r in rows if r.is_active])
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


def _find(rows: list[PlatformDetail], platform_id: int) -> PlatformDetail:
    # Another user's platform and a missing one get the same answer.
    for row in rows:
        if row.id == platform_id:
            return row
    raise PlatformRefused(ErrorCode.UNKNOWN_PLATFORM, "You have no such platform.")


def _check_unique(rows: list[PlatformDetail], name: str, account: tuple[str, str] | None) -> None:
    if any(r.name == name for r in rows):
        raise PlatformRefused(ErrorCode.NAME_TAKEN, f"You already have a platform named {name!r}.")
    if account is not None and any((r.instance_url, r.username) == account for r in rows):
        raise PlatformRefused(
            ErrorCode.ACCOUNT_TAKEN,
            f"@{account[1]} on {account[0]} is connected already.",
        )


def _check_not_last_active(rows: list[PlatformDetail], target: PlatformDetail) -> None:
    if not any(r.is_active and r.id != target.id for r in rows):
        raise PlatformRefused(
            ErrorCode.LAST_ACTIVE_PLATFORM,
            f"{target.name} is your last active platform; connect another one first.",
        )
