"""External ids: a platform may carry the host app's own id for the account.

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision: str | None = "0002"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Add platforms.external_id, unique per user (null for every existing row; nulls never
    collide). A column and an index: no table is rebuilt, on SQLite either."""
    op.add_column("platforms", sa.Column("external_id", sa.String(length=200), nullable=True))
    op.create_index(
        "uq_platforms_user_id_external_id", "platforms", ["user_id", "external_id"], unique=True
    )


def downgrade() -> None:
    """Drop platforms.external_id, in place on both engines. (A batch rebuild of the table on
    SQLite drops it while foreign keys are on, and ON DELETE SET NULL then clears every
    user's active platform.) SQLite has had ALTER TABLE ... DROP COLUMN since 3.35."""
    op.drop_index("uq_platforms_user_id_external_id", table_name="platforms")
    op.execute("ALTER TABLE platforms DROP COLUMN external_id")
