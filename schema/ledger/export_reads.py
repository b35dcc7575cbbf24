"""The export's reads: a run's standing samples, its jobs as their source gave them, and its failed jobs,
each in windows of job ids (flat memory, one short transaction per window).

Pages are windows of job ids, not keyset pages on `results.id` with LIMIT: neither SQLite nor PostgreSQL
can tell how few rows the join keeps, so both sorted the whole run for every such page (quadratic). A
window of job ids is a primary-key range that every planner takes.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.standing import standing_results
from vlmbatch.schema.ledger.tables import Attempt, Job, Result

# What an exported field names as its source, "<entity>.<attribute>": the tables a sample is read from.
_ENTITIES: dict[str, Any] = {"job": Job, "attempt": Attempt, "result": Result}


@dataclass(frozen=True)
class SampleFilter:
    """Which standing samples to read: of jobs in `states`; graded correct only; reasoning-token bounds
    (a sample without a reasoning count has no known length to hold against them: kept); finish kinds."""

    states: tuple[JobState, ...]
    only_correct: bool = False
    max_trace_tokens: int | None = None
    min_trace_tokens: int | None = None
    finish: tuple[str, ...] | None = None


@dataclass(frozen=True)
class FailedJob:
    """A finished job without standing results to export (failed or cancelled): the OpenAI error file."""

    job_id: int
    metadata: dict[str, Any] | None
    state: str
    error_type: str | None
    error_message: str | None


@dataclass(frozen=True)
class SourceJob:
    """A job as its source row gave it (the joined export)."""

    job_id: int
    images: list[str]
    question: str
    reference: str | None
    metadata: dict[str, Any] | None
    state: str
    # The source row's number as submit recorded it (None for jobs submitted before it was).
    source_row: int | None


def has_column(source: str) -> bool:
    """Whether `source` ("result.answer", "job.meta" ...) names a column a sample can be read from."""
    entity, _, attribute = source.partition(".")
    return entity in _ENTITIES and hasattr(_ENTITIES[entity], attribute)


def iter_sample_rows(
    sessions: sessionmaker[Session], *, run_id: int, columns: Sequence[str], where: SampleFilter, window: int
) -> Iterator[Sequence[Any]]:
    """The `columns` (sources as `has_column` takes them) of `run_id`'s standing samples that pass `where`,
    by job id, attempt, then sample index; read in windows of `window` job ids."""
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run_id)).one()
    if first is None:
        return
    query = (
        select(*(_column(source) for source in columns))
        .select_from(Job)
        .join(Result, Result.job_id == Job.id)
        .join(Attempt, Attempt.id == Result.attempt_id)
        .where(_sample_filter(run_id, where))
        .order_by(Job.id, Result.attempt_id, Result.sample_index)
    )
    low = first
    while low <= last:
        with sessions() as session:
            # Windows without a result are skipped by one probe of ix_results_job_id: exporting what a
            # partly finished run of 10^7 jobs has so far must not read every job of it.
            next_result = session.scalar(
                select(func.min(Result.job_id)).where(Result.job_id >= low, Result.job_id <= last)
            )
            if next_result is None:
                return
            low = next_result
            # Through the connection: plain rows, without the ORM's per-row bookkeeping.
            page = session.connection().execute(query.where(Job.id >= low, Job.id < low + window)).all()
        yield from page
        low += window


def iter_source_jobs(sessions: sessionmaker[Session], *, run_id: int, page_rows: int) -> Iterator[SourceJob]:
    """Every job of `run_id`, whatever its state, by job id (the order its source gave them), in windows
    of `page_rows` job ids."""
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run_id)).one()
    if first is None:
        return
    query = (
        select(Job.id, Job.images, Job.question, Job.reference, Job.meta, Job.state, Job.source_row)
        .where(Job.run_id == run_id)
        .order_by(Job.id)
    )
    for low in range(first, last + 1, page_rows):
        with sessions() as session:
            page = session.connection().execute(query.where(Job.id >= low, Job.id < low + page_rows)).all()
        for row in page:
            yield SourceJob(*row)


def iter_failed_jobs(
    sessions: sessionmaker[Session], *, run_id: int, states: Sequence[JobState], page_rows: int
) -> Iterator[FailedJob]:
    """`run_id`'s jobs in `states`, by job id, in windows of `page_rows` job ids."""
    if not states:
        return
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run_id)).one()
    if first is None:
        return
    query = (
        select(Job.id, Job.meta, Job.state, Job.error_type, Job.error_message)
        .where(Job.run_id == run_id, Job.state.in_([s.value for s in states]))
        .order_by(Job.id)
    )
    for low in range(first, last + 1, page_rows):
        with sessions() as session:
            page = session.connection().execute(query.where(Job.id >= low, Job.id < low + page_rows)).all()
        for row in page:
            yield FailedJob(*row)


def _column(source: str) -> Any:
    if not has_column(source):
        raise ValueError(f"no column {source!r} to export")
    entity, _, attribute = source.partition(".")
    return getattr(_ENTITIES[entity], attribute)


def _sample_filter(run_id: int, selection: SampleFilter) -> ColumnElement[bool]:
    where = standing_results(run_id, selection.states)
    if selection.only_correct:
        where = and_(where, Result.correct.is_(True))
    # A sample without a reasoning count has no known length to hold against a bound: kept.
    if selection.max_trace_tokens is not None:
        short_enough = Result.reasoning_tokens <= selection.max_trace_tokens
        where = and_(where, or_(Result.reasoning_tokens.is_(None), short_enough))
    if selection.min_trace_tokens is not None:
        long_enough = Result.reasoning_tokens >= selection.min_trace_tokens
        where = and_(where, or_(Result.reasoning_tokens.is_(None), long_enough))
    if selection.finish is not None:
        where = and_(where, Result.finish_reason.in_(selection.finish))
    return where
