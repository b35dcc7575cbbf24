"""results: the grader and its version with each graded result

Revision ID: 0003_result_grader
Revises: 0002_job_params
Create Date: 2026-12-01 09:35:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003_result_grader"
down_revision = "0002_job_params"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Nullable additions: no table rewrite on PostgreSQL, a plain ALTER TABLE ADD COLUMN on SQLite.
    op.add_column("results", sa.Column("grader", sa.String(length=16), nullable=True))
    op.add_column("results", sa.Column("grader_version", sa.String(length=100), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("grader_version")
        batch.drop_column("grader")
