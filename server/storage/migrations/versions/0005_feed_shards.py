"""The change feed by transaction and shard: how several PostgreSQL processes read it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision: str | None = "0004"
branch_labels: str | None = None
depends_on: str | None = None

# The committing transaction's id, as a bigint (xid8 has no cast to it; its text has).
_TX = sa.text("(pg_current_xact_id()::text::bigint)")


def upgrade() -> None:
    """Add changes.tx (filled by PostgreSQL itself) and changes.shard, and index tx."""
    postgresql = op.get_bind().dialect.name == "postgresql"
    op.add_column(
        "changes",
        sa.Column("tx", sa.BigInteger(), nullable=True, server_default=_TX if postgresql else None),
    )
    op.add_column(
        "changes", sa.Column("shard", sa.SmallInteger(), nullable=False, server_default="0")
    )
    op.create_index("ix_changes_tx", "changes", ["tx"])


def downgrade() -> None:
    """Drop them (SQLite >= 3.35 drops columns)."""
    op.drop_index("ix_changes_tx", table_name="changes")
    op.drop_column("changes", "shard")
    op.drop_column("changes", "tx")
