"""Every difference between the ledger's two databases, PostgreSQL (production) and SQLite (the embedded
default), in one module: no other module asks which database it talks to (docs/ARCHITECTURE.md,
"The ledger boundary"; tests/unit/test_ledger_boundary.py checks it).

The differences, and why each exists:
- Row locks. PostgreSQL writers run concurrently, so claims skip each other's rows (`FOR UPDATE SKIP
  LOCKED`) and multi-row writers lock in one order. SQLite's `BEGIN IMMEDIATE` transaction already
  serialises writers: no row locks there.
- Upserts and insert-or-ignore: both have `ON CONFLICT`, through different SQLAlchemy dialect modules.
- The clock: PostgreSQL's own (`clock_timestamp()`), so that clock skew between hosts cannot eat a
  lease; SQLite lives in one process tree on one host, whose clock it is.
- Counter shards: PostgreSQL spreads a run's counter rows over shards so that concurrent writers do not
  queue on one row; SQLite has one writer at a time.
- Keyset pages: PostgreSQL needs row-value bounds to use the index for the order (see keyset.py).
- Advisory locks (one migrator, one reconciler at a time): PostgreSQL's; SQLite's writers are serialised.
- Statistics: PostgreSQL plans from sampled statistics that a bulk load makes stale; SQLite's planner
  needs none here.
- Read-only sessions and batch migrations (SQLite cannot ALTER most columns in place).
- JIT compilation: PostgreSQL's, off for the ledger's connections (its queries are short index walks).
"""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVarTuple

from sqlalchemy import Connection, Engine, Select, create_engine, event, text
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session

_POSTGRESQL = "postgresql"
_Row = TypeVarTuple("_Row")
_POSTGRES_NOW = text("SELECT clock_timestamp() AT TIME ZONE 'utc'")


def create_ledger_engine(url: str, **kwargs: Any) -> Engine:
    """An engine for `url`. SQLite (the embedded default) runs in WAL mode with `BEGIN IMMEDIATE`
    transactions, so that concurrent writers queue on the busy timeout instead of failing on a lock
    upgrade; its file's folder is created. PostgreSQL needs only connection checks."""
    parsed = make_url(url)
    if parsed.get_backend_name() != "sqlite":
        kwargs.setdefault("pool_pre_ping", True)
        engine = create_engine(url, **kwargs)
        if parsed.get_backend_name() == _POSTGRESQL:
            event.listen(engine, "connect", _postgres_on_connect)
        return engine
    if parsed.database and parsed.database != ":memory:":
        Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(url, connect_args={"timeout": 60, "check_same_thread": False}, **kwargs)
    event.listen(engine, "connect", _sqlite_on_connect)
    event.listen(engine, "begin", _sqlite_on_begin)
    return engine


def _postgres_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # No JIT: the ledger's queries are short index walks, and on statistics that a run has outgrown the
    # planner's cost estimate passes jit_above_cost: a 50-row page then spent 1.3 s compiling (measured).
    with dbapi_connection.cursor() as cursor:
        cursor.execute("SET jit = off")
    dbapi_connection.commit()


def _sqlite_on_connect(dbapi_connection: Any, _record: Any) -> None:
    # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=60000")
    cursor.close()


