"""jobs.params: a job's own request settings (system prompt, per-row sampling, answer format)

Revision ID: 0002_job_params
Revises: 0001
Create Date: 2026-12-01 09:30:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002_job_params"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("jobs", sa.Column("params", sa.JSON(), nullable=True))


def downgrade() -> None:
    op.drop_column("jobs", "params")
