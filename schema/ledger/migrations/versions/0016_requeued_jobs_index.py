"""ix_jobs_run_requeued: a run's queued jobs that were claimed before, for claims that walk on from a cursor

Revision ID: 0016_requeued_jobs_index
Revises: 0015_checkpoints
Create Date: 2026-12-07 22:00:00

A claimer walks a run's never-claimed jobs on from the last one it took (schema/ledger/heads.py), past the
dead index entries finished jobs leave at the head of the queued range until a VACUUM. Jobs that go back
to the queue (a retry, a resample, a lease taken back, a resubmit) may sit behind that cursor: this partial
index finds them. Partial, so a submit's inserts and most claims touch none of it.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0016_requeued_jobs_index"
down_revision = "0015_checkpoints"
branch_labels = None
depends_on = None

_REQUEUED = "state = 'queued' AND attempt_count > 0"


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.create_index(
            "ix_jobs_run_requeued",
            ["run_id", "id"],
            unique=False,
            postgresql_where=sa.text(_REQUEUED),
            sqlite_where=sa.text(_REQUEUED),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_index("ix_jobs_run_requeued", postgresql_where=sa.text(_REQUEUED), sqlite_where=sa.text(_REQUEUED))
