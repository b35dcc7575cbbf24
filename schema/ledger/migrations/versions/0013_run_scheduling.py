"""run scheduling: priorities, weighted shares, pause and a circuit breaker per run

Revision ID: 0013_run_scheduling
Revises: 0011_model_identity
Create Date: 2026-12-07 18:00:00

Workers took a queue's runs oldest first. `runs.priority` and `runs.weight` let them take from the highest
priority first and share a priority by weight (schema/ledger/shares.py, on the runs' counters);
`runs.share_offset` starts a run that joins level with the others. `runs.paused_at` / `pause_reason`: a run
paused by `vlmbatch pause` or by its breaker. `run_breakers`: one row of counters per run
(schema/ledger/breaker.py).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0013_run_scheduling"
down_revision = "0011_model_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("priority", sa.Integer(), server_default=sa.text("0"), nullable=False))
        batch.add_column(sa.Column("weight", sa.Integer(), server_default=sa.text("1"), nullable=False))
        batch.add_column(sa.Column("share_offset", sa.Float(), nullable=True))
        batch.add_column(sa.Column("paused_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("pause_reason", sa.Text(), nullable=True))
    op.create_table(
        "run_breakers",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("streak", sa.Integer(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("previous_attempts", sa.Integer(), nullable=False),
        sa.Column("previous_failures", sa.Integer(), nullable=False),
        sa.Column("first_error_type", sa.String(32), nullable=True),
        sa.Column("first_error", sa.Text(), nullable=True),
        sa.Column("tripped_at", sa.DateTime(), nullable=True),
        sa.Column("trips", sa.Integer(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id"),
    )


def downgrade() -> None:
    op.drop_table("run_breakers")
    with op.batch_alter_table("runs") as batch:
        for column in ("pause_reason", "paused_at", "share_offset", "weight", "priority"):
            batch.drop_column(column)
