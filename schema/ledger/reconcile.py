"""Taking back jobs whose lease expired: their worker died, froze or lost the database.

A running job's lease is alive while its claim's own lease (`jobs.lease_expires_at`) or its worker's
heartbeat row (`workers.expires_at`, schema/ledger/liveness.py) is ahead of the database's clock. Once both
lapsed, its attempt is marked `abandoned` and the job returns to `queued`, or fails for good once it has
used the run's attempts (a poison job that keeps killing workers). A live lease is never touched.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import exists, select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import lock_for_claim
from vlmbatch.schema.ledger.tables import Attempt, Job, Run, Worker

EXPIRED = "lease held by {owner} expired (worker died, froze or lost the database)"


@dataclass
class Requeued:
    """Jobs returned to the queue, by queue name (to republish), and jobs failed for good."""

    by_queue: dict[str, list[int]] = field(default_factory=dict)
    failed: list[int] = field(default_factory=list)

    @property
    def count(self) -> int:
        return sum(len(ids) for ids in self.by_queue.values())


def lease_lapsed(now: datetime) -> Any:
    """A running job's claim lease and its worker's heartbeat have both lapsed (no row: never beat, or
    pruned long after it stopped)."""
    worker_alive = exists().where(Worker.name == Job.lease_owner, Worker.expires_at >= now)
    return Job.lease_expires_at < now, ~worker_alive


def requeue_expired_leases(session: Session, *, run_id: int | None = None, limit: int = 10_000) -> Requeued:
    now = database_now(session)
    stmt = (
        select(Job, Run.queue, Run.settings)
        .join(Run, Run.id == Job.run_id)
        .where(Job.state == JobState.RUNNING.value, *lease_lapsed(now))
        # ix_jobs_running_attempt's order: it reads the running jobs only (ORDER BY id would tempt the
        # planner into walking the primary key through every finished job).
        .order_by(Job.current_attempt_id)
        .limit(limit)
    )
    if run_id is not None:
        stmt = stmt.where(Job.run_id == run_id)
    stmt = lock_for_claim(stmt, session, of=Job)
    return take_back(session, session.execute(stmt).tuples(), now=now, reason=EXPIRED)


def take_back(session: Session, rows: Iterable[tuple[Job, str, Any]], *, now: datetime, reason: str) -> Requeued:
    """Abandon the current attempts of `rows` (running jobs, locked by the caller, with their run's queue
    and settings) and requeue the jobs, or fail those out of attempts. `reason` may name `{owner}`."""
    outcome = Requeued()
    deltas = CountDeltas()
    for job, queue, settings in rows:
        max_attempts = RunSettings.model_validate(settings).max_attempts
        message = reason.format(owner=job.lease_owner)
        if job.current_attempt_id is not None:
            session.execute(
                update(Attempt)
                .where(Attempt.id == job.current_attempt_id, Attempt.outcome == AttemptOutcome.RUNNING.value)
                .values(outcome=AttemptOutcome.ABANDONED.value, finished_at=now, error_message=message)
                .execution_options(synchronize_session=False)
            )
        job.lease_owner = None
        job.lease_expires_at = None
        if job.attempt_count - job.attempt_base >= max_attempts:
            job.state = JobState.FAILED.value
            job.error_type = ErrorType.INTERNAL.value
            job.error_message = f"gave up after {job.attempt_count} attempts; last: {message}"
            job.finished_at = now
            outcome.failed.append(job.id)
        else:
            job.state = JobState.QUEUED.value
            job.queued_at = now
            outcome.by_queue.setdefault(queue, []).append(job.id)
        deltas.move(Bucket.of(job.run_id, JobState.RUNNING.value), Bucket.of(job.run_id, job.state, job.error_type))
    session.flush()
    deltas.apply(session)
    for job_ids in outcome.by_queue.values():
        job_ids.sort()
    outcome.failed.sort()
    return outcome
