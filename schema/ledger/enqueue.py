"""Bulk, idempotent insertion of jobs: a job already in the run (same images and question) is skipped."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.models import JobSpec
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import analyze_changed_tables, analyze_jobs_if_grown, insert_ignoring_duplicates
from vlmbatch.schema.ledger.tables import Job, Run


def insert_jobs(
    session: Session, *, run_id: int, specs: Sequence[JobSpec], source_rows: Sequence[int] | None = None
) -> list[int]:
    """Insert the jobs of `specs` that the run does not hold yet; return the new jobs' ids. `source_rows`
    gives each spec's source row number (`jobs.source_row`), when known.

    Duplicates within `specs` and against the ledger are skipped (ON CONFLICT DO NOTHING on the
    (run, input_key) unique constraint), so resubmitting a source adds nothing.
    """
    if not specs:
        return []
    now = database_now(session)
    rows: dict[str, dict[str, object]] = {}
    for n, spec in enumerate(specs):
        key = spec.input_key()
        rows.setdefault(
            key,
            {
                "run_id": run_id,
                "input_key": key,
                "images": list(spec.images),
                "question": spec.question,
                "reference": spec.reference,
                "meta": spec.meta,
                "source_row": source_rows[n] if source_rows is not None else None,
                "params": spec.params.model_dump(mode="json", exclude_none=True) if spec.params else None,
                "state": "queued",
                "attempt_count": 0,
                "attempt_base": 0,
                "accepted_samples": 0,
                "transient_failures": 0,
                "created_at": now,
                "queued_at": now,
            },
        )
    table = Job.__table__
    stmt = insert_ignoring_duplicates(session, Job, constraint="uq_jobs_run_input", columns=["run_id", "input_key"])
    result = session.execute(stmt.returning(table.c.id), list(rows.values()))
    ids = sorted(row[0] for row in result)
    _count_queued(session, run_id, len(ids))
    return ids


def _count_queued(session: Session, run_id: int, n: int) -> None:
    deltas = CountDeltas()
    deltas.add(Bucket.of(run_id, JobState.QUEUED.value), n)
    deltas.apply(session)


# PostgreSQL's fast path: rows are COPYed into a temporary table, then moved into `jobs` by one
# INSERT ... SELECT that skips the jobs the run already holds. COPY streams rows at C speed, where
# multi-row INSERTs spend most of their time building and parsing SQL.
_STAGING = "vlmbatch_submit_staging"
_CREATE_STAGING = (
    f"CREATE TEMP TABLE {_STAGING} (input_key text, images text, question text, reference text, "
    "metadata text, params text, source_row bigint) ON COMMIT DROP"
)
_MOVE_STAGED = f"""
INSERT INTO jobs (run_id, input_key, images, question, reference, metadata, params, source_row, state,
                  attempt_count, attempt_base, transient_failures, accepted_samples, created_at, queued_at)
SELECT %(run_id)s, input_key, images::json, question, reference, metadata::json, params::json, source_row, 'queued',
       0, 0, 0, 0,
       now() AT TIME ZONE 'utc', clock_timestamp() AT TIME ZONE 'utc'
