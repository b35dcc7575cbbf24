"""Exporting a run's standing results: JSONL, Parquet, and SFT chat records, streamed in flat memory.

What is exported: the *standing* results of a run, i.e. the result rows (one per sample) of the attempts
made since each job's last (re)submission (`schema.standing`: the current attempt, or every sampling
round of an accept-until-M job), for jobs in the selected finished states (default `succeeded`).
Attempts before a resubmission are history and never exported. Filters:
`only_correct` keeps samples graded correct (`correct IS TRUE`); `max_trace_tokens` drops samples whose
`reasoning_tokens` exceed it (samples with unknown reasoning tokens are kept).

Rows are read in pages (windows of job ids, ordered by job then sample), one short transaction per page:
memory stays flat for millions of rows, and no long transaction holds SQLite's write lock (every ledger
transaction is `BEGIN IMMEDIATE`) or PostgreSQL's snapshot while the file is written. The file appears
under its name only once complete (written to `<out>.partial` first).

Formats
-------
`jsonl`: one JSON object per sample::

    {"run": "name", "run_id": 1, "job_id": 7, "attempt_id": 9, "sample_index": 0,
     "images": ["s3://bucket/a.jpg"], "question": "...", "reference": "B" | null,
     "metadata": {...} | null, "state": "succeeded",
     "answer": "...", "reasoning": "..." | null, "raw_text": "...", "finish_reason": "stop" | "length" | null,
     "trace_closed": true, "prompt_tokens": 1234 | null, "completion_tokens": 456,
     "reasoning_tokens": 400 | null, "answer_tokens": 56 | null, "extracted_answer": "B" | null,
     "correct": true | null, "gpu_seconds": 0.8 | null,
     "timings": {"queue_wait_s": ..., "fetch_s": ..., "decode_s": ..., "generation_s": ..., "first_token_s": ...}}

    `prompt_tokens`, `gpu_seconds` and `timings` belong to the attempt (shared by its samples); the other
    token counts are the sample's own. `metadata` is the manifest's extra columns as an object (Arrow
    readers infer it as a struct, so its keys should keep one type across rows; Parquet stores it as text).

`parquet`: the same fields as typed columns (`parquet_schema()`): int64 ids and token counts, string texts,
bool flags, float64 seconds, `images` as list<string>, `timings` as a struct of float64, and `metadata` as a
JSON string (free-form, so no struct type could fit every run). Written in row groups as it streams.

`sft`: one chat record per sample that LLaMA-Factory (ShareGPT style with `messages` and `images`) and
similar fine-tuning frameworks read directly::

    {"messages": [
        {"role": "user", "content": "<image><image>question", "reasoning_content": ""},
        {"role": "assistant", "content": "<think>\\ntrace\\n</think>\\n\\nanswer", "reasoning_content": "trace"}],
     "images": ["s3://bucket/a.jpg", "s3://bucket/b.jpg"], "job_id": 7, "sample_index": 0, "correct": true}

    The user turn holds one `<image>` placeholder per image, in order, before the question. Both turns
    carry the same keys and every value is a string (empty when there is nothing), so Arrow infers one
    struct type for `messages` (with mismatched keys, `datasets` falls back to an untyped Json feature).
    A trace that never closed (a truncated sample, exported only when asked for with `states`) is written
    as it was produced: `<think>\\ntrace` with no `</think>` and no answer.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Literal, Protocol, TypedDict, cast

from sqlalchemy import ColumnElement, and_, func, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session, sessionmaker

from vlmbatch.schema.runs import run_settings
from vlmbatch.schema.standing import result_stands
from vlmbatch.schema.states import JobState
from vlmbatch.schema.tables import Attempt, Job, Result, Run

ExportFormat = Literal["jsonl", "parquet", "sft"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "parquet", "sft")
# Samples per page (about): large enough that round trips don't dominate, small enough that a page of
# 16k-token traces (~64 KB each) stays well under 100 MB.
PAGE_ROWS = 1000
# A Parquet row group is flushed at this many rows or this many bytes of text, whichever comes first:
# long traces would otherwise make a 10k-row group weigh gigabytes in memory.
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20
IMAGE_PLACEHOLDER = "<image>"

TIMING_FIELDS = ("queue_wait_s", "fetch_s", "decode_s", "generation_s", "first_token_s")


@functools.cache
def parquet_schema() -> Any:
    """The `parquet` format's Arrow schema (a `pyarrow.Schema`), declared column by column."""
    # pyarrow is imported here, not at module level: every `vlmbatch` command imports this module's
    # CLI, and pyarrow would add a quarter of a second to each start.
    import pyarrow as pa

    return pa.schema(
        [
            ("run", pa.string()),
            ("run_id", pa.int64()),
            ("job_id", pa.int64()),
            ("attempt_id", pa.int64()),
            ("sample_index", pa.int64()),
            ("images", pa.list_(pa.string())),
            ("question", pa.string()),
            ("reference", pa.string()),
            ("metadata", pa.string()),
            ("state", pa.string()),
            ("answer", pa.string()),
            ("reasoning", pa.string()),
            ("raw_text", pa.string()),
            ("finish_reason", pa.string()),
            ("trace_closed", pa.bool_()),
            ("prompt_tokens", pa.int64()),
            ("completion_tokens", pa.int64()),
            ("reasoning_tokens", pa.int64()),
            ("answer_tokens", pa.int64()),
            ("extracted_answer", pa.string()),
            ("correct", pa.bool_()),
            ("gpu_seconds", pa.float64()),
            ("timings", pa.struct([(name, pa.float64()) for name in TIMING_FIELDS])),
        ]
    )


