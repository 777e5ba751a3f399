"""Users, platforms and sessions written before a hub serves them; what the database holds after.

After a run: each user's stored state and the accepted rows of the switch log.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlalchemy import Connection, select

from server import db
from server.api import PlatformCreate, PlatformKind
from server.db import Database
from server.settings import Settings
from server.storage import sessions
from server.storage.switches import SqlStore
from server.storage.users import add_user, seed_demo

__all__ = ["PLATFORMS", "Population", "database_facts", "populate", "seed_demo_file"]

PLATFORMS: tuple[tuple[str, PlatformKind, str], ...] = (
    ("Pixelfed", "pixelfed", "https://pixelfed.example"),
    ("Mastodon", "mastodon", "https://mastodon.example"),
    ("Fosstodon", "mastodon", "https://fosstodon.example"),
)


@dataclass
class Population:
    """Users with three platforms each and one session token per user."""

    tokens: dict[int, str]
    platforms: dict[int, tuple[int, ...]]
    sessions: dict[int, int] = field(default_factory=dict)
    names: dict[int, str] = field(default_factory=dict)


async def populate(settings: Settings, users: int) -> Population:
    """Create ``users`` users (no passwords), their platforms and a session each."""
    database = Database(settings)
    await database.create_schema()
    tokens: dict[int, str] = {}
    platforms: dict[int, tuple[int, ...]] = {}
    login_ids: dict[int, int] = {}
    names: dict[int, str] = {}
    try:
        for n in range(users):
            name = f"user{n:05d}"
            listed = [
                PlatformCreate(
                    name=platform, kind=kind, instance_url=url, username=name, is_default=i == 0
                )
                for i, (platform, kind, url) in enumerate(PLATFORMS)
            ]
            user_id = await add_user(database, name, None, listed)
            names[user_id] = name
            platforms[user_id] = await _platform_ids(database, user_id)
            tokens[user_id], login = await sessions.open_session(database, user_id)
            login_ids[user_id] = login.id
    finally:
        await database.dispose()
    return Population(tokens, platforms, login_ids, names)


async def _platform_ids(database: Database, user_id: int) -> tuple[int, ...]:
    def read(connection: Connection) -> tuple[int, ...]:
        query = select(db.platforms.c.id).where(db.platforms.c.user_id == user_id)
        return tuple(connection.execute(query.order_by(db.platforms.c.id)).scalars())

    return await database.read(read)


async def seed_demo_file(settings: Settings) -> None:
    """Create the schema and the demo users (alice, bob, carol) in the settings' database."""
    database = Database(settings)
    try:
        await database.create_schema()
        await seed_demo(database)
    finally:
        await database.dispose()


async def database_facts(
    settings: Settings,
) -> tuple[dict[int, tuple[int, int | None]], dict[int, dict[str, int]]]:
    """Return each user's stored (version, active) and the accepted rows of the switch log."""
    database = Database(settings)
    try:

        def log(connection: Connection) -> dict[int, dict[str, int]]:
            logs: dict[int, dict[str, int]] = {}
            query = select(db.switch_log).where(db.switch_log.c.accepted.is_(True))
            for row in connection.execute(query):
                logs.setdefault(row.user_id, {})[row.request_id] = row.version
            return logs

        def users(connection: Connection) -> list[int]:
            return list(connection.scalars(select(db.platform_states.c.user_id)))

        store = SqlStore(database)
        states = {}
        for user in await database.read(users):
            state = await store.load_state(user)
            states[user] = (state.version, state.active)
        return states, await database.read(log)
    finally:
        await database.dispose()
