"""Read-only access to the ledger for the browser: it never writes, and never holds a writer's lock."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, event
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.ledger.database import _sqlite_on_begin, make_engine, make_session_factory


def open_readonly_ledger(url: str) -> tuple[Engine, sessionmaker[Session]]:
    """Engine and sessions for `url` whose transactions are read-only (refused writes raise).

    SQLite: the ledger's writers start with `BEGIN IMMEDIATE`, which takes the write lock; a reader that
    did the same would queue behind the workers and stall them while a page renders. Here transactions
    start deferred (a WAL snapshot, no lock) and the connection is `query_only`.
    PostgreSQL: every transaction is `READ ONLY`.
    """
    engine = make_engine(url)
    if engine.dialect.name == "sqlite":
        event.remove(engine, "begin", _sqlite_on_begin)
        event.listen(engine, "begin", _sqlite_begin_deferred)
        event.listen(engine, "connect", _sqlite_query_only)
        return engine, make_session_factory(engine)
    readonly = engine.execution_options(postgresql_readonly=True)
    return readonly, make_session_factory(readonly)


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN DEFERRED")


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()
