"""submit rejects: source rows recorded, not submitted

Revision ID: 0009_submit_rejects
Revises: 0008_worker_heartbeats
Create Date: 2026-12-07 18:00:00

A row that cannot become a job (a missing image, a path outside the allowed folders, a broken line) no
longer refuses a whole dataset: the submit records it in `submit_rejects` and counts it on its run
(`runs.rejected`), so `status` reads one row and `export --format rejects` lists them.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009_submit_rejects"
down_revision = "0008_worker_heartbeats"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.add_column("runs", sa.Column("rejected", sa.Integer(), nullable=False, server_default=sa.text("0")))
    op.create_table(
        "submit_rejects",
        sa.Column("id", BigId, primary_key=True),
        sa.Column("run_id", BigId, sa.ForeignKey("runs.id", ondelete="CASCADE"), nullable=False),
        sa.Column("position", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("custom_id", sa.Text(), nullable=True),
        sa.UniqueConstraint("run_id", "position", name="uq_submit_rejects_run_position"),
    )


def downgrade() -> None:
    op.drop_table("submit_rejects")
    op.drop_column("runs", "rejected")
