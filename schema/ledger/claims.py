"""Claiming jobs: each claim opens a new attempt, fences the job to it and gives the worker a lease.

A job is claimable when it is `queued` (and past any retry backoff). Expired leases are not taken over
here: the reconciler turns them back into `queued` first, so lease expiry has one owner.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import (
    ARRAY,
    BigInteger,
    Select,
    Table,
    and_,
    bindparam,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    true,
    tuple_,
    update,
)
from sqlalchemy.orm import Session, aliased

from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.grading.choice import parse_options
from vlmbatch.schema.ledger.checkpoints import Checkpoint
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import claims_runs_at_once, lock_for_claim
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
        stmt = queued.page(stmt.where(_past_backoff(now), _claimable_run(run_id)), session=session)
    else:
        stmt = stmt.where(_claimable(now)).order_by(Job.id)
    jobs = list(session.scalars(_lock(stmt.limit(limit), session)))
    return _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)


def _claimable_run(run_id: int) -> Any:
    # The run may still be claimed from: a pause takes effect at the next claim, whatever a claimer cached.
    return exists().where(Run.id == run_id, Run.held.is_(False), Run.paused_at.is_(None))


@dataclass
class QueueClaimer:
    """Claims jobs of one queue's runs for a claim token (schema/contracts/tokens.py): the highest priority
    first, a priority shared by weight (schema.ledger.shares), each run's oldest claimable jobs.

    It keeps the queue's active runs from their counters and reads them again every REFRESH_CLAIMS claims,
    when a run came up short, or when a run was created since; in between it advances the shares by its
    own claims. A claim costs one index range per run it takes from (ix_jobs_run_state_id), at most
    RUNS_PER_CLAIM of them while they have jobs."""

    queue: str
    model: str | None = None
    fingerprint: str | None = None
    runs: list[ActiveRun] = field(default_factory=list)
    _claims_since_read: int = REFRESH_CLAIMS
    _newest_run: int | None = None
    # The last job id each run gave to the claim in progress.
    _taken_up_to: dict[int, int] = field(default_factory=dict)

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
        self._taken_up_to = {}
        jobs, short = self._take(session, allocate(self.runs, limit), now)
        if len(jobs) < limit and (short or not self.runs):
            # Runs ran dry or their jobs back off: read them again and fill up from the others, in turn.
            joined += self._read(session, newest)
            rest = [r for r in self.runs if r.run_id not in short]
            for run, _ in allocate(rest, sum(r.queued for r in rest)):
                if len(jobs) >= limit:
                    break
                more, _ = self._take(session, [(run, min(run.queued, limit - len(jobs)))], now)
                jobs += more
        claimed = _open_attempts(session, jobs, worker=worker, lease_seconds=lease_seconds, now=now)
        store_offsets(session, joined)
        return claimed

    def _read(self, session: Session, newest: int | None) -> list[ActiveRun]:
        """Read the active runs again; return those that just joined (their offsets are to be stored)."""
        self.runs = active_runs(session, queue=self.queue, model=self.model, fingerprint=self.fingerprint)
        self._claims_since_read, self._newest_run = 0, newest
        return join(self.runs)

    def _take(
        self, session: Session, plan: Sequence[tuple[ActiveRun, int]], now: datetime
    ) -> tuple[list[Job], set[int]]:
        """Up to the planned number of claimable jobs of each run, locked; and the runs found short."""
        jobs: list[Job] = []
        short: set[int] = set()
        wanted = {run.run_id: n for run, n in plan if n > 0}
        if len(wanted) > 1 and claims_runs_at_once(session):
            taken = _heads_at_once(session, wanted, self._taken_up_to, now)
        else:
            taken = [job for run_id, n in wanted.items() for job in self._head(session, run_id, n, now)]
        by_run: dict[int, list[Job]] = {}
        for job in taken:
            by_run.setdefault(job.run_id, []).append(job)
        for run, _ in plan:
            mine = sorted(by_run.get(run.run_id, []), key=lambda job: job.id)
            if mine:
                self._taken_up_to[run.run_id] = mine[-1].id
            if len(mine) < wanted.get(run.run_id, 0):
                short.add(run.run_id)
            run.served += len(mine)
            run.queued -= len(mine)
            jobs += mine
        return jobs, short

    def _head(self, session: Session, run_id: int, wanted: int, now: datetime) -> list[Job]:
        """The run's next `wanted` claimable jobs, locked: one range of ix_jobs_run_state_id."""
        queued = Keyset([(Job.run_id, run_id), (Job.state, JobState.QUEUED.value)])
        stmt = select(Job).where(_past_backoff(now), _claimable_run(run_id))
        # After the jobs this claim took already: they are still `queued` (and locked by us) until the
        # claim's UPDATE.
        stmt = queued.page(stmt, session=session, after=self._taken_up_to.get(run_id))
        return list(session.scalars(_lock(stmt.limit(wanted), session)))


def _heads_at_once(session: Session, wanted: dict[int, int], after: dict[int, int], now: datetime) -> list[Job]:
    """PostgreSQL: the next claimable jobs of several runs in one statement (a claim shared among runs
    costs one round trip, not one per run): a LATERAL range of ix_jobs_run_state_id per run, each bounded
    on both sides as schema.ledger.keyset explains, locked with SKIP LOCKED."""
    # The plan as three arrays (unnest), not a VALUES list: one statement text for any plan, compiled once.
    runs = sorted(wanted)
    arrays = {
        "plan_runs": runs,
        "plan_wanted": [wanted[r] for r in runs],
        "plan_after": [after.get(r, 0) for r in runs],
    }
    plan = (
        func.unnest(*(bindparam(name, type_=ARRAY(BigInteger)) for name in arrays))
        .table_valued("run_id", "wanted", "after")
        .render_derived(name="plan")
    )
    queued = literal(JobState.QUEUED.value)
    head = (
        select(Job)
        .where(
            tuple_(Job.run_id, Job.state, Job.id) >= tuple_(plan.c.run_id, queued, plan.c.after + 1),
            tuple_(Job.run_id, Job.state) <= tuple_(plan.c.run_id, queued),
            _past_backoff(now),
            exists().where(Run.id == plan.c.run_id, Run.held.is_(False), Run.paused_at.is_(None)).correlate_except(Run),
        )
        .order_by(Job.run_id, Job.state, Job.id)
        .limit(plan.c.wanted)
        .with_for_update(skip_locked=True)
        .lateral("head")
    )
    return list(session.scalars(select(aliased(Job, head)).select_from(plan).join(head, true()), arrays))


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
