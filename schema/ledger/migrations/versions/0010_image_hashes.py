"""attempts.image_hashes: the SHA-256 of each image's bytes as the worker read them; jobs.source_row: the
number of the source row a job came from

Revision ID: 0010_image_hashes
Revises: 0009_submit_rejects
Create Date: 2026-12-07 18:10:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0010_image_hashes"
down_revision = "0009_submit_rejects"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable addition: no table rewrite on PostgreSQL, a plain ALTER TABLE ADD COLUMN on SQLite.
    op.add_column("attempts", sa.Column("image_hashes", sa.JSON(), nullable=True))
    op.add_column("jobs", sa.Column("source_row", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("source_row")
    with op.batch_alter_table("attempts") as batch:
        batch.drop_column("image_hashes")
