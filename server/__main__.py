"""The command line: serve, user and platform administration, demo data."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import typing
from collections.abc import Awaitable, Callable, Sequence
from typing import TypeVar

import msgspec
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from server import __version__
from server.api import PlatformCreate, PlatformKind
from server.db import Database
from server.errors import HubError, UsageError, first_line
from server.protocol import readable
from server.settings import Settings
from server.storage import platforms, schema
from server.storage.users import DEMO_USERS, add_user, seed_demo, user_id_of

__all__ = ["main"]

T = TypeVar("T")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``hub`` command line."""
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = Settings.from_environ(
            database_url=getattr(args, "database_url", None),
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            upgrade_schema=getattr(args, "upgrade", None),
        )
        return int(args.run(settings, args) or 0)
    except (HubError, ValueError) as error:
        print(f"hub: {error}", file=sys.stderr)
        return 2
    except (OSError, DBAPIError) as error:
        # A database that refuses the connection or does not exist: the driver's first line
        # (never the URL, which may hold a password), not a traceback.
        print(f"hub: the database cannot be used: {first_line(error)}", file=sys.stderr)
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="hub", description=__doc__)
    parser.add_argument("--version", action="version", version=f"hub {__version__}")
    commands = parser.add_subparsers(required=True, metavar="COMMAND")

    def command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help, description=help)
        sub.add_argument("--database-url", help="SQLAlchemy URL (default: $HUB_DATABASE_URL)")
        return sub

    serve = command(
        "serve", "Serve the hub; an empty database gets the schema, an outdated one is refused."
    )
    serve.add_argument("--host", help="interface to bind (default: $HUB_HOST or 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to bind (default: $HUB_PORT or 8000)")
    serve.add_argument(
        "--workers",
        type=int,
        help="worker processes sharing the port (PostgreSQL only; default 1)",
    )
    serve.add_argument(
        "--upgrade",
        action="store_true",
        default=None,
        help="upgrade an outdated schema before serving (default: $HUB_UPGRADE_SCHEMA or no)",
    )
    serve.set_defaults(run=_serve)

    db = commands.add_parser("db", help="Manage the database schema.").add_subparsers(required=True)
    db_upgrade = db.add_parser(
        "upgrade", help="Bring the schema to this hub's newest revision (creating it if empty)."
    )
    db_upgrade.add_argument("--database-url")
    db_upgrade.set_defaults(run=_db_upgrade)
    db_status = db.add_parser("status", help="Show the schema's revision and this hub's.")
    db_status.add_argument("--database-url")
    db_status.set_defaults(run=_db_status)

    user = commands.add_parser("user", help="Manage users.").add_subparsers(required=True)
    user_add = user.add_parser("add", help="Create a user.")
    user_add.add_argument("--database-url")
    user_add.add_argument("name")
    user_add.add_argument("--password", required=True)
    user_add.set_defaults(run=_user_add)

    platform = commands.add_parser("platform", help="Manage platforms.").add_subparsers(
        required=True
    )
    platform_add = platform.add_parser("add", help="Connect a platform account to a user.")
    platform_add.add_argument("--database-url")
    platform_add.add_argument("user")
    platform_add.add_argument("name")
    platform_add.add_argument("--kind", required=True, choices=typing.get_args(PlatformKind))
    platform_add.add_argument("--instance-url", required=True)
    platform_add.add_argument("--username", required=True)
    platform_add.add_argument("--default", action="store_true", help="make it the default")
    platform_add.set_defaults(run=_platform_add)

    demo = command("demo", "Create the demo users and their platforms, and print their logins.")
    demo.set_defaults(run=_demo)
    return parser


