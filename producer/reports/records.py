"""Reading a run's standing results for export: the SQL selection derived from the field table, in pages
of job ids (flat memory, short transactions)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, cast

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.reports.fields import SELECTED, TIMING_FIELDS, ExportRecord
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger import export_reads
from vlmbatch.schema.ledger.export_reads import FailedJob, SampleFilter, SourceJob, iter_sample_rows, iter_source_jobs
from vlmbatch.schema.ledger.runs import RunView, run_settings

# Samples per page (about): large enough that round trips don't dominate, small enough that a page of
# 16k-token traces (~64 KB each) stays well under 100 MB.
PAGE_ROWS = 1000
_SELECTED_NAMES = tuple(f.name for f in SELECTED)
_SELECTED_SOURCES = tuple(f.source for f in SELECTED if f.source is not None)

__all__ = ["FailedJob", "SourceJob"]  # read by the ledger, exported by these readers


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

    def samples(self) -> SampleFilter:
        """The part of the selection the ledger's read applies (one per job is chosen here)."""
        return SampleFilter(
            states=self.states,
            only_correct=self.only_correct,
            max_trace_tokens=self.max_trace_tokens,
            min_trace_tokens=self.min_trace_tokens,
            finish=self.finish,
        )

    @property
    def filters_samples(self) -> bool:
        """Whether some standing samples of the selected jobs may be left out."""
        bounds = (self.max_trace_tokens, self.min_trace_tokens, self.finish)
        return self.only_correct or any(b is not None for b in bounds) or self.one_per_job != "all"


def iter_records(
    sessions: sessionmaker[Session], run: RunView, selection: ExportFilter, *, page_rows: int = PAGE_ROWS
) -> Iterator[ExportRecord]:
    """The standing samples of `run` that pass `selection`, by job id, attempt, then sample index.

    Pages are windows of job ids (schema.ledger.export_reads says why), one short transaction each, sized
    so that a page holds about `page_rows` samples.
    """
    settings = run_settings(run)
    window = max(1, page_rows // settings.sampling.samples)
    run_key = {"run": run.name, "run_id": run.id}
    rows = iter_sample_rows(
        sessions, run_id=run.id, columns=_SELECTED_SOURCES, where=selection.samples(), window=window
    )
    records = (_record(run_key, row, settings.system_prompt) for row in rows)
    if selection.one_per_job == "all":
        yield from records
    else:
        yield from _one_per_job(records, best=selection.one_per_job == "best")


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


def iter_jobs(sessions: sessionmaker[Session], run: RunView, *, page_rows: int = PAGE_ROWS) -> Iterator[SourceJob]:
    """Every job of `run`, whatever its state, by job id (the order its source gave them), in pages of job
    ids like `iter_records` (flat memory)."""
    return iter_source_jobs(sessions, run_id=run.id, page_rows=page_rows)


def iter_failed_jobs(
    sessions: sessionmaker[Session], run: RunView, states: Sequence[JobState], *, page_rows: int = PAGE_ROWS
) -> Iterator[FailedJob]:
    """`run`'s jobs in `states`, by job id, in pages of job ids like `iter_records` (flat memory)."""
    return export_reads.iter_failed_jobs(sessions, run_id=run.id, states=states, page_rows=page_rows)


def _record(run_key: dict[str, Any], row: Sequence[Any], run_system: str | None) -> ExportRecord:
    record: dict[str, Any] = {**run_key, **dict(zip(_SELECTED_NAMES, row, strict=True))}
    params = record["system"]  # the job's params, selected under the field's name
    record["system"] = (params.get("system") if isinstance(params, dict) else None) or run_system
    record["timings"] = {name: record.pop(name) for name in TIMING_FIELDS}
    return cast(ExportRecord, record)
