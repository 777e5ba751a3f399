"""The database schema's migrations: Alembic, run from the hub's own code.

``hub db upgrade`` brings a database to the schema this hub needs, ``hub serve`` refuses an
outdated one (or upgrades it when told to), and a fresh, empty database is created at once, so
`make run` needs no set-up. The migrations live in ``server/storage/migrations/versions``; the test
``tests/storage/test_schema.py`` checks that they build exactly what ``server/db.py``'s models
describe, on SQLite and on PostgreSQL.

A database made before migrations existed (tables created straight from the models) holds the
schema of the first revision: an upgrade adopts it by recording that revision first.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import Connection, inspect, text
from sqlalchemy.ext.asyncio import AsyncEngine

from server.errors import HubError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory

__all__ = [
    "BASELINE",
    "SchemaOutdated",
    "SchemaState",
    "config",
    "head",
    "inspect_schema",
    "upgrade",
]

BASELINE = "0001"  # the schema create_all made before migrations existed
# The newest revision, known without Alembic: a start on an up-to-date schema (every start but
# the first after an upgrade) reads alembic_version and compares, without importing Alembic
# (with Mako and Pygments, 0.5 s of a 1.5 s start; a reconnect storm waits for it).
# tests/storage/test_schema.py holds it to Alembic's head.
HEAD = "0008"
_MIGRATIONS = Path(__file__).resolve().parent / "migrations"
_LOCK_KEY = 0x68756230  # "hub0": the advisory lock of schema upgrades on PostgreSQL


class SchemaOutdated(HubError):
    """The database's schema is not the one this hub needs; nothing was changed."""


@dataclasses.dataclass(frozen=True, slots=True)
class SchemaState:
    """Where a database's schema stands against this hub's migrations."""

    current: str | None  # the recorded revision; None if none is recorded
    head: str
    empty: bool  # no table of the hub's at all
    known: bool  # the recorded revision is one of this hub's

    @property
    def up_to_date(self) -> bool:
        return self.current == self.head

    def problem(self) -> str:
        """Say what is wrong and what to run, for a schema that is not up to date."""
        if not self.known:
            return (
                f"The database's schema is at revision {self.current}, which this hub does not "
                f"know (its newest is {self.head}): it was upgraded by a newer hub. Run that "
                "hub, or restore a backup made for this one."
            )
        at = (
            f"is at revision {self.current}"
            if self.current
            else "has no recorded revision (it predates the hub's migrations)"
        )
        return (
            f"The database's schema {at}; this hub needs revision {self.head}. Run "
            "`hub db upgrade` (back the database up first), or start with `hub serve "
            "--upgrade` to upgrade it on start."
        )


def head() -> str:
    """Return the newest revision this hub knows, as Alembic reads its scripts."""
    revision = _scripts().get_current_head()
    assert revision is not None, "no migrations found"
    return revision


async def inspect_schema(engine: AsyncEngine) -> SchemaState:
    """Read where the database's schema stands."""
    async with engine.connect() as connection:
        return await connection.run_sync(_state)


async def upgrade(engine: AsyncEngine) -> SchemaState:
    """Bring the database to the newest revision, in one transaction; return where it was."""
    async with engine.begin() as connection:
        return await connection.run_sync(_upgrade)


def config(connection: Connection | None = None) -> Config:
    """Alembic's configuration for the hub's migrations, on ``connection`` if given."""
    from alembic.config import Config

    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    config.attributes["connection"] = connection
    return config


def _scripts() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(config())


def _state(connection: Connection) -> SchemaState:
    if inspect(connection).has_table("alembic_version"):
        recorded = connection.execute(text("SELECT version_num FROM alembic_version")).all()
        if [row[0] for row in recorded] == [HEAD]:  # up to date: Alembic need not load
            return SchemaState(current=HEAD, head=HEAD, empty=False, known=True)
    from alembic.runtime.migration import MigrationContext

    current = MigrationContext.configure(connection).get_current_revision()
    tables = set(inspect(connection).get_table_names()) - {"alembic_version"}
    scripts = _scripts()
    known = current is None or current in {s.revision for s in scripts.walk_revisions()}
    newest = scripts.get_current_head()
    assert newest is not None, "no migrations found"
    return SchemaState(current=current, head=newest, empty=not tables, known=known)


def _upgrade(connection: Connection) -> SchemaState:
    if connection.dialect.name == "postgresql":
        # Processes starting together on one database: one upgrades, the others wait for its
        # commit and then find nothing to do.
        connection.exec_driver_sql(f"SELECT pg_advisory_xact_lock({_LOCK_KEY})")
    before = _state(connection)
    if not before.known:
        raise SchemaOutdated(before.problem())
    from alembic import command

    alembic = config(connection)
    if before.current is None and not before.empty:
        command.stamp(alembic, BASELINE)  # adopt a database made before migrations
    if not before.up_to_date:
        command.upgrade(alembic, "head")
    return before
