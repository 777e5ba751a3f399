"""SQLite: the pragmas every connection gets, BEGIN IMMEDIATE for writers, a deleted WAL saved."""

from __future__ import annotations

from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine

from server.errors import StoreUnavailable
from server.settings import Settings

__all__ = ["checkpoint_deleted_wal", "configure", "wal_path"]


def configure(engine: Engine, settings: Settings) -> None:
    """Give every connection of ``engine`` the hub's pragmas, and its writers BEGIN IMMEDIATE."""
    synchronous = settings.sqlite_synchronous.upper()
    busy_timeout = int(settings.sqlite_busy_timeout_ms)

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        # Take transaction control from the driver: pysqlite would otherwise open
        # transactions lazily, only at the first write, so a read-then-write unit of
        # work would not be atomic.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        # WAL with synchronous=NORMAL: a committed transaction survives a crash of the
        # hub process (it is in the OS's page cache); FULL also survives power loss.
        cursor.execute(f"PRAGMA synchronous={synchronous}")
        cursor.execute(f"PRAGMA busy_timeout={busy_timeout}")
        cursor.execute("PRAGMA foreign_keys=ON")
        cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(connection: Any) -> None:
        # A write unit of work takes the write lock up front (IMMEDIATE) so it waits on
        # busy_timeout instead of failing with SQLITE_BUSY when it upgrades a read lock.
        if connection.get_execution_options().get("hub_write"):
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.exec_driver_sql("BEGIN")


def wal_path(url: str) -> str | None:
    """Return the write-ahead log's path of a SQLite URL (None: in memory)."""
    path = url.split("///", 1)[1] if "///" in url else ""
    return None if not path or path.startswith(":memory:") else path + "-wal"


def checkpoint_deleted_wal(engine: Engine) -> None:
    """Save what a deleted WAL holds into the database, then close every connection.

    Deleting hub.db-wal under a running hub (an operator cleaning up "temporary" files) lost
    every commit since the last checkpoint at the next start: 99 of 560 acknowledged switches
    in one trial. The pooled connections still hold the deleted file open, so a checkpoint
    through one of them copies its commits into hub.db; then every connection is closed, and
    the next ones make a new WAL.
    """
    with engine.connect() as connection:
        busy, _, _ = connection.exec_driver_sql("PRAGMA wal_checkpoint(TRUNCATE)").one()
    if busy:
        raise StoreUnavailable("The deleted WAL could not be checkpointed (busy).")
    engine.dispose()