def _sqlite_on_begin(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN IMMEDIATE")


def _postgres(bind: Engine | Connection | Session) -> bool:
    engine = bind.get_bind() if isinstance(bind, Session) else bind
    return engine.dialect.name == _POSTGRESQL


def lock_for_claim(stmt: Select[*_Row], session: Session, *, of: Any) -> Select[*_Row]:
    """`stmt` with its rows of `of` locked, skipping rows another claimer holds (PostgreSQL)."""
    if _postgres(session):
        return stmt.with_for_update(of=of, skip_locked=True)
    return stmt


def lock_for_update(stmt: Select[*_Row], session: Session, *, key_share: bool = False) -> Select[*_Row]:
    """`stmt` with its rows locked until the transaction ends (PostgreSQL); `key_share`: the weaker
    `FOR NO KEY UPDATE` that an UPDATE takes anyway."""
    if _postgres(session):
        return stmt.with_for_update(key_share=key_share)
    return stmt


def insert_for(session: Session, model: Any) -> Any:
    """An INSERT of `model` that supports `on_conflict_do_nothing` / `on_conflict_do_update`."""
    return (postgresql if _postgres(session) else sqlite).insert(model)


def insert_ignoring_duplicates(session: Session, model: Any, *, constraint: str, columns: list[str]) -> Any:
    """An INSERT of `model` that skips rows conflicting on the unique `constraint` over `columns`."""
    if _postgres(session):
        return postgresql.insert(model).on_conflict_do_nothing(constraint=constraint)
    return sqlite.insert(model).on_conflict_do_nothing(index_elements=columns)


def clock_now(session: Session) -> datetime | None:
    """The database server's time as naive UTC, or None where the host's clock is the database's."""
    if not _postgres(session):
        return None
    now = session.scalar(_POSTGRES_NOW)
    if not isinstance(now, datetime):
        raise RuntimeError(f"the database returned {now!r} for its clock")
    return now


def counter_shard(session: Session, shards: int) -> int:
    """The counter shard this transaction adds its deltas to."""
    return random.randrange(shards) if _postgres(session) else 0


def pages_by_row_values(session: Session) -> bool:
    """Whether keyset pages bound the index's columns as row values (keyset.py says why)."""
    return _postgres(session)


@contextmanager
def advisory_lock(engine: Engine, key: int, *, wait: bool) -> Iterator[bool]:
    """Hold the database-wide lock `key` for the block; yields whether it is held (always, with `wait`).
    SQLite serialises its writers already: the block always runs."""
    if not _postgres(engine):
        yield True
        return
    with engine.connect() as connection:
        if wait:
            connection.execute(text("SELECT pg_advisory_lock(:k)"), {"k": key})
            got = True
        else:
            got = bool(connection.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key}).scalar())
        try:
            yield got
        finally:
            if got:
                connection.execute(text("SELECT pg_advisory_unlock(:k)"), {"k": key})
            connection.commit()


def analyze_jobs_if_grown(session: Session, *, inserted: int, growth: float) -> bool:
    """ANALYZE `jobs` when `inserted` rows grew it by more than `growth` of its size, or it was never
    analysed (PostgreSQL plans from sampled statistics); whether it ran."""
    if inserted <= 0 or not _postgres(session):
        return False
    estimated = float(session.scalar(text("SELECT reltuples FROM pg_class WHERE oid = 'jobs'::regclass")) or -1)
    if estimated >= 0 and inserted <= growth * estimated:
        return False
    session.execute(text("ANALYZE jobs"))
    return True


def analyze_changed_tables(session: Session, *, tables: Sequence[str], fraction: float, floor: int) -> list[str]:
    """ANALYZE each of `tables` that PostgreSQL's own counters say changed by more than `fraction` of its
    rows (and at least `floor` rows) since its last ANALYZE, or that was never analysed; return their
    names. One read of `pg_stat_user_tables`, and ANALYZE samples a fixed number of rows: the cost does not
    grow with the tables. (Autovacuum would do this too, but only past 10% of a table's rows, and it may
    be off.)"""
    if not _postgres(session):
        return []
    rows = session.execute(
        text(
            "SELECT relname, n_live_tup, n_mod_since_analyze, last_analyze IS NULL AND last_autoanalyze IS NULL "
            "FROM pg_stat_user_tables WHERE schemaname = current_schema() AND relname = ANY(:tables)"
        ),
        {"tables": list(tables)},
    ).all()
    stale = [
        str(name)
        for name, live, changed, never in rows
        if changed >= floor and (never or changed > fraction * max(int(live), 1))
    ]
    for name in stale:
        session.execute(text(f'ANALYZE "{name}"'))
    return stale


def stages_rows_by_copy(session: Session) -> bool:
    """Whether a submit streams its rows into a temporary table by COPY inside one transaction
    (PostgreSQL); elsewhere rows are inserted in chunks after a validating pass."""
    return _postgres(session)


def batch_migrations(connection: Connection) -> bool:
    """Whether Alembic must rebuild tables to alter them (SQLite's limited ALTER TABLE)."""
    return not _postgres(connection)


def make_read_only(engine: Engine) -> Engine:
    """`engine` made read-only. SQLite: transactions start deferred (a WAL snapshot, no lock: a reader
    that took the writers' `BEGIN IMMEDIATE` would queue behind the workers and stall them) on a
    `query_only` connection. PostgreSQL: every transaction is `READ ONLY`."""
    if _postgres(engine):
        return engine.execution_options(postgresql_readonly=True)
    event.remove(engine, "begin", _sqlite_on_begin)
    event.listen(engine, "begin", _sqlite_begin_deferred)
    event.listen(engine, "connect", _sqlite_query_only)
    return engine


def _sqlite_begin_deferred(connection: Any) -> None:
    connection.exec_driver_sql("BEGIN DEFERRED")


def _sqlite_query_only(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA query_only=ON")
    cursor.close()