def _serve(settings: Settings, args: argparse.Namespace) -> int:
    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from server.web.app import create_app
    from server.web.serving import tune_gc, uvicorn_config

    workers = args.workers or 1
    if workers > 1 and settings.is_sqlite:
        raise UsageError(
            "Several workers need PostgreSQL: SQLite has one writer, and a process can tell "
            "only its own tabs of a change. Serve one process (no --workers), or set "
            "HUB_DATABASE_URL=postgresql+asyncpg://..."
        )
    # Refuse an outdated schema (or upgrade it, if told to) here, with the message alone,
    # before uvicorn starts; a single process then does not look again.
    upgrade = settings.upgrade_schema
    _with_database(settings, lambda db: db.prepare_schema(upgrade=upgrade), prepare=False)
    if workers == 1:
        app = create_app(settings, schema_ready=True)
        tune_gc()
        uvicorn.Server(uvicorn_config(app, settings)).run()
        return 0
    # Each worker process builds its own app (and hub, pool, listener) from the environment,
    # where these settings, command-line flags included, are put first; they share the
    # listening socket, and PostgreSQL carries their fan-out as between separate processes.
    os.environ.update(settings.to_environ())
    config = uvicorn_config(
        "server.web.serving:app_from_environ", settings, workers=workers, factory=True
    )
    Multiprocess(config, sockets=[config.bind_socket()]).run()
    return 0


def _db_upgrade(settings: Settings, args: argparse.Namespace) -> int:
    before = _with_database(settings, lambda db: db.create_schema(), prepare=False)
    if before.up_to_date:
        print(f"schema already at revision {before.head}")
    else:
        start = before.current or ("nothing" if before.empty else "an unversioned schema")
        print(f"schema upgraded from {start} to revision {before.head}")
    return 0


def _db_status(settings: Settings, args: argparse.Namespace) -> int:
    state = _with_database(settings, lambda db: schema.inspect_schema(db.engine), prepare=False)
    print(f"database: revision {state.current or 'none'}; this hub: revision {state.head}")
    if state.up_to_date:
        return 0
    print(state.problem() if not state.empty else "The database is empty: run `hub db upgrade`.")
    return 1


def _with_database(
    settings: Settings, work: Callable[[Database], Awaitable[T]], *, prepare: bool = True
) -> T:
    async def run() -> T:
        database = Database(settings)
        try:
            if prepare:
                # An empty database gets the schema; an outdated one is refused.
                await database.prepare_schema(upgrade=False)
            return await work(database)
        finally:
            await database.dispose()

    return asyncio.run(run())


def _user_add(settings: Settings, args: argparse.Namespace) -> int:
    user_id = _with_database(settings, lambda db: add_user(db, args.name, args.password))
    print(f"created user {args.name} (id {user_id})")
    return 0


def _platform_add(settings: Settings, args: argparse.Namespace) -> int:
    fields = {
        "name": args.name,
        "kind": args.kind,
        "instance_url": args.instance_url,
        "username": args.username,
        "is_default": args.default,
    }
    try:  # the rules a page's or the host app's platform is held to
        new = msgspec.convert(fields, PlatformCreate)
    except msgspec.ValidationError as error:
        raise UsageError(readable(str(error))) from None

    async def add(database: Database) -> int:
        user_id = await user_id_of(database, args.user)
        if user_id is None:
            raise UsageError(f"no user named {args.user!r}")
        # Platform management: a new version, which every hub process's tabs of the user get.
        listed = await platforms.add(database, user_id, new)
        return next(p.id for p in listed.platforms if p.name == new.name)

    platform_id = _with_database(settings, add)
    print(f"added platform {args.name} to {args.user} (id {platform_id})")
    return 0


def _demo(settings: Settings, args: argparse.Namespace) -> int:
    created = _with_database(settings, seed_demo)
    shown = make_url(settings.database_url).render_as_string(hide_password=True)
    print(f"demo users in {shown} ({len(created)} created now):")
    for user in DEMO_USERS:
        platforms = ", ".join(p.name for p in user.platforms)
        print(f"  {user.name:<6} password {user.password:<14} platforms: {platforms}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
