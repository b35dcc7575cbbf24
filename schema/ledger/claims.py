"""Claiming jobs: each claim opens a new attempt, fences the job to it and gives the worker a lease.

A job is claimable when it is `queued` (and past any retry backoff). Expired leases are not taken over
here: the reconciler turns them back into `queued` first, so lease expiry has one owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import ColumnElement, Select, Table, and_, func, insert, or_, select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.grading.choice import parse_options
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import lock_for_claim
from vlmbatch.schema.ledger.keyset import Keyset
from vlmbatch.schema.ledger.tables import Attempt, Job, Run, RunCount


@dataclass(frozen=True)
class ClaimedJob:
    """What a worker needs to run one attempt of a job."""

    job_id: int
    attempt_id: int
    attempt_number: int
    run_id: int
    images: tuple[str, ...]
    question: str
    reference: str | None
    overrides: dict[str, Any] | None
    queued_at: datetime
    claimed_at: datetime
    # Transient failures in a row before this attempt (drives the retry backoff and cap).
    transient_failures: int = 0
    # Attempts since the job was last (re)submitted, this one included (the run's attempt cap).
    attempts_used: int = 1
    # Graded-correct samples the job already has (accept-until-M runs).
    accepted_samples: int = 0
    # The job's own request settings (schema.contracts.models.JobParams as JSON), for every attempt.
    params: dict[str, Any] | None = None
    # The question's options, from the job's `options` metadata column (the choice grader reads them).
    options: tuple[str, ...] | None = None


def _claimable(now: datetime) -> Any:
    return and_(Job.state == JobState.QUEUED.value, _past_backoff(now))


def _past_backoff(now: datetime) -> Any:
    return or_(Job.not_before.is_(None), Job.not_before <= now)


def _lock(stmt: Select[Any], session: Session) -> Select[Any]:
    # Concurrent claimers skip each other's rows instead of queueing behind them.
    return lock_for_claim(stmt, session, of=Job)


def claim_jobs(
    session: Session,
    *,
    job_ids: Sequence[int],
    worker: str,
    lease_seconds: float,
    model: str | None = None,
    fingerprint: str | None = None,
) -> list[ClaimedJob]:
    """Claim those of `job_ids` that are claimable (and whose run serves `model`, when given)."""
    if not job_ids:
        return []
    now = database_now(session)
    stmt = select(Job).join(Run, Run.id == Job.run_id).where(Job.id.in_(list(job_ids)), _claimable(now))
    if model is not None:
        stmt = stmt.where(serves(model, fingerprint))
    jobs = list(session.scalars(_lock(stmt.order_by(Job.id), session)))
    return _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)


def claim_next(
    session: Session,
    *,
    limit: int,
    worker: str,
    lease_seconds: float,
    run_id: int | None = None,
    model: str | None = None,
    fingerprint: str | None = None,
) -> list[ClaimedJob]:
    """Claim up to `limit` claimable jobs, oldest first (the embedded worker's feed)."""
    if limit <= 0:
        return []
    now = database_now(session)
    stmt = select(Job).join(Run, Run.id == Job.run_id)
    if model is not None:
        stmt = stmt.where(serves(model, fingerprint))
    if run_id is not None:  # the run's queued jobs in id order, on ix_jobs_run_state_id (schema.ledger.keyset)
        queued = Keyset([(Job.run_id, run_id), (Job.state, JobState.QUEUED.value)])
        stmt = queued.page(stmt.where(_past_backoff(now)), session=session)
    else:
        stmt = stmt.where(_claimable(now)).order_by(Job.id)
    jobs = list(session.scalars(_lock(stmt.limit(limit), session)))
    return _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)


def serves(model: str, fingerprint: str | None) -> ColumnElement[bool]:
    """Runs a worker of `model` serves: those naming it, and with a fingerprint, those whose model is the
    same folder under another path (schema/contracts/model_identity.py)."""
    if fingerprint is None:
        return Run.model == model
    return or_(Run.model == model, Run.model_fingerprint == fingerprint)


def runs_with_queued_jobs(
    session: Session, *, queue: str, model: str | None = None, fingerprint: str | None = None
) -> list[int]:
    """The runs of `queue` (serving `model`, when given, and not held) that have queued jobs, oldest
    first, by their counters: ix_run_counts_state's rows of runs that ever had queued jobs, none per job."""
    stmt = (
        select(RunCount.run_id)
        .join(Run, Run.id == RunCount.run_id)
        .where(RunCount.state == JobState.QUEUED.value, Run.queue == queue, Run.held.is_(False))
        .group_by(RunCount.run_id)
        .having(func.sum(RunCount.jobs) > 0)
        .order_by(RunCount.run_id)
    )
    if model is not None:
        stmt = stmt.where(serves(model, fingerprint))
    return list(session.scalars(stmt))


