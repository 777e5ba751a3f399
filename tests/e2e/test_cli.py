"""The hub command line, run as a real process."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx

from server.settings import Settings
from tests.conftest import MakeSettings, reported_port, serve


def hub(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'cli.db'}"}
    return subprocess.run(
        [sys.executable, "-m", "server", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_user_and_platform_admin(tmp_path: Path) -> None:
    """user add and platform add create rows, and refuse duplicates with a clear error."""
    created = hub(tmp_path, "user", "add", "dana", "--password", "dana-secret")
    assert created.returncode == 0 and "created user dana" in created.stdout
    again = hub(tmp_path, "user", "add", "dana", "--password", "dana-secret")
    assert again.returncode == 2 and "exists already" in again.stderr
    added = hub(
        tmp_path, "platform", "add", "dana", "Pix", "--kind", "pixelfed",
        "--instance-url", "https://pixelfed.social", "--username", "dana", "--default",
    )  # fmt: skip
    assert added.returncode == 0 and "added platform Pix to dana" in added.stdout
    unknown = hub(
        tmp_path, "platform", "add", "nobody", "Pix", "--kind", "pixelfed",
        "--instance-url", "https://pixelfed.social", "--username", "x",
    )  # fmt: skip
    assert unknown.returncode == 2 and "no user named 'nobody'" in unknown.stderr


def test_demo_is_idempotent_and_prints_logins(tmp_path: Path) -> None:
    """hub demo seeds once and prints the demo logins each time."""
    first, second = hub(tmp_path, "demo"), hub(tmp_path, "demo")
    assert "(3 created now)" in first.stdout and "(0 created now)" in second.stdout
    assert "alice-demo-pw" in second.stdout


def test_version() -> None:
    """hub --version prints the package version."""
    result = subprocess.run(
        [sys.executable, "-m", "server", "--version"], capture_output=True, text=True
    )
    assert result.stdout.strip() == "hub 0.1.0"


def test_serve_starts_and_answers_health(tmp_path: Path) -> None:
    """hub serve creates the schema, listens and answers /healthz, then stops on SIGTERM."""
    env = {**os.environ, "HUB_DATABASE_URL": f"sqlite+aiosqlite:///{tmp_path / 'serve.db'}"}
    process = subprocess.Popen(
        [sys.executable, "-m", "server", "serve", "--port", "0"],
        env=env,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        port = reported_port(process)
        health = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=5)
        assert health.status_code == 200 and health.json()["status"] == "ok"
    finally:
        process.terminate()
        _, rest = process.communicate(timeout=20)
    # uvicorn shuts down gracefully, then re-raises the SIGTERM it caught.
    assert process.returncode in (0, -15)
    assert "Application shutdown complete" in rest


def test_serve_refuses_workers_on_sqlite(tmp_path: Path) -> None:
    """Several workers need PostgreSQL: on SQLite, exit 2 with the reason and the fix."""
    refused = hub(tmp_path, "serve", "--workers", "2", "--port", "0")
    assert refused.returncode == 2
    assert "Several workers need PostgreSQL" in refused.stderr and "Traceback" not in refused.stderr


async def test_platform_add_reaches_open_tabs_of_a_running_hub(
    make_on_each_engine: MakeSettings,
) -> None:
    """`hub platform add`, run beside a serving hub, moves the version, and the hub's open tabs
    of that user get the new state with the new platform: on PostgreSQL through NOTIFY, on
    SQLite through the change feed the serving process polls."""
    command = [
        sys.executable, "-m", "server", "platform", "add", "alice", "Cli", "--kind", "mastodon",
        "--instance-url", "https://cli.example", "--username", "alice",
    ]  # fmt: skip
    settings = make_on_each_engine()
    async with serve(settings) as running:
        tab = await running.tab(await running.login("alice"), "a")
        version = tab.hello["state"]["version"]
        env = {**os.environ, "HUB_DATABASE_URL": settings.database_url}
        started = time.monotonic()
        added = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
        )
        assert added.returncode == 0, added.stderr
        message = await tab.receive_type("state")
        print(f"\nplatform add -> tab: {time.monotonic() - started:.2f} s (process included)")
        assert message["state"]["version"] == version + 1
        assert message["cause"] == {"kind": "platforms", "tab": None, "request": ""}
        assert "Cli" in [p["name"] for p in message["state"]["platforms"]]


def test_a_database_url_the_hub_cannot_use_is_one_sentence(tmp_path: Path) -> None:
    """Empty, unknown or file-less URLs exit 2 with what to give instead; a database that
    refuses the connection exits 1 with the driver's reason; never a traceback, never the
    password of the URL."""
    refusals = {
        "": "is empty",
        "mysql://hub:s3cret-pw@db/hub": "scheme 'mysql'",
        "hub.db": "no scheme",
        "sqlite://": "names no SQLite file",
        "sqlite:///:memory:": "names no SQLite file",  # one database per connection: no schema
        "postgres://hub:s3cret-pw@db:abc/hub": "port that is not a number",
        "postgresql://hub:s3cret-pw@127.0.0.1:1/hub": "cannot be used",
    }
    for url, sentence in refusals.items():
        env = {**os.environ, "HUB_DATABASE_URL": url}
        result = subprocess.run(
            [sys.executable, "-m", "server", "db", "upgrade"],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=tmp_path,
        )
        assert result.returncode == (1 if "cannot be used" in sentence else 2), result.stderr
        assert sentence in result.stderr and result.stderr.count("\n") == 1, result.stderr
        assert "Traceback" not in result.stderr and "s3cret" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing was created on the way


async def test_a_database_that_never_answers_is_one_sentence_in_bounded_time(
    tmp_path: Path,
) -> None:
    """A server that accepts the connection and says nothing (a stalled network): the
    command gives up after HUB_DATABASE_TIMEOUT_S with a sentence, not a traceback (the
    driver's timeout has no text: its kind is named instead)."""
    held: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    env = {
        **os.environ,
        "HUB_DATABASE_URL": f"postgresql://hub:s3cret-pw@127.0.0.1:{port}/hub",
        "HUB_DATABASE_TIMEOUT_S": "0.5",
    }
    command = [sys.executable, "-m", "server", "db", "upgrade"]
    async with server:
        result = await asyncio.to_thread(
            subprocess.run, command, env=env, capture_output=True, text=True, timeout=60
        )
        for writer in held:
            writer.close()
    assert result.returncode == 1, result.stderr
    assert result.stderr.startswith("hub: the database cannot be used: ")
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "s3cret" not in result.stderr


def test_a_database_url_may_use_the_common_short_schemes(tmp_path: Path) -> None:
    """postgres:// and postgresql:// (as hosting platforms give them) and sqlite:/// get the
    hub's drivers; a URL with them already is kept as it is."""
    assert Settings(database_url="postgres://u@h/d").database_url == "postgresql+asyncpg://u@h/d"
    assert Settings(database_url="postgresql://h/d").database_url == "postgresql+asyncpg://h/d"
    assert Settings(database_url="sqlite:///a.db").database_url == "sqlite+aiosqlite:///a.db"
    # libpq's sslmode, as hosting platforms give it, is asyncpg's ssl.
    hosted = Settings(database_url="postgres://u:p@h:5432/d?sslmode=require&x=1").database_url
    assert hosted == "postgresql+asyncpg://u:p@h:5432/d?ssl=require&x=1"
    kept = f"sqlite+aiosqlite:///{tmp_path / 'hub.db'}"
    assert Settings(database_url=kept).database_url == kept
    result = subprocess.run(
        [sys.executable, "-m", "server", "db", "upgrade"],
        env={**os.environ, "HUB_DATABASE_URL": f"sqlite:///{tmp_path / 'short.db'}"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0 and (tmp_path / "short.db").exists(), result.stderr
