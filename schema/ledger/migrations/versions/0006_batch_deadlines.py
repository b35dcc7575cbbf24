"""Batch API deadlines and cancels before a run exists

Revision ID: 0006_batch_deadlines
Revises: 0005_batch_api
Create Date: 2026-12-01 12:20:00

- `api_batches.expires_at`: the batch's deadline (created + completion window), filled in for existing
  batches (their window was 24h, the only one accepted until now).
- `api_batches.expired_at`: when the deadline passed with work unfinished (the batch is `expired`).
- `api_batches.cancelling_at`: when a cancel was asked, which can be before the batch has a run
  (`validating`).
"""

from __future__ import annotations

from datetime import timedelta

import sqlalchemy as sa
from alembic import op

revision = "0006_batch_deadlines"
down_revision = "0005_batch_api"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("api_batches") as batch:
        batch.add_column(sa.Column("expires_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("expired_at", sa.DateTime(), nullable=True))
        batch.add_column(sa.Column("cancelling_at", sa.DateTime(), nullable=True))
    batches = sa.table(
        "api_batches",
        sa.column("id", sa.BigInteger()),
        sa.column("created_at", sa.DateTime()),
        sa.column("expires_at", sa.DateTime()),
    )
    connection = op.get_bind()
    # Row by row in Python: date arithmetic differs between SQLite and PostgreSQL, and batches are few.
    for row_id, created_at in connection.execute(sa.select(batches.c.id, batches.c.created_at)).all():
        connection.execute(
            batches.update().where(batches.c.id == row_id).values(expires_at=created_at + timedelta(hours=24))
        )


def downgrade() -> None:
    with op.batch_alter_table("api_batches") as batch:
        batch.drop_column("cancelling_at")
        batch.drop_column("expired_at")
        batch.drop_column("expires_at")
