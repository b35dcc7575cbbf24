"""model identity: a run's model fingerprint, and the model each live worker serves

Revision ID: 0011_model_identity
Revises: 0010_image_hashes
Create Date: 2026-12-07 18:20:00

A run submitted with `--model ./fm` and a worker started with `--model /abs/fm` serve the same folder:
runs store a local model's resolved path and a fingerprint of its config and weight files
(schema/contracts/model_identity.py), and a worker claims runs whose model or fingerprint is its own.
Each worker's liveness row names its model, so that `status` can say when no live worker serves a run.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0011_model_identity"
down_revision = "0010_image_hashes"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("runs", sa.Column("model_fingerprint", sa.String(64), nullable=True))
    op.add_column("workers", sa.Column("model", sa.String(500), nullable=True))
    op.add_column("workers", sa.Column("model_fingerprint", sa.String(64), nullable=True))


def downgrade() -> None:
    op.drop_column("workers", "model_fingerprint")
    op.drop_column("workers", "model")
    op.drop_column("runs", "model_fingerprint")
