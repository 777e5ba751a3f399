"""A real PostgreSQL for the tests that are about it: a fresh database per test, dropped after.

The server is the one this machine runs (127.0.0.1:5432, trust auth, database ``test``), or
the one ``HUB_TEST_POSTGRES_URL`` names. Without one, these tests skip with the reason,
except under CI (``CI=true``), where they fail: CI must run them (scripts/ensure-postgres).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import asyncpg
import pytest

__all__ = ["BASE_URL", "Relay", "fresh_database", "require_postgres"]

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
async def fresh_database(template: str | None = None) -> AsyncIterator[str]:
    """Create an empty database for one test (a copy of ``template``, a database no one is
    connected to, if given); yield its SQLAlchemy URL; drop it afterwards."""
    await require_postgres()
    name = f"hub_test_{secrets.token_hex(6)}"
    admin = await asyncpg.connect(_dsn(BASE_URL))
    try:
        copy = f' TEMPLATE "{template}"' if template else ""
        await admin.execute(f'CREATE DATABASE "{name}"{copy}')
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


class Relay:
    """A TCP relay in front of PostgreSQL that a test can take down and bring back.

    Down, it is what a stopped server looks like from the hub: every connection is cut and
    new ones are refused (nothing listens on the port). Up again, it listens on the same port.
    Stalled, it is a server behind a partition: connections stay open and new ones are
    accepted, but nothing is relayed either way until it resumes (then all of it is).
    """

    def __init__(self) -> None:
        self._target = ("127.0.0.1", 5432)
        self._server: asyncio.Server | None = None
        self._links: set[asyncio.StreamWriter] = set()
        self._flowing = asyncio.Event()
        self._flowing.set()
        self.port = 0

    async def start(self, url: str) -> str:
        """Relay to the server of ``url``; return the same database's URL through the relay."""
        parts = urlsplit(_dsn(url))
        host, port = parts.hostname or "127.0.0.1", parts.port or 5432
        self._target = (host, port)
        await self.up()
        return url.replace(f"@{host}:{port}/", f"@127.0.0.1:{self.port}/", 1)

    async def up(self) -> None:
        """Listen (on the same port as before, if there was one) and relay."""
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def down(self) -> None:
        """Stop listening and cut every relayed connection."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._links):
            writer.transport.abort()
        self._links.clear()

    def stall(self) -> None:
        """Relay nothing, either way, and connect nothing new upstream, until resume()."""
        self._flowing.clear()

    def resume(self) -> None:
        """Relay again, what was held first."""
        self._flowing.set()

    async def _relay(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await self._flowing.wait()
        try:
            upstream_reader, upstream_writer = await asyncio.open_connection(*self._target)
        except OSError:
            writer.transport.abort()
            return
        self._links |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await source.read(65536):
                    await self._flowing.wait()
                    sink.write(data)
                    await sink.drain()
            sink.transport.abort()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self._links -= {writer, upstream_writer}
