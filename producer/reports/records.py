"""Reading a run's standing results for export: the SQL selection derived from the field table, in pages
of job ids (flat memory, short transactions)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

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


# Which samples of a job to keep (`--one-per-job`): every one, the first, or the best (below).
OnePerJob = Literal["all", "first", "best"]
ONE_PER_JOB: tuple[OnePerJob, ...] = ("all", "first", "best")
# The finish kinds a result stores (docs/ARCHITECTURE.md, the outcome contract); `--finish` takes these.
FINISH_KINDS = ("stop", "length", "context", "repetition")


@dataclass(frozen=True)
class ExportFilter:
    """Which standing samples to export. Trace-token bounds keep the samples whose reasoning count is
    unknown (no length to hold against them); `finish` keeps the samples of those finish kinds; `one_per_job`
    keeps, of each job's samples that passed, the first or the best (graded correct, then a closed trace
    that stopped, then the shortest trace, then the first)."""

    states: tuple[JobState, ...] = (JobState.SUCCEEDED,)
    only_correct: bool = False
    max_trace_tokens: int | None = None
    min_trace_tokens: int | None = None
    finish: tuple[str, ...] | None = None
    one_per_job: OnePerJob = "all"

    def __post_init__(self) -> None:
        unfinished = [s.value for s in self.states if not s.terminal]
        if unfinished:
            # A queued or running job's current attempt has no result that stands (yet).
            raise ValueError(f"only finished jobs have standing results, not {', '.join(unfinished)}")
        if not self.states:
            raise ValueError("no job state selected")
        unknown = [kind for kind in self.finish or () if kind not in FINISH_KINDS]
        if unknown or self.finish == ():
            raise ValueError(f"finish kinds are {', '.join(FINISH_KINDS)}, not {', '.join(unknown) or 'none'}")
        if self.one_per_job not in ONE_PER_JOB:
            raise ValueError(f"one per job: {', '.join(ONE_PER_JOB)}, not {self.one_per_job!r}")

    @property
    def filters_samples(self) -> bool:
        """Whether some standing samples of the selected jobs may be left out."""
        bounds = (self.max_trace_tokens, self.min_trace_tokens, self.finish)
        return self.only_correct or any(b is not None for b in bounds) or self.one_per_job != "all"


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
    """The standing samples of `run` that pass `selection`, by job id, attempt, then sample index.

    Pages are windows of job ids, one short transaction each, sized so that a page holds about
    `page_rows` samples. (Keyset paging by `results.id` with LIMIT looked simpler, but neither SQLite
    nor PostgreSQL can tell how few rows the join keeps, so both sorted the whole run for every page:
    quadratic. A window of job ids is a primary-key range that every planner takes.)
    """
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run.id)).one()
    if first is None:
        return
    settings = run_settings(run)
    window = max(1, page_rows // settings.sampling.samples)
    run_key = {"run": run.name, "run_id": run.id}
    query = (
        select(*(cast(Any, f.source) for f in SELECTED))
        .select_from(Job)
        .join(Result, Result.job_id == Job.id)
        .join(Attempt, Attempt.id == Result.attempt_id)
        .where(_sample_filter(run.id, selection))
        .order_by(Job.id, Result.attempt_id, Result.sample_index)
    )
    records = _pages(sessions, query, run_key, settings.system_prompt, first=first, last=last, window=window)
    if selection.one_per_job == "all":
        yield from records
    else:
        yield from _one_per_job(records, best=selection.one_per_job == "best")


def _pages(
    sessions: sessionmaker[Session],
    query: Any,
    run_key: dict[str, Any],
    run_system: str | None,
    *,
    first: int,
    last: int,
    window: int,
) -> Iterator[ExportRecord]:
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
            yield _record(run_key, row, run_system)
        low += window


def _one_per_job(records: Iterator[ExportRecord], *, best: bool) -> Iterator[ExportRecord]:
    """One record per job: records come grouped by job, so only the current job's best is held."""
    kept: ExportRecord | None = None
    for record in records:
        if kept is not None and kept["job_id"] != record["job_id"]:
            yield kept
            kept = None
        if kept is None or (best and _rank(record) < _rank(kept)):
            kept = record
    if kept is not None:
        yield kept


def _rank(record: ExportRecord) -> tuple[int, int, int]:
    """Lower is better: graded correct, then a closed trace that stopped, then the shorter trace."""
    stopped = record["trace_closed"] and record["finish_reason"] in (None, "stop")
    tokens = record["reasoning_tokens"]
    return (0 if record["correct"] else 1, 0 if stopped else 1, tokens if tokens is not None else 1 << 62)


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


def iter_jobs(sessions: sessionmaker[Session], run: Run, *, page_rows: int = PAGE_ROWS) -> Iterator[SourceJob]:
    """Every job of `run`, whatever its state, by job id (the order its source gave them), in pages of job
    ids like `iter_records` (flat memory)."""
    with sessions() as session:
        first, last = session.execute(select(func.min(Job.id), func.max(Job.id)).where(Job.run_id == run.id)).one()
    if first is None:
        return
    query = (
        select(Job.id, Job.images, Job.question, Job.reference, Job.meta, Job.state, Job.source_row)
        .where(Job.run_id == run.id)
        .order_by(Job.id)
    )
    for low in range(first, last + 1, page_rows):
        with sessions() as session:
            page = session.connection().execute(query.where(Job.id >= low, Job.id < low + page_rows)).all()
        for row in page:
            yield SourceJob(*row)


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


def _record(run_key: dict[str, Any], row: Sequence[Any], run_system: str | None) -> ExportRecord:
    record: dict[str, Any] = {**run_key, **dict(zip(_SELECTED_NAMES, row, strict=True))}
    params = record["system"]  # the job's params, selected under the field's name
    record["system"] = (params.get("system") if isinstance(params, dict) else None) or run_system
    record["timings"] = {name: record.pop(name) for name in TIMING_FIELDS}
    return cast(ExportRecord, record)
