"""Reading a run's standing results for export: the SQL selection derived from the field table, in pages
of job ids (flat memory, short transactions)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, cast

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.reports.fields import SELECTED, TIMING_FIELDS, ExportRecord
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.runs import run_settings
from vlmbatch.schema.ledger.standing import result_stands
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run

# Samples per page (about): large enough that round trips don't dominate, small enough that a page of
# 16k-token traces (~64 KB each) stays well under 100 MB.
PAGE_ROWS = 1000
_SELECTED_NAMES = tuple(f.name for f in SELECTED)


@dataclass(frozen=True)
class ExportFilter:
    """Which standing samples to export."""

    states: tuple[JobState, ...] = (JobState.SUCCEEDED,)
    only_correct: bool = False
    max_trace_tokens: int | None = None

    def __post_init__(self) -> None:
        unfinished = [s.value for s in self.states if not s.terminal]
        if unfinished:
            # A queued or running job's current attempt has no result that stands (yet).
            raise ValueError(f"only finished jobs have standing results, not {', '.join(unfinished)}")
        if not self.states:
            raise ValueError("no job state selected")


def standing_results(run_id: int, states: Sequence[JobState]) -> ColumnElement[bool]:
    """Join-and-filter condition for the standing results of `run_id`'s jobs in `states`: the results of
    the attempts made since each job's last (re)submission (schema.ledger.standing). Use with
    `select(...).select_from(Result).join(Job, Job.id == Result.job_id)`."""
    return and_(
        Job.run_id == run_id,
        Job.state.in_([s.value for s in states]),
        result_stands(),
    )


def iter_records(
    sessions: sessionmaker[Session], run: Run, selection: ExportFilter, *, page_rows: int = PAGE_ROWS
) -> Iterator[ExportRecord]:
    """The standing samples of `run` that pass `selection`, by job id then sample index.

    Pages are windows of job ids, one short transaction each, sized so that a page holds about
    `page_rows` samples. (Keyset paging by `results.id` with LIMIT looked simpler, but neither SQLite
    nor PostgreSQL can tell how few rows the join keeps, so both sorted the whole run for every page:
    quadratic. A window of job ids is a primary-key range that every planner takes.)
    """
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run.id)).one()
    if first is None:
        return
    window = max(1, page_rows // run_settings(run).sampling.samples)
    run_key = {"run": run.name, "run_id": run.id}
    query = (
        select(*(cast(Any, f.source) for f in SELECTED))
        .select_from(Job)
        .join(Result, Result.job_id == Job.id)
        .join(Attempt, Attempt.id == Result.attempt_id)
        .where(_sample_filter(run.id, selection))
        .order_by(Job.id, Result.sample_index)
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
        for row in page:
            yield _record(run_key, row)
        low += window


@dataclass(frozen=True)
class FailedJob:
    """A finished job without standing results to export (failed or cancelled): the OpenAI error file."""

    job_id: int
    metadata: dict[str, Any] | None
    state: str
    error_type: str | None
    error_message: str | None


def iter_failed_jobs(
    sessions: sessionmaker[Session], run: Run, states: Sequence[JobState], *, page_rows: int = PAGE_ROWS
) -> Iterator[FailedJob]:
    """`run`'s jobs in `states`, by job id, in pages of job ids like `iter_records` (flat memory)."""
    if not states:
        return
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run.id)).one()
    if first is None:
        return
    query = (
        select(Job.id, Job.meta, Job.state, Job.error_type, Job.error_message)
        .where(Job.run_id == run.id, Job.state.in_([s.value for s in states]))
        .order_by(Job.id)
    )
    for low in range(first, last + 1, page_rows):
        with sessions() as session:
            page = session.connection().execute(query.where(Job.id >= low, Job.id < low + page_rows)).all()
        for row in page:
            yield FailedJob(*row)


def _sample_filter(run_id: int, selection: ExportFilter) -> ColumnElement[bool]:
    where = standing_results(run_id, selection.states)
    if selection.only_correct:
        where = and_(where, Result.correct.is_(True))
    if selection.max_trace_tokens is not None:
        # A sample without a reasoning count has no known length to hold against the limit: kept.
        short_enough = Result.reasoning_tokens <= selection.max_trace_tokens
        where = and_(where, or_(Result.reasoning_tokens.is_(None), short_enough))
    return where


def _record(run_key: dict[str, Any], row: Sequence[Any]) -> ExportRecord:
    record: dict[str, Any] = {**run_key, **dict(zip(_SELECTED_NAMES, row, strict=True))}
    record["timings"] = {name: record.pop(name) for name in TIMING_FIELDS}
    return cast(ExportRecord, record)
