"""checkpoints: the partial output (token ids) of a job's running attempt, and the output of a job that
ended at its max_tokens; attempts.resumed_from_attempt_id and reused_tokens

Revision ID: 0015_checkpoints
Revises: 0014_thinking_capped
Create Date: 2026-12-07 22:15:00

Issue 26: a new attempt continues its job's checkpoint instead of regenerating the trace from token 0
(docs/ARCHITECTURE.md, "Outcome contract"). A new table and two nullable columns: no row is rewritten.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0015_checkpoints"
down_revision = "0014_thinking_capped"
branch_labels = None
depends_on = None

# The ids of jobs and attempts, as the models declare them (SQLite: INTEGER).
_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("job_id", _ID, sa.ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True),
        sa.Column("attempt_id", _ID, sa.ForeignKey("attempts.id", ondelete="CASCADE"), nullable=False),
        sa.Column("tokens", sa.Integer(), nullable=False),
        sa.Column("token_ids", sa.LargeBinary(), nullable=False),
        sa.Column("text", sa.Text(), nullable=False),
        sa.Column("finish_reason", sa.String(16), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
    )
    op.create_index("ix_checkpoints_attempt_id", "checkpoints", ["attempt_id"])
    op.add_column("attempts", sa.Column("resumed_from_attempt_id", sa.BigInteger(), nullable=True))
    op.add_column("attempts", sa.Column("reused_tokens", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("reused_tokens")
        batch.drop_column("resumed_from_attempt_id")
    op.drop_index("ix_checkpoints_attempt_id", table_name="checkpoints")
    op.drop_table("checkpoints")