class Timings(TypedDict):
    queue_wait_s: float | None
    fetch_s: float | None
    decode_s: float | None
    generation_s: float | None
    first_token_s: float | None


class ExportRecord(TypedDict):
    """One standing sample with its job and attempt: a `jsonl` line (see the module docstring)."""

    run: str
    run_id: int
    job_id: int
    attempt_id: int
    sample_index: int
    images: list[str]
    question: str
    reference: str | None
    metadata: dict[str, Any] | None
    state: str
    answer: str
    reasoning: str | None
    raw_text: str
    finish_reason: str | None
    trace_closed: bool
    prompt_tokens: int | None
    completion_tokens: int
    reasoning_tokens: int | None
    answer_tokens: int | None
    extracted_answer: str | None
    correct: bool | None
    gpu_seconds: float | None
    timings: Timings


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


@dataclass(frozen=True)
class ExportReport:
    run_id: int
    format: ExportFormat
    path: Path
    rows: int


def standing_results(run_id: int, states: Sequence[JobState]) -> ColumnElement[bool]:
    """Join-and-filter condition for the standing results of `run_id`'s jobs in `states`: the results of
    the attempts made since each job's last (re)submission (schema.standing). Use with
    `select(...).select_from(Result).join(Job, Job.id == Result.job_id)`."""
    return and_(
        Job.run_id == run_id,
        Job.state.in_([s.value for s in states]),
        result_stands(),
    )


# What each record is read from, under the record's own key (the timings are nested afterwards).
_SOURCES: dict[str, InstrumentedAttribute[Any]] = {
    "job_id": Result.job_id,
    "attempt_id": Result.attempt_id,
    "sample_index": Result.sample_index,
    "images": Job.images,
    "question": Job.question,
    "reference": Job.reference,
    "metadata": Job.meta,
    "state": Job.state,
    "answer": Result.answer,
    "reasoning": Result.reasoning,
    "raw_text": Result.raw_text,
    "finish_reason": Result.finish_reason,
    "trace_closed": Result.trace_closed,
    "prompt_tokens": Attempt.prompt_tokens,
    "completion_tokens": Result.completion_tokens,
    "reasoning_tokens": Result.reasoning_tokens,
    "answer_tokens": Result.answer_tokens,
    "extracted_answer": Result.extracted_answer,
    "correct": Result.correct,
    "gpu_seconds": Attempt.gpu_seconds,
    **{name: getattr(Attempt, name) for name in TIMING_FIELDS},
}


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
        select(*_SOURCES.values())
        .select_from(Job)
        .join(Result, Result.job_id == Job.id)
        .join(Attempt, Attempt.id == Result.attempt_id)
        .where(_sample_filter(run.id, selection))
        .order_by(Job.id, Result.sample_index)
    )
    for low in range(first, last + 1, window):
        with sessions() as session:
            # Through the connection: plain rows, without the ORM's per-row bookkeeping.
            page = session.connection().execute(query.where(Job.id >= low, Job.id < low + window)).all()
        for row in page:
            yield _record(run_key, row)


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
    record: dict[str, Any] = {**run_key, **dict(zip(_SOURCES, row, strict=True))}
    record["timings"] = {name: record.pop(name) for name in TIMING_FIELDS}
    return cast(ExportRecord, record)


