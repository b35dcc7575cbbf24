"""The browser's reads of the ledger (producer/browser/queries.py shapes them into pages). Every list is
keyset-paged on a primary key (`WHERE id > :after ORDER BY id LIMIT n`), never OFFSET, so that page 20,000
of a run costs what page 1 does.

Correctness is a job's, judged on its standing samples (schema.ledger.standing, the one definition the
export and the stats use too): `correct` when any of them is graded correct, `incorrect` when some are
graded and none is correct, `ungraded` when it has samples and none is graded (no grader, or no reference).

What the pages read comes back as plain rows (`JobListing`, `SampleTally`, `JobDetail`'s views) or, for a
run, as `runs.RunView`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import datetime
from typing import Any, Literal, TypeVar, get_args

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.keyset import Keyset
from vlmbatch.schema.ledger.runs import RunView
from vlmbatch.schema.ledger.standing import attempt_stands, result_stands
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run

Correctness = Literal["correct", "incorrect", "ungraded"]
CORRECTNESS: tuple[Correctness, ...] = get_args(Correctness)


@dataclass(frozen=True)
class ResultFilter:
    """What the results list of a run shows; None means any."""

    state: JobState | None = None
    error_type: str | None = None
    correctness: Correctness | None = None


@dataclass(frozen=True)
class JobListing:
    """A job of a list as the ledger holds it; its texts cut to the length asked for (plus one
    character, so that the reader can tell a cut text)."""

    id: int
    images: list[str]
    state: str
    error_type: str | None
    error_head: str | None
    attempt_count: int
    finished_at: datetime | None
    current_attempt_id: int | None
    completion_tokens: int | None
    question_head: str


@dataclass(frozen=True)
class SampleTally:
    """A job's standing samples: how many, graded, graded correct; its current attempt's first answer
    (cut like JobListing's texts)."""

    samples: int
    graded: int
    correct: int
    first_answer_head: str | None


@dataclass(frozen=True)
class JobView:
    """A job as its page shows it."""

    id: int
    run_id: int
    images: list[str]
    question: str
    reference: str | None
    meta: dict[str, Any] | None
    params: dict[str, Any] | None
    # What the next attempt changes (a resubmit's overrides).
    overrides: dict[str, Any] | None
    state: str
    error_type: str | None
    error_message: str | None
    attempt_count: int
    queued_at: datetime
    finished_at: datetime | None


@dataclass(frozen=True)
class AttemptView:
    """An attempt of a job as its page shows it: outcome, tokens and timings."""

    id: int
    number: int
    worker: str
    outcome: str
    error_type: str | None
    error_message: str | None
    overrides: dict[str, Any] | None
    started_at: datetime
    finished_at: datetime | None
    prompt_tokens: int | None
    completion_tokens: int | None
    reasoning_tokens: int | None
    answer_tokens: int | None
    queue_wait_s: float | None
    fetch_s: float | None
    decode_s: float | None
    generation_s: float | None
    first_token_s: float | None
    gpu_seconds: float | None


@dataclass(frozen=True)
class SampleView:
    """A result row (one sample of an attempt) as the job page shows it."""

    id: int
    attempt_id: int
    sample_index: int
    answer: str
    reasoning: str | None
    finish_reason: str | None
    trace_closed: bool
    completion_tokens: int
    reasoning_tokens: int | None
    answer_tokens: int | None
    extracted_answer: str | None
    correct: bool | None
    valid: bool | None


_View = TypeVar("_View", JobView, AttemptView, SampleView)


def _view(cls: type[_View], row: object) -> _View:
    """The row's columns that `cls` names, as a `cls`."""
    return cls(**{field.name: getattr(row, field.name) for field in fields(cls)})


@dataclass(frozen=True)
class JobDetail:
    """A job with its run, every attempt (oldest first) and every sample, grouped by attempt."""

    job: JobView
    run: RunView
    attempts: list[AttemptView]
    results: dict[int, list[SampleView]]
    # The attempts whose results stand (schema.ledger.standing).
    standing_attempts: frozenset[int] = frozenset()

    @property
    def standing(self) -> list[SampleView]:
        """The standing samples, oldest attempt first."""
        return [r for attempt_id, rs in self.results.items() if attempt_id in self.standing_attempts for r in rs]

    @property
    def superseded(self) -> list[tuple[int | str, list[SampleView]]]:
        """(attempt number, samples) of attempts whose results no longer stand (the job was resubmitted)."""
        numbers = {attempt.id: attempt.number for attempt in self.attempts}
        return [
            (numbers.get(attempt_id, "?"), results)
            for attempt_id, results in self.results.items()
            if attempt_id not in self.standing_attempts
        ]


def newest_runs(session: Session, *, before: int | None, limit: int) -> list[RunView]:
    """Up to `limit` runs, newest first (ids below `before`, when given)."""
    stmt = select(Run).order_by(Run.id.desc()).limit(limit)
    if before is not None:
        stmt = stmt.where(Run.id < before)
    return list(session.scalars(stmt))


def run_row(session: Session, *, run_id: int) -> RunView | None:
    """The run `run_id`; None when there is none."""
    return session.get(Run, run_id)


def job_listings(
    session: Session,
    *,
    run_id: int,
    where: ResultFilter,
    limit: int,
    text_chars: int,
    after: int | None = None,
    before: int | None = None,
) -> list[JobListing]:
    """Up to `limit` of the run's jobs that pass `where` in id order: those after the key `after`, or
    (paging back) the last ones before the key `before`, in descending id order."""
    stmt, keys = _job_rows(run_id, where, text_chars)
    stmt = keys.page(stmt, session=session, after=after, before=before).limit(limit)
    return [JobListing(*row) for row in session.execute(stmt)]


def sample_tallies(session: Session, *, job_ids: Sequence[int], text_chars: int) -> dict[int, SampleTally]:
    """The standing samples of each of `job_ids`, counted and graded, and its first sample's answer.

    Driven from the jobs by primary key, each figure a subquery correlated on the job (probing the
    results' and attempts' job indexes): a plan with no join order to choose, so a run that finished
    millions of jobs since the last ANALYZE still costs the page's rows, not a scan of results or jobs."""
    if not job_ids:
        return {}
    standing = result_stands()

    def tally(condition: ColumnElement[bool] | None = None) -> Any:
        where = [Result.job_id == Job.id, standing] + ([condition] if condition is not None else [])
        return select(func.count()).where(*where).correlate(Job).scalar_subquery()

    first_answer = (
        select(func.substr(Result.answer, 1, text_chars + 1))
        .where(Result.job_id == Job.id, Result.attempt_id == Job.current_attempt_id, Result.sample_index == 0)
        .correlate(Job)
        .limit(1)
        .scalar_subquery()
    )
    stmt = select(
        Job.id, tally(), tally(Result.correct.is_not(None)), tally(Result.correct.is_(True)), first_answer
    ).where(Job.id.in_(list(job_ids)))
    return {
        job_id: SampleTally(int(samples), int(graded), int(correct), answer)
        for job_id, samples, graded, correct, answer in session.execute(stmt)
    }


def job_detail(session: Session, *, job_id: int) -> JobDetail | None:
    """Everything the ledger holds about a job; None when there is no such job."""
    job = session.get(Job, job_id)
    if job is None:
        return None
    run = session.get(Run, job.run_id)
    assert run is not None  # a foreign key
    attempts = session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number))
    results: dict[int, list[SampleView]] = {}
    stmt = select(Result).where(Result.job_id == job_id).order_by(Result.attempt_id, Result.sample_index)
    for result in session.scalars(stmt):
        results.setdefault(result.attempt_id, []).append(_view(SampleView, result))
    standing = session.scalars(
        select(Attempt.id).join(Job, Job.id == Attempt.job_id).where(Job.id == job_id, attempt_stands())
    )
    return JobDetail(
        job=_view(JobView, job),
        run=run,
        attempts=[_view(AttemptView, attempt) for attempt in attempts],
        results=results,
        standing_attempts=frozenset(standing),
    )


