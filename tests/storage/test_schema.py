"""server/storage/schema.py: the migrations build server/db.py's tables; old schemas are refused.

On a fresh SQLite file and a fresh PostgreSQL database each; the command line on SQLite.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import Connection, create_engine, func, inspect, select, text

from server import db
from server.db import Database
from server.storage import schema, sessions
from server.storage.devices import live_devices
from server.storage.schema import SchemaOutdated
from server.storage.users import add_user, seed_demo
from tests.conftest import MakeSettings
from tests.support.processes import HubProcess


def differences(connection: Connection) -> list[Any]:
    context = MigrationContext.configure(connection, opts={"compare_type": True})
    return list(compare_metadata(context, db.metadata))


def test_the_head_known_without_alembic_is_alembics() -> None:
    """schema.HEAD, which a start compares without loading Alembic, is the newest script."""
    assert schema.head() == schema.HEAD


_START = """
import asyncio, sys
from server.db import Database
from server.settings import Settings

async def start():
    database = Database(Settings.from_environ())
    try:
        await database.prepare_schema(upgrade=False)
    finally:
        await database.dispose()

asyncio.run(start())
print("alembic loaded" if "alembic" in sys.modules else "alembic not loaded")
"""


async def test_a_start_on_an_up_to_date_schema_does_not_load_alembic(
    make_on_each_engine: MakeSettings,
) -> None:
    """`hub serve`'s look at the schema: on an up-to-date one Alembic (0.5 s of imports) is
    not loaded; on an empty one it is, and builds the schema."""
    settings = make_on_each_engine()
    env = {**os.environ, **settings.to_environ()}

    def start() -> str:
        command = [sys.executable, "-c", _START]
        return subprocess.run(command, env=env, capture_output=True, text=True, check=True).stdout

    assert await asyncio.to_thread(start) == "alembic loaded\n"  # empty: built
    assert await asyncio.to_thread(start) == "alembic not loaded\n"
    database = Database(settings)
    try:
        assert (await schema.inspect_schema(database.engine)).up_to_date
    finally:
        await database.dispose()


async def test_the_migrations_build_exactly_what_the_tables_describe(
    make_on_each_engine: MakeSettings,
) -> None:
    """An empty database upgraded to the head has every table, column, type, key and index
    of server/db.py's tables, and nothing else."""
    database = Database(make_on_each_engine())
    try:
        before = await database.create_schema()
        assert before.empty and before.current is None
        state = await schema.inspect_schema(database.engine)
        assert state.up_to_date and state.current == schema.head()
        async with database.engine.connect() as connection:
            assert await connection.run_sync(differences) == []
        await database.prepare_schema(upgrade=False)  # up to date: nothing to do
    finally:
        await database.dispose()


def make_baseline(connection: Connection) -> None:
    """The tables hubs made before migrations existed: revision 0001's, with no record of a
    revision (the tables of server/db.py today have moved on since)."""
    command.upgrade(schema.config(connection), schema.BASELINE)
    connection.execute(text("DROP TABLE alembic_version"))


async def test_a_database_from_before_migrations_is_refused_then_adopted_with_its_data(
    make_on_each_engine: MakeSettings,
) -> None:
    """Tables as hubs made them before migrations (revision 0001's): serving refuses them
    and names the command; the upgrade records the baseline, migrates to the newest revision
    and keeps every row."""
    database = Database(make_on_each_engine())
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(make_baseline)
            now = dt.datetime.now(dt.UTC)
            await connection.execute(
                db.users.insert().values(name="old", password_hash="x", created_at=now)
            )
            user_id = (await connection.execute(select(db.users.c.id))).scalar_one()
            for n in (1, 2):  # two rows with no external id: nulls never collide
                await connection.execute(
                    text(
                        "INSERT INTO platforms (user_id, name, kind, instance_url, username,"
                        " is_active, is_default, created_at, updated_at)"
                        " VALUES (:user, :name, 'mastodon', 'https://m.example', :name,"
                        " true, false, :now, :now)"
                    ),
                    # Naive UTC, as the tables' UTC type stores times.
                    {"user": user_id, "name": f"p{n}", "now": now.replace(tzinfo=None)},
                )
        with pytest.raises(SchemaOutdated, match="hub db upgrade"):
            await database.prepare_schema(upgrade=False)
        await database.prepare_schema(upgrade=True)
        state = await schema.inspect_schema(database.engine)
        assert state.up_to_date
        async with database.engine.connect() as connection:
            names = (await connection.execute(select(db.users.c.name))).scalars().all()
            assert names == ["old"]
            platforms = select(db.platforms.c.name, db.platforms.c.external_id)
            rows = (await connection.execute(platforms.order_by(db.platforms.c.id))).all()
            assert [tuple(r) for r in rows] == [("p1", None), ("p2", None)]
            assert await connection.run_sync(differences) == []
    finally:
        await database.dispose()


async def test_a_schema_newer_than_the_hub_is_refused_even_when_told_to_upgrade(
    make_on_each_engine: MakeSettings,
) -> None:
    """A revision this hub does not know (a newer hub upgraded the database) is left alone."""
    database = Database(make_on_each_engine())
    try:
        await database.create_schema()
        async with database.engine.begin() as connection:
            await connection.execute(text("UPDATE alembic_version SET version_num = 'f00d'"))
        for upgrade in (False, True):
            with pytest.raises(SchemaOutdated, match="newer hub"):
                await database.prepare_schema(upgrade=upgrade)
        with pytest.raises(SchemaOutdated, match="newer hub"):
            await database.create_schema()
        state = await schema.inspect_schema(database.engine)
        assert state.current == "f00d" and not state.known
    finally:
        await database.dispose()


