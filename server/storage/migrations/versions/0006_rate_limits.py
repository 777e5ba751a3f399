"""Rate limits shared by every hub process of a database.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision: str | None = "0005"
branch_labels: str | None = None
depends_on: str | None = None


def upgrade() -> None:
    """Create rate_limits."""
    op.create_table(
        "rate_limits",
        sa.Column("key", sa.String(length=40), primary_key=True),
        sa.Column("tat", sa.Float(precision=53), nullable=False),
    )


def downgrade() -> None:
    """Drop rate_limits."""
    op.drop_table("rate_limits")
