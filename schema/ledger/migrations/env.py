"""Alembic environment: runs against the engine vlmbatch hands in (schema.ledger.database.alembic_config)."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Engine

from vlmbatch.schema.ledger.dialect import batch_migrations
from vlmbatch.schema.ledger.tables import Base

engine = context.config.attributes.get("engine")
if not isinstance(engine, Engine):
    raise RuntimeError("run migrations through `vlmbatch db upgrade`, which passes the engine")

with engine.connect() as connection:
    context.configure(
        connection=connection,
        target_metadata=Base.metadata,
        render_as_batch=batch_migrations(connection),
        compare_type=True,
    )
    with context.begin_transaction():
        context.run_migrations()
    connection.commit()
