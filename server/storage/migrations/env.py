"""Alembic's environment for the hub: runs on the connection server/storage/schema.py hands it."""

from __future__ import annotations

from alembic import context

from server.db import metadata

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError(
        "The hub's migrations run through `hub db upgrade` (server/storage/schema.py), "
        "not the alembic command line."
    )
context.configure(
    connection=connection,
    target_metadata=metadata,
    # SQLite cannot ALTER most things: later migrations rebuild its tables in batches.
    render_as_batch=True,
    compare_type=True,
)
with context.begin_transaction():
    context.run_migrations()