def run_hub(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_DATABASE_URL": url}
    return subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_serve_refuses_an_outdated_schema_until_hub_db_upgrade(tmp_path: Path) -> None:
    """hub serve exits 2 with the message alone (no traceback, nothing served); hub db
    status says the same; hub db upgrade fixes it and says from where to where."""
    path = tmp_path / "legacy.db"
    url = f"sqlite+aiosqlite:///{path}"
    engine = create_engine(f"sqlite:///{path}")
    with engine.begin() as connection:
        make_baseline(connection)
    engine.dispose()

    refused = run_hub(url, "serve", "--port", "0")
    assert refused.returncode == 2, refused.stderr
    assert "predates the hub's migrations" in refused.stderr
    assert "Traceback" not in refused.stderr and "Uvicorn running" not in refused.stderr
    status = run_hub(url, "db", "status")
    assert status.returncode == 1 and "hub db upgrade" in status.stdout
    upgraded = run_hub(url, "db", "upgrade")
    assert upgraded.returncode == 0, upgraded.stderr
    assert f"from an unversioned schema to revision {schema.head()}" in upgraded.stdout
    again = run_hub(url, "db", "upgrade")
    assert again.stdout.strip() == f"schema already at revision {schema.head()}"
    assert run_hub(url, "db", "status").returncode == 0


async def test_serve_with_upgrade_adopts_an_outdated_schema_and_serves(
    make_on_each_engine: MakeSettings, tmp_path: Path
) -> None:
    """`hub serve --upgrade` on tables from before migrations: it upgrades them and serves
    (it once checked the schema without the flag first, and refused to start)."""
    settings = make_on_each_engine()
    database = Database(settings)
    try:
        async with database.engine.begin() as connection:
            await connection.run_sync(make_baseline)
        hub = await HubProcess(settings, tmp_path / "hub.log", args=["--upgrade"]).start()
        try:
            assert (await hub.health())["status"] == "ok"
        finally:
            hub.stop()
        assert (await schema.inspect_schema(database.engine)).up_to_date
    finally:
        await database.dispose()


async def test_downgrading_external_ids_keeps_every_users_active_platform(
    make_on_each_engine: MakeSettings,
) -> None:
    """Migration 0003 down and up again: the column goes and comes back, and no row of
    platform_states loses its active platform (a table rebuild on SQLite used to clear them
    through ON DELETE SET NULL)."""
    database = Database(make_on_each_engine())
    try:
        await database.create_schema()
        await seed_demo(database)
        async with database.engine.begin() as connection:
            first = db.platforms.c.id
            await connection.execute(
                db.platform_states.update().values(
                    version=5,
                    active_platform_id=select(func.min(first))
                    .where(db.platforms.c.user_id == db.platform_states.c.user_id)
                    .scalar_subquery(),
                )
            )

        def actives(connection: Connection) -> list[tuple[int, int | None]]:
            states = db.platform_states
            rows = connection.execute(
                select(states.c.user_id, states.c.active_platform_id).order_by(states.c.user_id)
            )
            return [(r.user_id, r.active_platform_id) for r in rows]

        async with database.engine.connect() as connection:
            before = await connection.run_sync(actives)
        assert before and all(active is not None for _, active in before)
        async with database.engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(schema.config(c), "0002"))
        async with database.engine.connect() as connection:
            columns = await connection.run_sync(
                lambda c: {col["name"] for col in inspect(c).get_columns("platforms")}
            )
            assert "external_id" not in columns
            # Every demo platform is still there.
            assert (await connection.execute(text("SELECT count(*) FROM platforms"))).scalar() == 8
            after = await connection.run_sync(
                lambda c: [
                    tuple(r)
                    for r in c.execute(
                        text("SELECT user_id, active_platform_id FROM platform_states ORDER BY 1")
                    )
                ]
            )
        assert after == before
        await database.prepare_schema(upgrade=True)
        async with database.engine.connect() as connection:
            assert await connection.run_sync(actives) == before
            assert await connection.run_sync(differences) == []
    finally:
        await database.dispose()


async def test_sessions_from_before_presence_are_listed_and_described(
    make_on_each_engine: MakeSettings,
) -> None:
    """Migration 0008 on a database with sessions opened before it (no device words kept):
    presence lists them, described from their user agents, each by its handle (not its id),
    and down and up again leaves no difference."""
    database = Database(make_on_each_engine())
    try:
        await database.create_schema()
        user = await add_user(database, "alice", None)
        agent = "Mozilla/5.0 (X11; Linux x86_64; rv:121.0) Gecko/20100101 Firefox/121.0"
        for _ in range(3):
            await sessions.open_session(database, user, user_agent=agent)
        async with database.engine.begin() as connection:
            await connection.run_sync(lambda c: command.downgrade(schema.config(c), "0007"))
        await database.prepare_schema(upgrade=True)
        hashes = await database.read(
            lambda c: list(c.scalars(select(db.login_sessions.c.token_hash)))
        )
        devices = [device for _, device in (await live_devices(database, [user]))[user]]
        assert sorted(device.session for device in devices) == sorted(h[:16] for h in hashes)
        assert {device.description for device in devices} == {"Firefox on Linux"}
        async with database.engine.connect() as connection:
            assert await connection.run_sync(differences) == []
    finally:
        await database.dispose()
