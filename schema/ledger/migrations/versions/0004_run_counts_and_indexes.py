"""run counts, indexes for the hot queries, the submit's publication mark

Revision ID: 0004_run_counts
Revises: 0003_result_grader
Create Date: 2026-12-01 09:40:00

- `run_counts`: jobs per (run, state, error type), kept by the state-changing statements
  (schema.ledger.counters); filled here from the jobs already in the ledger.
- `ix_jobs_run_state` becomes `ix_jobs_run_state_id` (run, state, id) for keyset pages in one state;
  `ix_jobs_run_id` (run, id) for unfiltered pages; partial indexes for failed jobs by error type and for
  running jobs by attempt id (heartbeats, lease expiry). `ix_jobs_running_lease` goes: with
  `lease_expires_at` in no index a heartbeat's renewal can be a HOT update.
- `runs.published_at`: when a submit last committed or published jobs of the run (the reconciler's grace
  counts from it, so a long submit's jobs are not taken for lost).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004_run_counts"
down_revision = "0003_result_grader"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "run_counts",
        sa.Column("run_id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("error_type", sa.String(length=32), nullable=False),
        sa.Column("shard", sa.Integer(), nullable=False),
        sa.Column("jobs", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("run_id", "state", "error_type", "shard"),
    )
    op.execute(
        "INSERT INTO run_counts (run_id, state, error_type, shard, jobs) "
        "SELECT run_id, state, CASE WHEN state = 'failed' THEN COALESCE(error_type, '') ELSE '' END, 0, count(*) "
        "FROM jobs GROUP BY run_id, state, CASE WHEN state = 'failed' THEN COALESCE(error_type, '') ELSE '' END"
    )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("published_at", sa.DateTime(), nullable=True))
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index("ix_jobs_run_state")
        batch_op.drop_index(
            "ix_jobs_running_lease",
            postgresql_where=sa.text("state = 'running'"),
            sqlite_where=sa.text("state = 'running'"),
        )
        batch_op.create_index("ix_jobs_run_state_id", ["run_id", "state", "id"], unique=False)
        batch_op.create_index("ix_jobs_run_id", ["run_id", "id"], unique=False)
        batch_op.create_index(
            "ix_jobs_run_failed_error",
            ["run_id", "error_type", "id"],
            unique=False,
            postgresql_where=sa.text("state = 'failed'"),
            sqlite_where=sa.text("state = 'failed'"),
        )
        batch_op.create_index(
            "ix_jobs_running_attempt",
            ["current_attempt_id"],
            unique=False,
            postgresql_where=sa.text("state = 'running'"),
            sqlite_where=sa.text("state = 'running'"),
        )


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(
            "ix_jobs_running_attempt",
            postgresql_where=sa.text("state = 'running'"),
            sqlite_where=sa.text("state = 'running'"),
        )
        batch_op.drop_index(
            "ix_jobs_run_failed_error",
            postgresql_where=sa.text("state = 'failed'"),
            sqlite_where=sa.text("state = 'failed'"),
        )
        batch_op.drop_index("ix_jobs_run_id")
        batch_op.drop_index("ix_jobs_run_state_id")
        batch_op.create_index("ix_jobs_run_state", ["run_id", "state"], unique=False)
        batch_op.create_index(
            "ix_jobs_running_lease",
            ["lease_expires_at"],
            unique=False,
            postgresql_where=sa.text("state = 'running'"),
            sqlite_where=sa.text("state = 'running'"),
        )
    with op.batch_alter_table("runs", schema=None) as batch_op:
        batch_op.drop_column("published_at")
    op.drop_table("run_counts")
