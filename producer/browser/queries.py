"""The browser's read queries. Every list is keyset-paged on a primary key (`WHERE id > :after ORDER BY id
LIMIT n`), never OFFSET, so that page 20,000 of a run costs what page 1 does.

Correctness is a job's, judged on its standing samples (`schema.ledger.standing`, the one definition the export
and the stats use too: the current attempt's results, or every sampling round of an accept-until-M job):
`correct` when any of them is graded correct, `incorrect` when some are graded and none is correct,
`ungraded` when it has samples and none is graded (no grader, or no reference).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal, get_args

from sqlalchemy import ColumnElement, Select, and_, func, select
from sqlalchemy.orm import Session

from vlmbatch.producer.reports.display import preview
from vlmbatch.schema.contracts.models import StatusReport
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.keyset import Keyset
from vlmbatch.schema.ledger.standing import attempt_stands, result_stands
from vlmbatch.schema.ledger.status import Progress, run_progress
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run

Correctness = Literal["correct", "incorrect", "ungraded"]
CORRECTNESS: tuple[Correctness, ...] = get_args(Correctness)
# Characters of an answer or an error message shown in a list row (the job page shows them whole).
PREVIEW_CHARS = 160
# Example jobs shown per error type on a run's page.
EXAMPLES_PER_ERROR = 3


class NotFound(LookupError):
    """No run or job has that id."""


@dataclass(frozen=True)
class ResultFilter:
    """What the results list of a run shows; None means any."""

    state: JobState | None = None
    error_type: str | None = None
    correctness: Correctness | None = None


@dataclass(frozen=True)
class JobRow:
    """One job in a list: its outcome and a preview of its first standing sample."""

    id: int
    images: list[str]
    state: str
    error_type: str | None
    error_preview: str | None
    attempts: int
    finished_at: datetime | None
    completion_tokens: int | None
    answer_preview: str | None
    samples: int
    graded: int
    correct: int
    # The job's text, cut to a preview (two questions about one image are two rows).
    question: str = ""


@dataclass(frozen=True)
class JobPage:
    """A page of a run's results; `next_after` / `prev_before` are the keys of the pages around it."""

    rows: list[JobRow]
    next_after: int | None
    prev_before: int | None


@dataclass(frozen=True)
class RunSummary:
    run: Run
    progress: Progress


@dataclass(frozen=True)
class ErrorGroup:
    error_type: str
    jobs: int
    examples: list[JobRow]


@dataclass(frozen=True)
class JobDetail:
    """A job with its run, every attempt (oldest first) and every result row, grouped by attempt."""

    job: Job
    run: Run
    attempts: list[Attempt]
    results: dict[int, list[Result]]
    # The attempts whose results stand (schema.ledger.standing).
    standing_attempts: frozenset[int] = frozenset()

    @property
    def standing(self) -> list[Result]:
        """The standing samples, oldest attempt first."""
        return [r for attempt_id, rs in self.results.items() if attempt_id in self.standing_attempts for r in rs]


def list_runs(session: Session, *, before: int | None, limit: int) -> tuple[list[RunSummary], int | None]:
    """The newest runs (ids below `before`, when given) with their progress, and the key of the next page."""
    stmt = select(Run).order_by(Run.id.desc()).limit(limit + 1)
    if before is not None:
        stmt = stmt.where(Run.id < before)
    runs = list(session.scalars(stmt))
    more = len(runs) > limit
    runs = runs[:limit]
    summaries = [RunSummary(run, run_progress(session, run.id)) for run in runs]
    return summaries, (runs[-1].id if more else None)


def get_run(session: Session, run_id: int) -> RunSummary:
    """The run and its progress. Raises NotFound."""
    run = session.get(Run, run_id)
    if run is None:
        raise NotFound(f"no run has the id {run_id}")
    return RunSummary(run, run_progress(session, run_id))


def error_groups(session: Session, run_id: int, errors: dict[str, int]) -> list[ErrorGroup]:
    """One group per error type of the run's failed jobs (`errors`: type → count, most first), each with
    its first few jobs as examples."""
    groups = []
    for error_type, count in errors.items():
        examples = job_page(
            session,
            run_id,
            ResultFilter(state=JobState.FAILED, error_type=error_type),
            limit=EXAMPLES_PER_ERROR,
        )
        groups.append(ErrorGroup(error_type, count, examples.rows))
    return groups


def job_page(
    session: Session,
    run_id: int,
    where: ResultFilter,
    *,
    limit: int,
    after: int | None = None,
    before: int | None = None,
    counts: StatusReport | None = None,
) -> JobPage:
    """The run's jobs that pass `where`, `limit` at a time in id order: those after the key `after`, or
    (paging back) the last ones before the key `before`. With the run's `counts`, a filter that its
    counters say matches no job is answered from them (a walk would find nothing, after a long look)."""
    if counts is not None and _counted_empty(where, counts):
        return JobPage([], next_after=None, prev_before=None)
    stmt, keys = _job_rows(run_id, where)
    stmt = keys.page(stmt, session=session, after=after, before=before).limit(limit + 1)
    fetched = list(session.execute(stmt).all())
    more = len(fetched) > limit
    fetched = fetched[:limit]
    if before is not None:
        fetched.reverse()
    rows = _with_samples(session, fetched)
    if not rows:
        return JobPage(rows, next_after=None, prev_before=None)
    if before is not None:
        return JobPage(rows, next_after=rows[-1].id, prev_before=rows[0].id if more else None)
    return JobPage(rows, next_after=rows[-1].id if more else None, prev_before=rows[0].id if after else None)


