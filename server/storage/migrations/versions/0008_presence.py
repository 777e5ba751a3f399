"""Presence: each process's open tabs per login session, and each session's device words.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-07
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision: str | None = "0007"
branch_labels: str | None = None
depends_on: str | None = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    """Create tab_counts; add login_sessions.device."""
    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.add_column(sa.Column("device", sa.String(length=80), nullable=True))
    op.create_table(
        "tab_counts",
        sa.Column("origin", sa.String(length=64), nullable=False),
        sa.Column("session_id", _ID, nullable=False),
        sa.Column("user_id", _ID, nullable=False),
        sa.Column("tabs", sa.Integer(), nullable=False),
        sa.Column("seen_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["session_id"], ["login_sessions.id"], ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("origin", "session_id"),
    )
    op.create_index("ix_tab_counts_user_id", "tab_counts", ["user_id"])


def downgrade() -> None:
    """Drop tab_counts and login_sessions.device."""
    op.drop_index("ix_tab_counts_user_id", table_name="tab_counts")
    op.drop_table("tab_counts")
    with op.batch_alter_table("login_sessions") as batch_op:
        batch_op.drop_column("device")
