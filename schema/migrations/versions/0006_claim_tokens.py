"""claim tokens: the runs with queued jobs, found from their counters

Revision ID: 0006_claim_tokens
Revises: 0005_batch_api
Create Date: 2026-12-01 12:30:00

Broker messages no longer carry job ids: each asks a worker to claim queued jobs of its queue. Workers
find the runs that have some from `run_counts`, by state.
"""

from __future__ import annotations

from alembic import op

revision = "0006_claim_tokens"
down_revision = "0005_batch_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_run_counts_state", "run_counts", ["state", "run_id"])


def downgrade() -> None:
    op.drop_index("ix_run_counts_state", table_name="run_counts")
