"""The units of work behind the hub: reading state and deciding switches, plus admin writes."""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Sequence

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from server.db import (
    Database,
    LoginSessionRow,
    PlatformRow,
    PlatformStateRow,
    SwitchLogRow,
    UserRow,
)
from server.errors import UsageError
from server.hub import SwitchOutcome
from server.passwords import NO_PASSWORD, hash_password
from server.protocol import (
    PlatformView,
    RejectReason,
    SessionEndReason,
    StateView,
    Switch,
)
from server.sessions import ended_reason

__all__ = [
    "SqlStore",
    "DEMO_USERS",
    "add_platform",
    "add_user",
    "effective_active",
    "seed_demo",
]

PLATFORM_KINDS = ("pixelfed", "mastodon")


class SqlStore:
    """Decide switches with a conditional update on the version, in one transaction."""

    def __init__(self, database: Database) -> None:
        self.database = database

    async def load_state(self, user_id: int) -> StateView:
        """Read a user's state."""

        async def work(session: AsyncSession) -> StateView:
            row = await session.get(PlatformStateRow, user_id)
            return await _state(session, user_id, row)

        return await self.database.read(work)

    async def switch(
        self, user_id: int, session_id: int, request: Switch, tab_id: str | None
    ) -> SwitchOutcome:
        """Decide one switch and commit the decision with the new state, or nothing."""
        now = self.database.clock()
        touch_s = self.database.settings.session_touch_s
        idle_s = self.database.settings.session_idle_s

        async def work(session: AsyncSession) -> SwitchOutcome:
            # Expiry and logout win over a switch racing them: a switch commits only
            # under a live session, checked inside the same transaction.
            login = await session.get(LoginSessionRow, session_id)
            ended = SessionEndReason.REVOKED if login is None else ended_reason(login, now)
            if ended is not None or login is None:
                return SwitchOutcome(accepted=False, state=_EMPTY, ended=ended)
            if (now - login.last_seen_at).total_seconds() >= touch_s:
                login.last_seen_at = now
                login.idle_expires_at = min(
                    now + dt.timedelta(seconds=idle_s), login.absolute_expires_at
                )

            row = await session.get(PlatformStateRow, user_id)
            logged = await session.get(SwitchLogRow, (user_id, request.id))
            if logged is not None:
                state = await _state(session, user_id, row)
                return SwitchOutcome(
                    accepted=logged.accepted,
                    state=state,
                    version=logged.version,
                    reason=RejectReason(logged.reason) if logged.reason else None,
                )

            platform = await session.get(PlatformRow, request.platform)
            state = await _state(session, user_id, row)
            reason: RejectReason | None = None
            # Another user's platform and a missing one get the same answer, so the reply
            # reveals nothing about platforms that are not this user's.
            if platform is None or platform.user_id != user_id:
                reason = RejectReason.UNKNOWN_PLATFORM
            elif not platform.is_active:
                reason = RejectReason.INACTIVE_PLATFORM
            elif request.base != state.version:
                reason = RejectReason.STALE
            if reason is not None:
                _log(session, user_id, request, tab_id, now, reason=reason, version=state.version)
                return SwitchOutcome(accepted=False, state=state, reason=reason)
            assert platform is not None and row is not None

            if state.active == platform.id:
                _log(session, user_id, request, tab_id, now, version=state.version)
                return SwitchOutcome(accepted=True, state=state, version=state.version)

            # The arbiter: only the first switch from this base can move the version. On
            # SQLite the write lock already serializes us; on PostgreSQL this WHERE does.
            version = request.base + 1
            result = await session.execute(
                update(PlatformStateRow)
                .where(
                    PlatformStateRow.user_id == user_id,
                    PlatformStateRow.version == request.base,
                )
                .values(version=version, active_platform_id=platform.id, updated_at=now)
                .execution_options(synchronize_session=False)
            )
            if getattr(result, "rowcount", 1) != 1:
                await session.refresh(row)
                state = await _state(session, user_id, row)
                reason = RejectReason.STALE
                _log(session, user_id, request, tab_id, now, reason=reason, version=state.version)
                return SwitchOutcome(accepted=False, state=state, reason=reason)
            platform.last_used_at = now
            _log(session, user_id, request, tab_id, now, version=version)
            new_state = StateView(version=version, active=platform.id, platforms=state.platforms)
            return SwitchOutcome(accepted=True, state=new_state, version=version, changed=True)

        return await self.database.write(work)


_EMPTY = StateView(version=0, active=None, platforms=())


def _log(
    session: AsyncSession,
    user_id: int,
    request: Switch,
    tab_id: str | None,
    now: dt.datetime,
    *,
    version: int,
    reason: RejectReason | None = None,
) -> None:
    session.add(
        SwitchLogRow(
            user_id=user_id,
            request_id=request.id,
            accepted=reason is None,
            reason=reason.value if reason else None,
            version=version,
            platform_id=request.platform,
            tab_id=tab_id,
            decided_at=now,
        )
    )


async def _state(session: AsyncSession, user_id: int, row: PlatformStateRow | None) -> StateView:
    platforms = (
        await session.scalars(
            select(PlatformRow)
            .where(PlatformRow.user_id == user_id, PlatformRow.is_active)
            .order_by(PlatformRow.id)
        )
    ).all()
    version = row.version if row else 0
    stored = row.active_platform_id if row else None
    return StateView(
        version=version,
        active=effective_active(version, stored, platforms),
        platforms=tuple(
            PlatformView(
                id=p.id,
                name=p.name,
                kind=p.kind,
                instance_url=p.instance_url,
                username=p.username,
                is_default=p.is_default,
            )
            for p in platforms
        ),
    )