def job_images(session: Session, *, job_id: int) -> tuple[list[str], str | None] | None:
    """The job's image URIs and its run's source; None when there is no such job."""
    row = session.execute(
        select(Job.images, Run.source).join(Run, Run.id == Job.run_id).where(Job.id == job_id)
    ).first()
    return None if row is None else (list(row.images), row.source)


def _job_rows(run_id: int, where: ResultFilter, text_chars: int) -> tuple[Select[Any], Keyset]:
    """The list's columns and conditions, and the keys it is paged on: each filter has an index whose
    leading columns it fixes (ix_jobs_run_id, ix_jobs_run_state_id, ix_jobs_run_failed_error). An error
    type with no state lists the failed jobs of that type (what the run's error counts count): filtering
    every job of the run for it would walk the whole run to fill a page when errors are rare."""
    stmt = select(
        Job.id,
        Job.images,
        Job.state,
        Job.error_type,
        func.substr(Job.error_message, 1, text_chars + 1),
        Job.attempt_count,
        Job.finished_at,
        Job.current_attempt_id,
        Attempt.completion_tokens,
        func.substr(Job.question, 1, text_chars + 1).label("question"),
    ).outerjoin(Attempt, Attempt.id == Job.current_attempt_id)
    keys = Keyset([(Job.run_id, run_id)])
    if where.error_type is not None and where.state in (None, JobState.FAILED):
        stmt = stmt.where(Job.state == JobState.FAILED.value)  # the partial index's predicate
        keys = Keyset([(Job.run_id, run_id), (Job.error_type, where.error_type)])
    elif where.state is not None:
        keys = Keyset([(Job.run_id, run_id), (Job.state, where.state.value)])
    if where.error_type is not None and where.state not in (None, JobState.FAILED):
        stmt = stmt.where(Job.error_type == where.error_type)
    if where.correctness is not None:
        stmt = stmt.where(_correctness(where.correctness))
    return stmt, keys


