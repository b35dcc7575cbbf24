"""The migrations build exactly the schema the SQLAlchemy models declare: Alembic's autogenerate comparison
of a freshly migrated database against the models finds nothing to change, on SQLite and PostgreSQL."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from vlmbatch.schema.ledger.database import make_engine, upgrade
from vlmbatch.schema.ledger.tables import Base


def test_migrated_database_matches_the_models(database_url: str) -> None:
    engine = make_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as connection:
            context = MigrationContext.configure(
                connection, opts={"compare_type": True, "compare_server_default": True}
            )
            differences = compare_metadata(context, Base.metadata)
    finally:
        engine.dispose()
    assert differences == []
