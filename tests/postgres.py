"""A real PostgreSQL for the tests that are about it: a fresh database per test, dropped after.

The server is the one this machine runs (127.0.0.1:5432, trust auth, database ``test``), or
the one ``HUB_TEST_POSTGRES_URL`` names. Without one, these tests skip with the reason,
except under CI (``CI=true``), where they fail: CI must run them (scripts/ensure-postgres).
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import AsyncIterator

import asyncpg
import pytest

__all__ = ["BASE_URL", "fresh_database", "require_postgres"]

BASE_URL = os.environ.get(
    "HUB_TEST_POSTGRES_URL", "postgresql+asyncpg://postgres@127.0.0.1:5432/test"
)


def _dsn(url: str) -> str:
    return url.replace("postgresql+asyncpg://", "postgresql://", 1)


async def require_postgres() -> None:
    """Skip the calling test when PostgreSQL is not reachable, or fail under CI."""
    try:
        connection = await asyncpg.connect(_dsn(BASE_URL), timeout=5)
    except (OSError, asyncpg.PostgresError) as error:
        reason = f"PostgreSQL is not reachable at {BASE_URL}: {error}"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the PostgreSQL tests)")
        pytest.skip(reason)
    await connection.close()


@contextlib.asynccontextmanager
async def fresh_database() -> AsyncIterator[str]:
    """Create an empty database for one test; yield its SQLAlchemy URL; drop it afterwards."""
    await require_postgres()
    name = f"hub_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_dsn(BASE_URL))
    try:
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    try:
        yield BASE_URL.rsplit("/", 1)[0] + f"/{name}"
    finally:
        admin = await asyncpg.connect(_dsn(BASE_URL))
        try:
            await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await admin.close()
