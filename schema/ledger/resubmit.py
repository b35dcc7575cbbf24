"""Selective resubmission and cancellation. Both only change job rows; attempts and results stay as
history, and a new attempt is opened when a worker claims the job again."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import ColumnElement, Update, and_, func, or_, select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.finish import CONTEXT, REPETITION
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.checkpoints import drop_checkpoints, final_checkpoint_tokens
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import lock_for_update
from vlmbatch.schema.ledger.locks import jobs_locked_in_order
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run

RESUBMITTABLE = (JobState.FAILED, JobState.TRUNCATED, JobState.CANCELLED, JobState.SUCCEEDED)
# Rows changed per statement, so that a million-job resubmit never builds one giant IN list.
_CHUNK = 5000


@dataclass(frozen=True)
class Selection:
    """Jobs a resubmit would take, grouped by (state, error type)."""

    job_ids: list[int]
    groups: dict[tuple[str, str | None], int]


def _filter(run_id: int, states: Sequence[JobState], error_types: Sequence[str]) -> ColumnElement[bool]:
    condition = and_(Job.run_id == run_id, Job.state.in_([s.value for s in states]))
    if error_types:
        # Error types narrow the failed jobs; jobs in other selected states (e.g. truncated) stay selected.
        condition = and_(condition, or_(Job.state != JobState.FAILED.value, Job.error_type.in_(list(error_types))))
    return condition


def select_for_resubmit(
    session: Session, *, run_id: int, states: Sequence[JobState], error_types: Sequence[str] = ()
) -> Selection:
    where = _filter(run_id, states, error_types)
    # Sorted here, not by ORDER BY id: that order tempts PostgreSQL into walking the whole primary key.
    job_ids = sorted(session.scalars(select(Job.id).where(where)))
    groups = {
        (state, error_type): n
        for state, error_type, n in session.execute(
            select(Job.state, Job.error_type, func.count()).where(where).group_by(Job.state, Job.error_type)
        )
    }
    return Selection(job_ids=job_ids, groups=groups)


@dataclass(frozen=True)
class Truncated:
    """The truncated jobs of a selection by how they ended (docs/ARCHITECTURE.md, "Outcome contract"):
    `length` ones continue from their kept tokens (`kept`: the most any of them holds), `context` ones
    cannot be continued, `repetition` ones only restart."""

    length: list[int]
    context: list[int]
    repetition: list[int]
    kept: int

    @property
    def refused(self) -> set[int]:
        return set(self.context)


def truncated_jobs(session: Session, *, job_ids: Sequence[int]) -> Truncated:
    """Sort the truncated ones of `job_ids` by their last attempt's finish kind (a job any of whose
    samples hit the context counts as `context`, then `repetition`, else `length`)."""
    kinds: dict[int, set[str]] = {}
    for start in range(0, len(job_ids), _CHUNK):
        rows = session.execute(
            select(Job.id, Result.finish_reason)
            .join(Result, Result.attempt_id == Job.current_attempt_id)
            .where(Job.id.in_(list(job_ids[start : start + _CHUNK])), Job.state == JobState.TRUNCATED.value)
        )
        for job_id, finish in rows:
            kinds.setdefault(job_id, set()).add(finish or "")
    context = sorted(j for j, k in kinds.items() if CONTEXT in k)
    repetition = sorted(j for j, k in kinds.items() if REPETITION in k and CONTEXT not in k)
    length = sorted(set(kinds) - set(context) - set(repetition))
    kept = 0
    for start in range(0, len(length), _CHUNK):
        tokens = final_checkpoint_tokens(session, job_ids=length[start : start + _CHUNK])
        kept = max([kept, *tokens.values()])
    return Truncated(length=length, context=context, repetition=repetition, kept=kept)


def resubmit_jobs(
    session: Session, *, job_ids: Sequence[int], max_tokens: int | None = None, restart: bool = False
) -> list[int]:
    """Queue the given jobs again (those still in a terminal state); return the ids queued. A new
    `max_tokens` is recorded on the job and copied onto its next attempt. The next attempt continues a
    job's kept tokens (a `length`-truncated job's output, a failed attempt's last checkpoint); with
    `restart`, they are dropped and it starts from token 0."""
    now = database_now(session)
    overrides = {"max_tokens": max_tokens} if max_tokens is not None else None
    queued: list[int] = []
    terminal = [s.value for s in RESUBMITTABLE]
    deltas = CountDeltas()
    for start in range(0, len(job_ids), _CHUNK):
        chunk = _lock_for_counts(session, job_ids[start : start + _CHUNK], terminal, deltas)
        queued.extend(
            session.scalars(
                update(Job)
                .where(Job.id.in_(chunk), Job.state.in_(terminal))
                .values(
                    state=JobState.QUEUED.value,
                    queued_at=now,
                    not_before=None,
                    finished_at=None,
                    error_type=None,
                    error_message=None,
                    transient_failures=0,
                    attempt_base=Job.attempt_count,
                    accepted_samples=0,
                    overrides=overrides,
                )
                .returning(Job.id)
                .execution_options(synchronize_session=False)
            )
        )
        if restart:
            drop_checkpoints(session, job_ids=chunk)
    deltas.apply(session)
    return sorted(queued)


def _lock_for_counts(session: Session, job_ids: Sequence[int], states: list[str], deltas: CountDeltas) -> list[int]:
    """Lock the jobs of `job_ids` in `states` and count their move to `queued` (schema.ledger.counters)."""
    stmt = select(Job.id, Job.run_id, Job.state, Job.error_type).where(Job.id.in_(list(job_ids)), Job.state.in_(states))
    stmt = lock_for_update(stmt, session)
    locked = []
    for job_id, run_id, state, error_type in session.execute(stmt):
        deltas.move(Bucket.of(run_id, state, error_type), Bucket.of(run_id, JobState.QUEUED.value))
        locked.append(job_id)
    return locked


@dataclass(frozen=True)
class Cancelled:
    queued: int
    running: int


def cancel_run(session: Session, *, run_id: int) -> Cancelled:
    """Cancel every queued and running job of the run. Running jobs end `cancelled` at once: their
    workers see the lost lease at the next heartbeat, abort the engine request, and their late write is
    fenced off.

    The run's queued and running jobs are locked first, in the ledger's one order (job rows by ascending
    id, then their attempts: schema/ledger/locks.py). Taking attempts first deadlocks against the outcome writer
    and the reconciler on PostgreSQL, and cancelling queued and running jobs in two unlocked statements
    lets a claim (queued → running) or the reconciler (running → queued) move a job between them, leaving
    an attempt `running` on a cancelled job. Once locked, nothing moves them until this transaction ends.
    """
    now = database_now(session)
    run = session.get(Run, run_id)
    if run is not None and run.cancelled_at is None:
        run.cancelled_at = now
    pending = and_(Job.run_id == run_id, Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
    session.execute(select(func.count()).select_from(jobs_locked_in_order(session, pending).subquery()))
    running_attempts = list(
        session.scalars(
            _cancel(run_id, JobState.RUNNING, now).returning(Job.current_attempt_id),
            execution_options={"synchronize_session": False},
        )
    )
    queued = session.execute(_cancel(run_id, JobState.QUEUED, now).execution_options(synchronize_session=False))
    for start in range(0, len(running_attempts), _CHUNK):
        session.execute(
            update(Attempt)
            .where(
                Attempt.id.in_([a for a in running_attempts[start : start + _CHUNK] if a is not None]),
                Attempt.outcome == AttemptOutcome.RUNNING.value,
            )
            .values(outcome=AttemptOutcome.CANCELLED.value, error_type="cancelled", finished_at=now)
            .execution_options(synchronize_session=False)
        )
    queued_n = queued.rowcount  # type: ignore[attr-defined]
    # Run counts (schema.ledger.counters): applied after the job rows are locked, like every counter update.
    deltas = CountDeltas()
    for state, n in ((JobState.QUEUED, queued_n), (JobState.RUNNING, len(running_attempts))):
        deltas.move(Bucket.of(run_id, state.value), Bucket.of(run_id, JobState.CANCELLED.value), n)
    deltas.apply(session)
    return Cancelled(queued=queued_n, running=len(running_attempts))


def _cancel(run_id: int, state: JobState, now: datetime) -> Update:
    return (
        update(Job)
        .where(Job.run_id == run_id, Job.state == state.value)
        .values(
            state=JobState.CANCELLED.value,
            error_type="cancelled",
            error_message="cancelled by the operator",
            lease_owner=None,
            lease_expires_at=None,
            finished_at=now,
        )
    )