def get_job(session: Session, job_id: int) -> JobDetail:
    """Everything the ledger holds about a job. Raises NotFound."""
    job = session.get(Job, job_id)
    if job is None:
        raise NotFound(f"no job has the id {job_id}")
    run = session.get(Run, job.run_id)
    assert run is not None  # a foreign key
    attempts = list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))
    results: dict[int, list[Result]] = {}
    stmt = select(Result).where(Result.job_id == job_id).order_by(Result.attempt_id, Result.sample_index)
    for result in session.scalars(stmt):
        results.setdefault(result.attempt_id, []).append(result)
    standing = session.scalars(
        select(Attempt.id).join(Job, Job.id == Attempt.job_id).where(Job.id == job_id, attempt_stands())
    )
    return JobDetail(job=job, run=run, attempts=attempts, results=results, standing_attempts=frozenset(standing))


def job_image(session: Session, job_id: int, index: int) -> tuple[str, str | None]:
    """The URI of the job's `index`-th image and its run's source. Raises NotFound."""
    row = session.execute(
        select(Job.images, Run.source).join(Run, Run.id == Job.run_id).where(Job.id == job_id)
    ).first()
    if row is None or not 0 <= index < len(row.images):
        raise NotFound(f"job {job_id} has no image {index}")
    return str(row.images[index]), row.source


def _counted_empty(where: ResultFilter, counts: StatusReport) -> bool:
    if where.state is not None and not counts.counts.get(where.state.value, 0):
        return True
    return (
        where.error_type is not None
        and where.state in (None, JobState.FAILED)
        and not counts.errors.get(where.error_type, 0)
    )


def _job_rows(run_id: int, where: ResultFilter) -> tuple[Select[Any], Keyset]:
    """The list's columns and conditions, and the keys it is paged on: each filter has an index whose
    leading columns it fixes (ix_jobs_run_id, ix_jobs_run_state_id, ix_jobs_run_failed_error). An error
    type with no state lists the failed jobs of that type (what the run's error counts count): filtering
    every job of the run for it would walk the whole run to fill a page when errors are rare."""
    stmt = select(
        Job.id,
        Job.images,
        Job.state,
        Job.error_type,
        func.substr(Job.error_message, 1, PREVIEW_CHARS + 1),
        Job.attempt_count,
        Job.finished_at,
        Job.current_attempt_id,
        Attempt.completion_tokens,
        func.substr(Job.question, 1, PREVIEW_CHARS + 1).label("question"),
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


def _with_samples(session: Session, fetched: Sequence[Any]) -> list[JobRow]:
    """Rows with their standing samples counted and graded, and the first sample's answer previewed.

    Driven from the page's jobs by primary key, each figure a subquery correlated on the job (probing the
    results' and attempts' job indexes): a plan with no join order to choose, so a run that finished
    millions of jobs since the last ANALYZE still costs the page's rows, not a scan of results or jobs."""
    if not fetched:
        return []
    standing = result_stands()

    def tally(condition: ColumnElement[bool] | None = None) -> Any:
        where = [Result.job_id == Job.id, standing] + ([condition] if condition is not None else [])
        return select(func.count()).where(*where).correlate(Job).scalar_subquery()

    first_answer = (
        select(func.substr(Result.answer, 1, PREVIEW_CHARS + 1))
        .where(Result.job_id == Job.id, Result.attempt_id == Job.current_attempt_id, Result.sample_index == 0)
        .correlate(Job)
        .limit(1)
        .scalar_subquery()
    )
    stmt = select(
        Job.id, tally(), tally(Result.correct.is_not(None)), tally(Result.correct.is_(True)), first_answer
    ).where(Job.id.in_([row.id for row in fetched]))
    tallies: dict[int, tuple[int, int, int]] = {}
    previews: dict[int, str | None] = {}
    for job_id, samples, graded, correct, answer in session.execute(stmt):
        tallies[job_id] = (int(samples), int(graded), int(correct))
        previews[job_id] = answer
    rows = []
    for row in fetched:
        samples, graded_n, correct_n = tallies.get(row.id, (0, 0, 0))
        answer = previews.get(row.id)
        rows.append(
            JobRow(
                id=row.id,
                images=list(row.images),
                state=row.state,
                error_type=row.error_type,
                error_preview=preview(row[4], PREVIEW_CHARS),
                attempts=row.attempt_count,
                finished_at=row.finished_at,
                completion_tokens=row.completion_tokens,
                answer_preview=preview(answer, PREVIEW_CHARS),
                samples=samples,
                graded=graded_n,
                correct=correct_n,
                question=preview(row.question, PREVIEW_CHARS) or "",
            )
        )
    return rows
