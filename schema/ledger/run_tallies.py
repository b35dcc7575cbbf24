"""What a run produced and what it cost, tallied in SQL (counts, sums, and a window function for the
percentiles): nothing loads a table into memory. The reports (producer/reports/stats.py) shape them.

*Standing* samples are the results of each finished job's current submission (schema.ledger.standing);
earlier attempts of resubmitted or retried jobs count only towards the cost over all attempts.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

from sqlalchemy import ColumnElement, and_, case, distinct, func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.standing import attempt_stands, standing_results
from vlmbatch.schema.ledger.tables import Attempt, Job, Result


@dataclass(frozen=True)
class AttemptSums:
    """Sums over a set of attempts (null counts add nothing)."""

    attempts: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    gpu_seconds: float


@dataclass(frozen=True)
class SampleTallies:
    """The standing samples of a run's finished jobs: how many, graded, correct, the jobs with a graded
    or a correct one, those that ended each truncating way, and those whose thinking budget ran out."""

    standing: int
    graded: int
    correct: int
    jobs_graded: int
    jobs_with_correct: int
    by_finish: dict[str, int]
    capped_samples: int
    capped_jobs: int


@dataclass(frozen=True)
class TraceTally:
    """Count, largest and mean of the standing samples' reasoning tokens (those that have a count)."""

    samples: int
    largest: int | None
    mean: float | None


def attempt_sums(session: Session, *, run_id: int, standing_in: Sequence[JobState] | None = None) -> AttemptSums:
    """Token and GPU-second sums over every attempt of `run_id`, or with `standing_in` over the standing
    attempts of its jobs in those states."""
    everything = Job.run_id == run_id
    if standing_in is None:
        return _sums(session, everything)
    return _sums(session, and_(everything, Job.state.in_([s.value for s in standing_in]), attempt_stands()))


def sample_tallies(
    session: Session, *, run_id: int, finished: Sequence[JobState], truncating: Sequence[str]
) -> SampleTallies:
    """The standing samples of `run_id`'s jobs in `finished` states, in one aggregate query; `by_finish`
    counts the samples of each of the `truncating` finish kinds."""
    graded = Result.correct.is_not(None)
    correct = Result.correct.is_(True)
    capped = Result.thinking_capped.is_(True)
    row = session.execute(
        select(
            func.count(),
            func.count(Result.correct),
            _count_if(correct),
            func.count(distinct(case((graded, Result.job_id)))),
            func.count(distinct(case((correct, Result.job_id)))),
            *(_count_if(Result.finish_reason == kind) for kind in truncating),
            _count_if(capped),
            func.count(distinct(case((capped, Result.job_id)))),
        )
        .select_from(Result)
        .join(Job, Job.id == Result.job_id)
        .where(standing_results(run_id, finished))
    ).one()
    standing, n_graded, n_correct, jobs_graded, jobs_correct, *by_kind, capped_samples, capped_jobs = (
        int(v or 0) for v in row
    )
    return SampleTallies(
        standing=standing,
        graded=n_graded,
        correct=n_correct,
        jobs_graded=jobs_graded,
        jobs_with_correct=jobs_correct,
        by_finish=dict(zip(truncating, by_kind, strict=True)),
        capped_samples=capped_samples,
        capped_jobs=capped_jobs,
    )


def trace_tally(session: Session, *, run_id: int, finished: Sequence[JobState]) -> TraceTally:
    """Count, max and mean of the reasoning tokens of `run_id`'s standing samples in `finished` jobs."""
    tokens = Result.reasoning_tokens
    count, largest, mean = session.execute(
        select(func.count(), func.max(tokens), func.avg(tokens))
        .select_from(Result)
        .join(Job, Job.id == Result.job_id)
        .where(_with_trace(run_id, finished))
    ).one()
    return TraceTally(samples=int(count), largest=largest, mean=float(mean) if count else None)


def trace_tokens_at_ranks(
    session: Session, *, run_id: int, finished: Sequence[JobState], ranks: Collection[int]
) -> dict[int, int]:
    """The reasoning tokens at each of the 1-based `ranks` of the sorted standing samples: one sorted pass
    in the database (`row_number()` over the sorted column, on SQLite and PostgreSQL alike), from which only
    the rows at the wanted ranks travel back."""
    tokens = Result.reasoning_tokens
    ranked = (
        select(tokens.label("tokens"), func.row_number().over(order_by=tokens).label("rank"))
        .select_from(Result)
        .join(Job, Job.id == Result.job_id)
        .where(_with_trace(run_id, finished))
        .subquery()
    )
    rows = session.execute(select(ranked.c.rank, ranked.c.tokens).where(ranked.c.rank.in_(set(ranks))))
    return {int(rank): int(value) for rank, value in rows.tuples()}


def attempt_errors(session: Session, *, run_id: int) -> dict[str, int]:
    """Every attempt's error type (retries included) and how many attempts ended with it, most first."""
    rows = session.execute(
        select(Attempt.error_type, func.count())
        .join(Job, Job.id == Attempt.job_id)
        .where(Job.run_id == run_id, Attempt.error_type.is_not(None))
        .group_by(Attempt.error_type)
        .order_by(func.count().desc(), Attempt.error_type)
    ).tuples()
    return {str(error_type): int(n) for error_type, n in rows}


def _with_trace(run_id: int, finished: Sequence[JobState]) -> ColumnElement[bool]:
    return and_(standing_results(run_id, finished), Result.reasoning_tokens.is_not(None))


def _sums(session: Session, where: ColumnElement[bool]) -> AttemptSums:
    attempts, prompt, completion, reasoning, answer, gpu = session.execute(
        select(
            func.count(Attempt.id),
            func.sum(Attempt.prompt_tokens),
            func.sum(Attempt.completion_tokens),
            func.sum(Attempt.reasoning_tokens),
            func.sum(Attempt.answer_tokens),
            func.sum(Attempt.gpu_seconds),
        )
        .select_from(Attempt)
        .join(Job, Job.id == Attempt.job_id)
        .where(where)
    ).one()
    # SUM over no rows (or only nulls) is NULL: nothing spent.
    return AttemptSums(
        attempts=int(attempts),
        prompt_tokens=int(prompt or 0),
        completion_tokens=int(completion or 0),
        reasoning_tokens=int(reasoning or 0),
        answer_tokens=int(answer or 0),
        gpu_seconds=float(gpu or 0.0),
    )


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    # SUM(CASE ...) rather than COUNT(*) FILTER (...): the same SQL on every SQLite version and PostgreSQL.
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)
