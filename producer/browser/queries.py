"""The browser's read queries, shaped into pages: the ledger's reads are schema.ledger.browser_reads (keyset
pages on primary keys, never OFFSET; correctness judged on standing samples, as its docstring says).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from vlmbatch.producer.reports.display import preview
from vlmbatch.schema.contracts.models import StatusReport
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger import browser_reads
from vlmbatch.schema.ledger.browser_reads import CORRECTNESS, Correctness, JobDetail, JobListing, ResultFilter
from vlmbatch.schema.ledger.runs import RunView
from vlmbatch.schema.ledger.status import Progress, run_progress

__all__ = ["CORRECTNESS", "Correctness", "JobDetail", "ResultFilter"]

# Characters of an answer or an error message shown in a list row (the job page shows them whole).
PREVIEW_CHARS = 160
# Example jobs shown per error type on a run's page.
EXAMPLES_PER_ERROR = 3


class NotFound(LookupError):
    """No run or job has that id."""


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
    run: RunView
    progress: Progress


@dataclass(frozen=True)
class ErrorGroup:
    error_type: str
    jobs: int
    examples: list[JobRow]


def list_runs(session: Session, *, before: int | None, limit: int) -> tuple[list[RunSummary], int | None]:
    """The newest runs (ids below `before`, when given) with their progress, and the key of the next page."""
    runs = browser_reads.newest_runs(session, before=before, limit=limit + 1)
    more = len(runs) > limit
    runs = runs[:limit]
    summaries = [RunSummary(run, run_progress(session, run.id)) for run in runs]
    return summaries, (runs[-1].id if more else None)


def get_run(session: Session, run_id: int) -> RunSummary:
    """The run and its progress. Raises NotFound."""
    run = browser_reads.run_row(session, run_id=run_id)
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
    fetched = browser_reads.job_listings(
        session, run_id=run_id, where=where, limit=limit + 1, text_chars=PREVIEW_CHARS, after=after, before=before
    )
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
    detail = browser_reads.job_detail(session, job_id=job_id)
    if detail is None:
        raise NotFound(f"no job has the id {job_id}")
    return detail


def job_image(session: Session, job_id: int, index: int) -> tuple[str, str | None]:
    """The URI of the job's `index`-th image and its run's source. Raises NotFound."""
    found = browser_reads.job_images(session, job_id=job_id)
    if found is None or not 0 <= index < len(found[0]):
        raise NotFound(f"job {job_id} has no image {index}")
    images, source = found
    return str(images[index]), source


def _counted_empty(where: ResultFilter, counts: StatusReport) -> bool:
    if where.state is not None and not counts.counts.get(where.state.value, 0):
        return True
    return (
        where.error_type is not None
        and where.state in (None, JobState.FAILED)
        and not counts.errors.get(where.error_type, 0)
    )


def _with_samples(session: Session, fetched: list[JobListing]) -> list[JobRow]:
    """Rows with their standing samples counted and graded, and the first sample's answer previewed
    (browser_reads.sample_tallies: a query whose cost is the page's rows)."""
    tallies = browser_reads.sample_tallies(session, job_ids=[row.id for row in fetched], text_chars=PREVIEW_CHARS)
    rows = []
    for row in fetched:
        tally = tallies.get(row.id, browser_reads.SampleTally(0, 0, 0, None))
        rows.append(
            JobRow(
                id=row.id,
                images=list(row.images),
                state=row.state,
                error_type=row.error_type,
                error_preview=preview(row.error_head, PREVIEW_CHARS),
                attempts=row.attempt_count,
                finished_at=row.finished_at,
                completion_tokens=row.completion_tokens,
                answer_preview=preview(tally.first_answer_head, PREVIEW_CHARS),
                samples=tally.samples,
                graded=tally.graded,
                correct=tally.correct,
                question=preview(row.question_head, PREVIEW_CHARS) or "",
            )
        )
    return rows
