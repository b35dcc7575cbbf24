"""the Batch API's files and batches

Revision ID: 0005_batch_api
Revises: 0004_run_counts
Create Date: 2026-12-01 10:40:00

- `api_files`: uploaded batch input files and batches' output and error files (bytes on disk).
- `api_batches`: a batch of the OpenAI-compatible API, the run it became and its output files.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005_batch_api"
down_revision = "0004_run_counts"
branch_labels = None
depends_on = None

_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "api_files",
        sa.Column("id", _ID, nullable=False),
        sa.Column("filename", sa.String(length=500), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("bytes", sa.BigInteger(), nullable=False),
        sa.Column("path", sa.Text(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "api_batches",
        sa.Column("id", _ID, nullable=False),
        sa.Column("run_id", _ID, nullable=True),
        sa.Column("input_file_id", sa.BigInteger(), nullable=False),
        sa.Column("endpoint", sa.String(length=100), nullable=False),
        sa.Column("completion_window", sa.String(length=16), nullable=False),
        sa.Column("metadata", sa.JSON(), nullable=True),
        sa.Column("errors", sa.JSON(), nullable=True),
        sa.Column("output_file_id", sa.BigInteger(), nullable=True),
        sa.Column("error_file_id", sa.BigInteger(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("failed_at", sa.DateTime(), nullable=True),
        sa.Column("finalizing_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["runs.id"], ondelete="SET NULL"),
        sa.PrimaryKeyConstraint("id"),
    )


def downgrade() -> None:
    op.drop_table("api_batches")
    op.drop_table("api_files")