FROM {_STAGING}
ON CONFLICT ON CONSTRAINT uq_jobs_run_input DO NOTHING
"""


# input_key, images (JSON), question, reference, metadata (JSON), params (JSON), source row
StagedRow = tuple[str, str, str, str | None, str | None, str | None, int | None]


def staged_row(spec: JobSpec, source_row: int | None = None) -> StagedRow:
    """A job spec (from source row number `source_row`) as the columns COPY writes into the staging table."""
    meta = json.dumps(spec.meta, ensure_ascii=False) if spec.meta is not None else None
    params = spec.params.canonical() if spec.params is not None else None
    return spec.input_key(), _json_list(spec.images), spec.question, spec.reference, meta, params, source_row


def _json_list(items: Sequence[str]) -> str:
    # The common case, one plain URI, without the JSON encoder (a third of the cost of a staged row).
    if len(items) == 1 and _PLAIN.fullmatch(items[0]):
        return f'["{items[0]}"]'
    return json.dumps(list(items), ensure_ascii=False)


# Characters that need no escaping inside a JSON string.
_PLAIN = re.compile(r"[^\x00-\x1f\"\\]*")


class PostgresStaging:
    """Stages a whole submit in one transaction (PostgreSQL only): `copy` streams rows into a temporary
    table, `move` inserts those the run does not hold yet, `count` adds them to the run counters (once, at
    the end). Rolling the transaction back leaves nothing."""

    def __init__(self, session: Session) -> None:
        self._session = session
        self._inserted: dict[int, int] = {}
        raw = session.connection().connection.driver_connection
        if raw is None:
            raise RuntimeError("no database connection")
        self._raw: Any = raw
        with self._raw.cursor() as cursor:
            cursor.execute(_CREATE_STAGING)

    def copy(self, rows: Iterable[StagedRow]) -> int:
        count = 0
        with self._raw.cursor() as cursor:
            columns = "input_key, images, question, reference, metadata, params, source_row"
            with cursor.copy(f"COPY {_STAGING} ({columns}) FROM STDIN") as copy:
                for row in rows:
                    copy.write_row(row)
                    count += 1
        return count

    def move(self, run_id: int) -> int:
        """Insert the staged jobs the run does not hold yet, empty the staging table; return how many
        were inserted."""
        with self._raw.cursor() as cursor:
            cursor.execute(_MOVE_STAGED, {"run_id": run_id})
            inserted = int(cursor.rowcount)
            cursor.execute(f"TRUNCATE {_STAGING}")
        self._inserted[run_id] = self._inserted.get(run_id, 0) + inserted
        return inserted

    def count(self) -> None:
        """Add the moved jobs to the run counters: once, last, so that the submit's transaction holds
        a counter row for moments, not for the whole load (workers claiming the run add to them too)."""
        for run_id, inserted in self._inserted.items():
            _count_queued(self._session, run_id, inserted)
        self._inserted.clear()


def mark_published(session: Session, *, run_id: int) -> None:
    """Note that a submit just committed or published jobs of the run (the reconciler's grace counts
    from the latest mark, so a long submit's jobs are not taken for lost while it still publishes)."""
    session.execute(update(Run).where(Run.id == run_id).values(published_at=database_now(session)))


def mark_published_named(session: Session, *, run_name: str) -> None:
    """`mark_published` for the run called `run_name`, if it exists yet."""
    session.execute(update(Run).where(Run.name == run_name).values(published_at=database_now(session)))


# A bulk load that grows `jobs` by more than this fraction refreshes its statistics at once: autovacuum
# may be off, and lags a bulk load when on; stale statistics turned a 0.1 ms claim into 500 ms.
ANALYZE_GROWTH = 0.1


# Tables the workers change row by row all run long, and how much change makes their statistics stale
# for the hot queries' plans: a run 4% done already turned a 10 ms page into 500 ms on stale statistics.
MIDRUN_TABLES = ("jobs", "attempts", "results")
MIDRUN_STALE_FRACTION = 0.02
MIDRUN_STALE_FLOOR = 1000


def refresh_midrun_statistics(session: Session) -> list[str]:
    """ANALYZE the tables that finished attempts changed past MIDRUN_STALE_FRACTION of their rows since
    their last ANALYZE (the maintenance pass calls this); return their names."""
    return analyze_changed_tables(
        session, tables=MIDRUN_TABLES, fraction=MIDRUN_STALE_FRACTION, floor=MIDRUN_STALE_FLOOR
    )


def refresh_statistics(session: Session, *, inserted: int) -> bool:
    """ANALYZE `jobs` (PostgreSQL) when `inserted` rows grew it by more than ANALYZE_GROWTH, or it was
    never analysed; return whether it ran. ANALYZE reads a fixed-size sample, so it costs about the
    same at 10^7 rows as at 10^5."""
    return analyze_jobs_if_grown(session, inserted=inserted, growth=ANALYZE_GROWTH)
