"""results.thinking_capped: a sample whose thinking budget ran out, so vLLM closed its trace

Revision ID: 0014_thinking_capped
Revises: 0011_model_identity
Create Date: 2026-12-07 18:00:00

With a thinking budget (`--thinking-budget`, vLLM's `thinking_token_budget`) a capped trace still ends
with an answer: the sample is `stop` and its job succeeds, flagged here so that `stats` and exports can
tell it apart from a trace that closed on its own. Null when the run set no budget. Nullable, no default:
adding it rewrites no row.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0014_thinking_capped"
down_revision = "0011_model_identity"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("results", sa.Column("thinking_capped", sa.Boolean(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("results") as batch:
        batch.drop_column("thinking_capped")
