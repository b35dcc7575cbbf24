"""worker heartbeats: one liveness row per worker instead of a lease renewal per running job

Revision ID: 0008_worker_heartbeats
Revises: 0007_claim_tokens
Create Date: 2026-12-01 16:00:00

A heartbeat used to rewrite every running job's `lease_expires_at`: one row version and, on bulk-loaded
pages, new index entries per job per beat (15 s of database time per beat for 10,000 leases on a
10^6-job ledger). Now each worker beats its own `workers` row; a running job is alive while its claim's
lease or its worker's row is. `ix_jobs_running_owner`: the heartbeat reads a worker's running jobs.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008_worker_heartbeats"
down_revision = "0007_claim_tokens"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "workers",
        sa.Column("name", sa.String(200), primary_key=True),
        sa.Column("started_at", sa.DateTime(), nullable=False),
        sa.Column("beat_at", sa.DateTime(), nullable=False),
        sa.Column("expires_at", sa.DateTime(), nullable=False),
    )
    op.create_index(
        "ix_jobs_running_owner",
        "jobs",
        ["lease_owner", "current_attempt_id"],
        postgresql_where=sa.text("state = 'running'"),
        sqlite_where=sa.text("state = 'running'"),
    )


def downgrade() -> None:
    op.drop_index("ix_jobs_running_owner", table_name="jobs")
    op.drop_table("workers")
