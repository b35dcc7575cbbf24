"""claim tokens: the runs with queued jobs, found from their counters; held runs

Revision ID: 0007_claim_tokens
Revises: 0006_batch_deadlines
Create Date: 2026-12-01 12:30:00

Broker messages no longer carry job ids: each asks a worker to claim queued jobs of its queue. Workers
find the runs that have some from `run_counts`, by state (`ix_run_counts_state`). `runs.held`: a run whose
queued jobs no token may claim yet (a Batch API batch still validating).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007_claim_tokens"
down_revision = "0006_batch_deadlines"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_run_counts_state", "run_counts", ["state", "run_id"])
    with op.batch_alter_table("runs") as batch:
        batch.add_column(sa.Column("held", sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    with op.batch_alter_table("runs") as batch:
        batch.drop_column("held")
    op.drop_index("ix_run_counts_state", table_name="run_counts")
