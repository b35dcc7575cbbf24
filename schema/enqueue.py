"""Bulk, idempotent insertion of jobs: a job already in the run (same images and question) is skipped."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Insert, insert, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from schema.models import JobSpec
from schema.tables import Job, utcnow


def insert_jobs(session: Session, *, run_id: int, specs: Sequence[JobSpec]) -> list[int]:
    """Insert the jobs of `specs` that the run does not hold yet; return the new jobs' ids.

    Duplicates within `specs` and against the ledger are skipped (ON CONFLICT DO NOTHING on the
    (run, input_key) unique constraint), so resubmitting a source adds nothing.
    """
    if not specs:
        return []
    now = utcnow()
    rows: dict[str, dict[str, object]] = {}
    for spec in specs:
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
                "state": "queued",
                "attempt_count": 0,
                "attempt_base": 0,
                "accepted_samples": 0,
                "transient_failures": 0,
                "created_at": now,
                "queued_at": now,
            },
        )
    dialect = session.get_bind().dialect.name
    table = Job.__table__
    stmt: Insert
    if dialect == "postgresql":
        stmt = postgresql.insert(Job).on_conflict_do_nothing(constraint="uq_jobs_run_input")
    elif dialect == "sqlite":
        stmt = sqlite.insert(Job).on_conflict_do_nothing(index_elements=["run_id", "input_key"])
    else:  # other databases: check first, then insert
        existing = set(
            session.scalars(select(Job.input_key).where(Job.run_id == run_id, Job.input_key.in_(list(rows))))
        )
        stmt = insert(Job)
        rows = {k: v for k, v in rows.items() if k not in existing}
        if not rows:
            return []
    result = session.execute(stmt.returning(table.c.id), list(rows.values()))
    return sorted(row[0] for row in result)
