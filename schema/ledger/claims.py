"""Claiming jobs: each claim opens a new attempt, fences the job to it and gives the worker a lease.

A job is claimable when it is `queued` (and past any retry backoff). Expired leases are not taken over
here: the reconciler turns them back into `queued` first, so lease expiry has one owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import Select, Table, and_, event, func, insert, select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.grading.choice import parse_options
from vlmbatch.schema.ledger.checkpoints import Checkpoint
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import lock_for_claim
from vlmbatch.schema.ledger.heads import SWEEP_SECONDS, ClaimWalk, Cursors, claimable_run, past_backoff
from vlmbatch.schema.ledger.keyset import Keyset
from vlmbatch.schema.ledger.shares import ActiveRun, active_runs, allocate, join, serves, store_offsets
from vlmbatch.schema.ledger.tables import Attempt, Job, Run

# A claimer reads its queue's active runs again after this many claims at most (a priority or weight
# changed, a run resumed): between reads it keeps the shares by its own claims.
REFRESH_CLAIMS = 16


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
    # The job's checkpoint, which this attempt may continue (schema.ledger.checkpoints.checkpoints_of).
    checkpoint: Checkpoint | None = None


def _claimable(now: datetime) -> Any:
    return and_(Job.state == JobState.QUEUED.value, past_backoff(now))


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
        stmt = queued.page(stmt.where(past_backoff(now), claimable_run(run_id)), session=session)
    else:
        stmt = stmt.where(_claimable(now)).order_by(Job.id)
    jobs = list(session.scalars(_lock(stmt.limit(limit), session)))
    return _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)


@dataclass
class QueueClaimer:
    """Claims jobs of one queue's runs for a claim token (schema/contracts/tokens.py): the highest priority
    first, a priority shared by weight (schema.ledger.shares), each run's oldest claimable jobs.

    It keeps the queue's active runs from their counters and reads them again every REFRESH_CLAIMS claims,
    when a run came up short, or when a run was created since; in between it advances the shares by its
    own claims. A claim costs two short index ranges per run it takes from (its requeued jobs, and its
    never-claimed jobs after this claimer's cursor: schema.ledger.heads), at most RUNS_PER_CLAIM of them
    while they have jobs. Keep one claimer for the worker's life: its cursors are what keeps a claim's
    walk short; a new one walks each run from the head once."""

    queue: str
    model: str | None = None
    fingerprint: str | None = None
    runs: list[ActiveRun] = field(default_factory=list)
    _claims_since_read: int = REFRESH_CLAIMS
    _newest_run: int | None = None
    sweep_seconds: float = SWEEP_SECONDS
    _cursors: Cursors = field(default_factory=Cursors)

    @property
    def open_runs(self) -> list[int]:
        return [r.run_id for r in self.runs]

    def claim(self, session: Session, *, limit: int, worker: str, lease_seconds: float) -> list[ClaimedJob]:
        if limit <= 0:
            return []
        now = database_now(session)
        newest = session.scalar(select(func.max(Run.id)))
        joined: list[ActiveRun] = []
        if self._claims_since_read >= REFRESH_CLAIMS or newest != self._newest_run:
            joined = self._read(session, newest)
        self._claims_since_read += 1
        saved = self._cursors.copy()
        walk = ClaimWalk(self._cursors, now, self.sweep_seconds)
        jobs, short = self._take(session, walk, allocate(self.runs, limit))
        if len(jobs) < limit and (short or all(r.queued <= 0 for r in self.runs)):
            # Runs ran dry (or the claimer took all it knew of) or their jobs back off: read them again and
            # fill up from the others, in turn.
            joined += self._read(session, newest)
            rest = [r for r in self.runs if r.run_id not in short]
            for run, _ in allocate(rest, sum(r.queued for r in rest)):
                if len(jobs) >= limit:
                    break
                more, _ = self._take(session, walk, [(run, min(run.queued, limit - len(jobs)))])
                jobs += more
        claimed = _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)
        store_offsets(session, joined)
        walk.advance_cursors()
        # Should the transaction roll back, the jobs passed are queued again: the cursors go back too.
        event.listen(session, "after_rollback", lambda _session: self._cursors.restore(saved), once=True)
        return claimed

    def _read(self, session: Session, newest: int | None) -> list[ActiveRun]:
        """Read the active runs again; return those that just joined (their offsets are to be stored)."""
        self.runs = active_runs(session, queue=self.queue, model=self.model, fingerprint=self.fingerprint)
        self._claims_since_read, self._newest_run = 0, newest
        return join(self.runs)

    @staticmethod
    def _take(session: Session, walk: ClaimWalk, plan: Sequence[tuple[ActiveRun, int]]) -> tuple[list[Job], set[int]]:
        """Up to the planned number of claimable jobs of each run, locked; and the runs found short."""
        jobs: list[Job] = []
        short: set[int] = set()
        wanted = {run.run_id: n for run, n in plan if n > 0}
        by_run = walk.take(session, wanted)
        for run, _ in plan:
            mine = sorted(by_run.get(run.run_id, []), key=lambda job: job.id)
            if len(mine) < wanted.get(run.run_id, 0):
                short.add(run.run_id)
            run.served += len(mine)
            run.queued -= len(mine)
            jobs += mine
        return jobs, short


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