@dataclass
class QueueClaimer:
    """Claims the oldest claimable jobs of one queue's runs for a claim token (schema/contracts/tokens.py).

    It remembers which runs had queued jobs, so that a claim costs one index range per run it takes from
    (ix_jobs_run_state_id) and looks the runs up again only when those come up short."""

    queue: str
    model: str | None = None
    fingerprint: str | None = None
    open_runs: list[int] = field(default_factory=list)

    def claim(self, session: Session, *, limit: int, worker: str, lease_seconds: float) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        now = database_now(session)
        jobs, drained = self._take(session, self.open_runs, limit, now)
        if len(jobs) < limit:
            self.open_runs = runs_with_queued_jobs(
                session, queue=self.queue, model=self.model, fingerprint=self.fingerprint
            )
            more, _ = self._take(session, [r for r in self.open_runs if r not in drained], limit - len(jobs), now)
            jobs += more
        return _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)

    @staticmethod
    def _take(session: Session, runs: Sequence[int], limit: int, now: datetime) -> tuple[list[Job], set[int]]:
        """Up to `limit` claimable jobs of `runs`, run by run, locked; and the runs found short of jobs."""
        jobs: list[Job] = []
        drained: set[int] = set()
        for run_id in runs:
            wanted = limit - len(jobs)
            if wanted <= 0:
                break
            queued = Keyset([(Job.run_id, run_id), (Job.state, JobState.QUEUED.value)])
            stmt = queued.page(select(Job).where(_past_backoff(now)), session=session)
            taken = list(session.scalars(_lock(stmt.limit(wanted), session)))
            if len(taken) < wanted:
                drained.add(run_id)
            jobs += taken
        return jobs, drained


def _open_attempts(
    session: Session, jobs: list[Job], *, worker: str, lease_seconds: float, now: datetime
) -> list[ClaimedJob]:
    if not jobs:
        return []
    # Core statements for the whole batch (one INSERT ... RETURNING, one executemany UPDATE): claiming
    # is on every job's path, and the ORM's per-object bookkeeping cost more than the SQL itself.
    attempt_ids = session.scalars(
        insert(cast(Table, Attempt.__table__)).returning(Attempt.__table__.c.id, sort_by_parameter_order=True),
        [
            {
                "job_id": job.id,
                "number": job.attempt_count + 1,
                "worker": worker,
                "outcome": AttemptOutcome.RUNNING.value,
                "overrides": job.overrides,
                "started_at": now,
            }
            for job in jobs
        ],
    ).all()
    expires = now + timedelta(seconds=lease_seconds)
    jobs_table = cast(Table, Job.__table__)
    attempts_table = cast(Table, Attempt.__table__)
    # One UPDATE for the batch: each job takes the attempt just opened for it (its next number).
    opened = (
        select(attempts_table.c.id)
        .where(attempts_table.c.job_id == jobs_table.c.id, attempts_table.c.number == jobs_table.c.attempt_count + 1)
        .scalar_subquery()
    )
    session.execute(
        update(jobs_table)
        .where(jobs_table.c.id.in_([job.id for job in jobs]))
        .values(
            state=JobState.RUNNING.value,
            current_attempt_id=opened,
            attempt_count=jobs_table.c.attempt_count + 1,
            lease_owner=worker,
            lease_expires_at=expires,
            overrides=None,
        )
    )
    deltas = CountDeltas()
    for job in jobs:
        deltas.move(Bucket.of(job.run_id, JobState.QUEUED.value), Bucket.of(job.run_id, JobState.RUNNING.value))
    deltas.apply(session)
    return [
        ClaimedJob(
            job_id=job.id,
            attempt_id=attempt_id,
            attempt_number=job.attempt_count + 1,
            run_id=job.run_id,
            images=tuple(job.images),
            question=job.question,
            reference=job.reference,
            overrides=job.overrides,
            queued_at=job.queued_at,
            claimed_at=now,
            transient_failures=job.transient_failures,
            attempts_used=job.attempt_count + 1 - job.attempt_base,
            accepted_samples=job.accepted_samples,
            params=job.params,
            options=parse_options((job.meta or {}).get("options")),
        )
        for job, attempt_id in zip(jobs, attempt_ids, strict=True)
    ]
