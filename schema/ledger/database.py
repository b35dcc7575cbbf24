"""The database seam: engine and session factories, and the schema kept at Alembic's head. What differs
between PostgreSQL and SQLite is in dialect.py."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.ledger.dialect import advisory_lock, create_ledger_engine, make_read_only

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
# Any constant will do: it only has to be the same in every vlmbatch process.
_MIGRATION_LOCK_KEY = 0x766C6D62


def make_engine(url: str, **kwargs: Any) -> Engine:
    """Build an engine for `url` (dialect.create_ledger_engine)."""
    return create_ledger_engine(url, **kwargs)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """One session in one transaction: committed on success, rolled back on any error."""
    with sessions() as session, session.begin():
        yield session


def alembic_config(engine: Engine) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.attributes["engine"] = engine
    return config


def current_revision(engine: Engine) -> str | None:
    with engine.connect() as connection:
        return MigrationContext.configure(connection).get_current_revision()


def head_revision(engine: Engine) -> str | None:
    return ScriptDirectory.from_config(alembic_config(engine)).get_current_head()


def upgrade(engine: Engine) -> None:
    """Bring the schema to Alembic's head (`vlmbatch db upgrade`). Safe to call from many processes."""
    with advisory_lock(engine, _MIGRATION_LOCK_KEY, wait=True):
        if current_revision(engine) != head_revision(engine):
            command.upgrade(alembic_config(engine), "head")


def ensure_schema(engine: Engine) -> None:
    """Upgrade when behind; a no-op costing one query when at head."""
    if current_revision(engine) != head_revision(engine):
        upgrade(engine)


def open_ledger(url: str, *, auto_migrate: bool = True) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and session factory for the ledger at `url`, its schema brought to head if asked."""
    engine = make_engine(url)
    if auto_migrate:
        ensure_schema(engine)
    return engine, make_session_factory(engine)


def open_readonly_ledger(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and sessions for `url` whose transactions are read-only (refused writes raise), and never
    hold a writer's lock (dialect.make_read_only): the browser's pages read the ledger this way."""
    engine = make_read_only(make_engine(url))
    return engine, make_session_factory(engine)
