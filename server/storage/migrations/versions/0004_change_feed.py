"""The change feed: every committed change, for the processes that did not make it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision: str | None = "0003"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create the changes table (positions never reused: AUTOINCREMENT on SQLite)."""
    op.create_table(
        "changes",
        sa.Column(
            "position",
            sa.BigInteger().with_variant(sa.Integer(), "sqlite"),
            primary_key=True,
            autoincrement=True,
        ),
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("events", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sqlite_autoincrement=True,
    )
    op.create_index("ix_changes_created_at", "changes", ["created_at"])


def downgrade() -> None:
    """Drop the changes table."""
    op.drop_index("ix_changes_created_at", table_name="changes")
    op.drop_table("changes")
