"""Users: create them with their first platforms, set passwords, look them up; demo data.

A new user's platforms are written in the transaction that creates the user, before any tab
of theirs can exist, so they need no new version; every later platform change goes through
server/storage/platforms.py, which moves the version and reaches every process's tabs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from collections.abc import Sequence

from sqlalchemy import Connection, insert, select, update
from sqlalchemy.exc import IntegrityError

from platform_hub_client.bodies import USER_NAME
from server import db
from server.api import PlatformCreate, PlatformKind
from server.db import Database
from server.errors import UsageError
from server.protocol import SessionEndReason, is_line
from server.storage import platforms
from server.storage.passwords import NO_PASSWORD, hash_password
from server.storage.sessions import revoke_all_within

__all__ = [
    "DEMO_USERS",
    "DemoPlatform",
    "DemoUser",
    "add_user",
    "check_user_name",
    "seed_demo",
    "upsert_user",
    "user_id_of",
]


def check_user_name(name: str) -> None:
    """Raise UsageError unless ``name`` is 1 to 64 characters with no control character and
    no "/", and is not "." or ".." (the host API names users in its paths, one segment each).
    Names are compared exactly: case and Unicode form count."""
    if not name or len(name) > 64 or re.fullmatch(USER_NAME, name) is None:
        raise UsageError(
            'a user name is 1 to 64 characters, with no control characters and no "/",'
            ' and is not "." or ".."'
        )


async def add_user(
    database: Database,
    name: str,
    password: str | None,
    platforms_: Sequence[PlatformCreate] = (),
) -> int:
    """Create a user at version 0 with these platforms (held to platform management's rules:
    unique names and accounts, the cap, one default); return the user's id.

    A user added without a password cannot log in with one; sessions are opened for them
    with ``sessions.open_session``.
    """
    check_user_name(name)
    if password is not None and len(password) < 8:
        raise UsageError("a password has at least 8 characters")
    now = database.clock()
    # scrypt takes tens of milliseconds: off the event loop, as log_in's check is.
    password_hash = (
        NO_PASSWORD
        if password is None
        else await asyncio.to_thread(hash_password, password, cost=database.settings.password_cost)
    )
    most = database.settings.max_platforms_per_user

    def work(connection: Connection) -> int:
        taken = connection.execute(select(db.users.c.id).where(db.users.c.name == name))
        if taken.first() is not None:
            raise UsageError(f"user {name!r} exists already")
        try:
            created = connection.execute(
                insert(db.users).values(name=name, password_hash=password_hash, created_at=now)
            )
        except IntegrityError:
            # Created by a concurrent transaction since the check above (PostgreSQL lets
            # both check; the unique name decides). The transaction is rolled back.
            raise UsageError(f"user {name!r} exists already") from None
        (user_id,) = created.inserted_primary_key or (None,)
        assert isinstance(user_id, int)
        connection.execute(
            insert(db.platform_states).values(user_id=user_id, version=0, updated_at=now)
        )
        platforms.seed(connection, user_id, platforms_, now, most=most)
        return user_id

    return await database.write(work)


async def upsert_user(
    database: Database, name: str, password: str | None, *, end_sessions: bool = True
) -> tuple[int, bool, list[int]]:
    """Create a user, or set an existing one's password; return the id, whether it is new,
    and the sessions a new password ended.

    An existing user keeps its password when ``password`` is None. A new password ends the
    user's live sessions in the same transaction (a reset locks out whoever knew the old
    one), unless ``end_sessions`` is false.
    """
    check_user_name(name)
    existing = await user_id_of(database, name)
    if existing is None:
        try:
            return await add_user(database, name, password), True, []
        except UsageError:
            existing = await user_id_of(database, name)  # created meanwhile by another call?
            if existing is None:
                raise
    if password is None:
        return existing, False, []
    password_hash = await asyncio.to_thread(
        hash_password, password, cost=database.settings.password_cost
    )

    def work(connection: Connection) -> list[int]:
        connection.execute(
            update(db.users).where(db.users.c.id == existing).values(password_hash=password_hash)
        )
        if not end_sessions:
            return []
        return revoke_all_within(database, connection, existing, SessionEndReason.REVOKED)

    return existing, False, await database.write(work)


async def user_id_of(database: Database, name: str) -> int | None:
    """Return the id of the user with this name, if there is one (never one for a name no
    user can have, which PostgreSQL could not even compare: a NUL)."""
    if not is_line(name):
        return None

    def work(connection: Connection) -> int | None:
        found: int | None = connection.scalar(select(db.users.c.id).where(db.users.c.name == name))
        return found

    return await database.read(work)


@dataclasses.dataclass(frozen=True)
class DemoPlatform:
    """A platform account of a demo user."""

    name: str
    kind: PlatformKind
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
    """Create the demo users, with their platforms, that do not exist yet; return them."""
    created = []
    for user in DEMO_USERS:
        if await user_id_of(database, user.name) is not None:
            continue
        listed = [
            PlatformCreate(
                name=p.name,
                kind=p.kind,
                instance_url=p.instance_url,
                username=p.username,
                is_default=p.default,
            )
            for p in user.platforms
        ]
        await add_user(database, user.name, user.password, listed)
        created.append(user)
    return created