def _standing_sample(*conditions: ColumnElement[bool]) -> ColumnElement[bool]:
    """EXISTS a standing sample of the outer job meeting `conditions` (probes the results' job index)."""
    return select(Result.id).where(Result.job_id == Job.id, result_stands(), *conditions).exists()


def _correctness(wanted: Correctness) -> ColumnElement[bool]:
    if wanted == "correct":
        return _standing_sample(Result.correct.is_(True))
    if wanted == "incorrect":
        return and_(_standing_sample(Result.correct.is_(False)), ~_standing_sample(Result.correct.is_(True)))
    return and_(_standing_sample(), ~_standing_sample(Result.correct.is_not(None)))


@dataclass(frozen=True)
class JobOutcome:
    """A job with its current attempt's completion tokens and first sample's answer (the terminal's
    table of a run's first jobs, producer/reports/results.py)."""

    id: int
    images: list[str]
    question: str
    state: str
    error_type: str | None
    completion_tokens: int | None
    answer: str | None


def first_job_outcomes(session: Session, *, run_id: int, limit: int) -> list[JobOutcome]:
    """The run's first `limit` jobs by id, with their outcomes."""
    stmt = (
        select(Job, Attempt.completion_tokens, Result.answer)
        .outerjoin(Attempt, Attempt.id == Job.current_attempt_id)
        .outerjoin(Result, and_(Result.attempt_id == Job.current_attempt_id, Result.sample_index == 0))
        .where(Job.run_id == run_id)
        .order_by(Job.id)
        .limit(limit)
    )
    return [
        JobOutcome(job.id, list(job.images or []), job.question, job.state, job.error_type, tokens, answer)
        for job, tokens, answer in session.execute(stmt)
    ]
