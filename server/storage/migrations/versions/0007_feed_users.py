"""The users of each change feed row, so a reader skips the rows of users it has no tab of.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision: str | None = "0006"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add changes.users (PostgreSQL: bigint[]; rows written before it, or by an older hub,
    have none and are read by every reader of their shard)."""
    users = postgresql.ARRAY(sa.BigInteger()).with_variant(sa.JSON(), "sqlite")
    op.add_column("changes", sa.Column("users", users, nullable=True))


def downgrade() -> None:
    """Drop it (SQLite >= 3.35 drops columns)."""
    op.drop_column("changes", "users")
