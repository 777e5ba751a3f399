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


def upgrade() -> None:
    """Add changes.tx and changes.shard, index tx, and create feed_collected."""
    op.add_column("changes", sa.Column("tx", sa.BigInteger(), nullable=True))
    op.add_column(
        "changes", sa.Column("shard", sa.SmallInteger(), nullable=False, server_default="0")
    )
    op.create_index("ix_changes_tx", "changes", ["tx"])
    op.create_table(
        "feed_collected",
        sa.Column("id", sa.SmallInteger(), primary_key=True, autoincrement=False),
        sa.Column("tx", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    """Drop them (SQLite >= 3.35 drops columns)."""
    op.drop_table("feed_collected")
    op.drop_index("ix_changes_tx", table_name="changes")
    op.drop_column("changes", "shard")
    op.drop_column("changes", "tx")