def sft_record(record: ExportRecord) -> dict[str, Any]:
    """The `sft` chat record of one exported sample (format in the module docstring)."""
    trace = (record["reasoning"] or "").strip()
    if record["trace_closed"]:
        reply = f"<think>\n{trace}\n</think>\n\n{record['answer'].strip()}"
    else:
        reply = f"<think>\n{trace}"
    prompt = IMAGE_PLACEHOLDER * len(record["images"]) + record["question"]
    return {
        "messages": [
            {"role": "user", "content": prompt, "reasoning_content": ""},
            {"role": "assistant", "content": reply, "reasoning_content": trace},
        ],
        "images": record["images"],
        "job_id": record["job_id"],
        "sample_index": record["sample_index"],
        "correct": record["correct"],
    }


class RecordWriter(Protocol):
    def write(self, record: ExportRecord) -> None: ...

    def close(self) -> None: ...


class _JsonLinesWriter:
    def __init__(self, path: Path, shape: Callable[[ExportRecord], Any]) -> None:
        self._file: IO[str] = path.open("w", encoding="utf-8", newline="\n")
        self._shape = shape

    def write(self, record: ExportRecord) -> None:
        self._file.write(json.dumps(self._shape(record), ensure_ascii=False, separators=(",", ":")))
        self._file.write("\n")

    def close(self) -> None:
        self._file.close()


class _ParquetWriter:
    def __init__(self, path: Path, *, row_group_rows: int, row_group_bytes: int) -> None:
        import pyarrow.parquet as pq

        self._writer = pq.ParquetWriter(str(path), parquet_schema(), compression="zstd")
        self._row_group_rows = row_group_rows
        self._row_group_bytes = row_group_bytes
        self._buffer: list[dict[str, Any]] = []
        self._buffered_bytes = 0

    def write(self, record: ExportRecord) -> None:
        row: dict[str, Any] = dict(record)
        row["metadata"] = None if record["metadata"] is None else json.dumps(record["metadata"], ensure_ascii=False)
        self._buffer.append(row)
        self._buffered_bytes += sum(len(record[k] or "") for k in ("question", "answer", "reasoning", "raw_text"))
        if len(self._buffer) >= self._row_group_rows or self._buffered_bytes >= self._row_group_bytes:
            self._flush()

    def _flush(self) -> None:
        if self._buffer:
            import pyarrow as pa

            table = pa.Table.from_pylist(self._buffer, schema=parquet_schema())
            self._writer.write_table(table, row_group_size=len(self._buffer))
        self._buffer = []
        self._buffered_bytes = 0

    def close(self) -> None:
        self._flush()
        self._writer.close()


def open_writer(
    fmt: ExportFormat, path: Path, *, row_group_rows: int = ROW_GROUP_ROWS, row_group_bytes: int = ROW_GROUP_BYTES
) -> RecordWriter:
    """A writer of `fmt` records into `path`. Raises ValueError for an unknown format."""
    if fmt == "jsonl":
        return _JsonLinesWriter(path, lambda record: record)
    if fmt == "sft":
        return _JsonLinesWriter(path, sft_record)
    if fmt == "parquet":
        return _ParquetWriter(path, row_group_rows=row_group_rows, row_group_bytes=row_group_bytes)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")


def export_run(
    sessions: sessionmaker[Session],
    *,
    run: Run,
    fmt: ExportFormat,
    out: Path,
    selection: ExportFilter | None = None,
    page_rows: int = PAGE_ROWS,
    row_group_rows: int = ROW_GROUP_ROWS,
) -> ExportReport:
    """Write `run`'s standing samples that pass `selection` to `out` in `fmt`; return how many were written.

    `out` is replaced only once the export is complete; on any error the partial file is removed and the
    error propagates (database errors, OSError when `out` cannot be written).
    """
    selection = selection or ExportFilter()
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    rows = 0
    try:
        writer = open_writer(fmt, partial, row_group_rows=row_group_rows)
        try:
            for record in iter_records(sessions, run, selection, page_rows=page_rows):
                writer.write(record)
                rows += 1
        finally:
            writer.close()
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
    return ExportReport(run_id=run.id, format=fmt, path=out, rows=rows)
