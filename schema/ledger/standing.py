"""Which results stand for a job: those of the attempts made since its last (re)submission.

Normally that is one attempt (the current one: failed, abandoned and cancelled attempts write no results).
In an accept-until-M run every sampling round since the submission stands. Results of attempts made
before a `resubmit` are history: kept in the ledger, never exported or counted as the job's answer."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import ColumnElement, and_, or_, select

from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.tables import Attempt, Job, Result


def attempt_stands() -> ColumnElement[bool]:
    """For a query joining Attempt and Job: the attempt of the current submission that ended the job, or
    one that wrote its standing samples (every round of an accept-until-M job)."""
    wrote_samples = Attempt.outcome.in_([AttemptOutcome.SUCCEEDED.value, AttemptOutcome.TRUNCATED.value])
    return and_(
        Attempt.job_id == Job.id,
        Attempt.number > Job.attempt_base,
        or_(Attempt.id == Job.current_attempt_id, wrote_samples),
    )


def result_stands() -> ColumnElement[bool]:
    """For a query joining Result and Job: the result comes from an attempt that stands."""
    standing = select(Attempt.id).where(Attempt.job_id == Result.job_id, Attempt.number > Job.attempt_base)
    return Result.attempt_id.in_(standing.correlate(Result, Job).scalar_subquery())


def standing_results(run_id: int, states: Sequence[JobState]) -> ColumnElement[bool]:
    """Join-and-filter condition for the standing results of `run_id`'s jobs in `states`: the results of
    the attempts made since each job's last (re)submission. Use with
    `select(...).select_from(Result).join(Job, Job.id == Result.job_id)`."""
    return and_(
        Job.run_id == run_id,
        Job.state.in_([s.value for s in states]),
        result_stands(),
    )