def effective_active(
    version: int, stored: int | None, platforms: Sequence[PlatformRow]
) -> int | None:
    """Return the active platform: the stored choice once switched, else the default rule.

    The default rule: the default platform, else the first active one, else none.
    """
    active = [p for p in platforms if p.is_active]
    if version > 0 and any(p.id == stored for p in active):
        return stored
    default = next((p for p in active if p.is_default), None)
    if default is not None:
        return default.id
    return active[0].id if active else None


# Administration: the command line and the demo seed use these.


async def add_user(database: Database, name: str, password: str | None) -> int:
    """Create a user with version 0 and no switch yet; return the user's id.

    A user added without a password cannot log in with one; sessions are opened for them
    with ``sessions.open_session``.
    """
    if not name or len(name) > 64:
        raise UsageError("a user name is 1 to 64 characters")
    if password is not None and len(password) < 8:
        raise UsageError("a password has at least 8 characters")
    now = database.clock()
    password_hash = NO_PASSWORD if password is None else hash_password(password)

    async def work(session: AsyncSession) -> int:
        if await session.scalar(select(UserRow.id).where(UserRow.name == name)) is not None:
            raise UsageError(f"user {name!r} exists already")
        user = UserRow(name=name, password_hash=password_hash, created_at=now)
        session.add(user)
        await session.flush()
        session.add(PlatformStateRow(user_id=user.id, version=0, updated_at=now))
        return user.id

    return await database.write(work)


async def add_platform(
    database: Database,
    user_name: str,
    name: str,
    *,
    kind: str,
    instance_url: str,
    username: str,
    default: bool = False,
) -> int:
    """Connect a platform account to a user; return the platform's id."""
    if kind not in PLATFORM_KINDS:
        raise UsageError(f"unknown kind {kind!r}; expected one of {', '.join(PLATFORM_KINDS)}")
    if not instance_url.startswith(("https://", "http://")):
        raise UsageError("the instance URL must start with https:// or http://")
    now = database.clock()

    async def work(session: AsyncSession) -> int:
        user_id = await session.scalar(select(UserRow.id).where(UserRow.name == user_name))
        if user_id is None:
            raise UsageError(f"no user named {user_name!r}")
        clash = await session.scalar(
            select(PlatformRow.id).where(
                PlatformRow.user_id == user_id,
                (PlatformRow.name == name)
                | ((PlatformRow.instance_url == instance_url) & (PlatformRow.username == username)),
            )
        )
        if clash is not None:
            raise UsageError(f"{user_name} already has a platform with that name or account")
        has_default = await session.scalar(
            select(PlatformRow.id).where(PlatformRow.user_id == user_id, PlatformRow.is_default)
        )
        if default and has_default is not None:
            await session.execute(
                update(PlatformRow)
                .where(PlatformRow.user_id == user_id)
                .values(is_default=False, updated_at=now)
            )
        platform = PlatformRow(
            user_id=user_id,
            name=name,
            kind=kind,
            instance_url=instance_url,
            username=username,
            is_active=True,
            is_default=default or has_default is None,
            created_at=now,
            updated_at=now,
        )
        session.add(platform)
        await session.flush()
        return platform.id

    return await database.write(work)


@dataclasses.dataclass(frozen=True)
class DemoPlatform:
    """A platform account of a demo user."""

    name: str
    kind: str
    instance_url: str
    username: str
    default: bool = False


@dataclasses.dataclass(frozen=True)
class DemoUser:
    """A demo user with a known password."""

    name: str
    password: str
    platforms: tuple[DemoPlatform, ...]


DEMO_USERS = (
    DemoUser(
        "alice",
        "alice-demo-pw",
        (
            DemoPlatform("Pixelfed", "pixelfed", "https://pixelfed.social", "alice", True),
            DemoPlatform("Mastodon", "mastodon", "https://mastodon.social", "alice"),
            DemoPlatform("Fosstodon", "mastodon", "https://fosstodon.org", "alice_dev"),
        ),
    ),
    DemoUser(
        "bob",
        "bob-demo-pw",
        (
            DemoPlatform("Mastodon", "mastodon", "https://mastodon.social", "bob", True),
            DemoPlatform("Pixelfed", "pixelfed", "https://pixelfed.de", "bob_photos"),
        ),
    ),
    DemoUser(
        "carol",
        "carol-demo-pw",
        (
            DemoPlatform("Photos", "pixelfed", "https://pixelfed.social", "carol"),
            DemoPlatform("Work", "mastodon", "https://hachyderm.io", "carol", True),
            DemoPlatform("Art", "pixelfed", "https://pixey.org", "carol_art"),
        ),
    ),
)


async def seed_demo(database: Database) -> list[DemoUser]:
    """Create the demo users and platforms that do not exist yet; return the new users."""

    async def existing(session: AsyncSession) -> set[str]:
        return set((await session.scalars(select(UserRow.name))).all())

    present = await database.read(existing)
    created = []
    for user in DEMO_USERS:
        if user.name in present:
            continue
        await add_user(database, user.name, user.password)
        for p in user.platforms:
            await add_platform(
                database,
                user.name,
                p.name,
                kind=p.kind,
                instance_url=p.instance_url,
                username=p.username,
                default=p.default,
            )
        created.append(user)
    return created
