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
     "correct": true | null, "valid": true | null, "gpu_seconds": 0.8 | null,
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
     "images": ["s3://bucket/a.jpg", "s3://bucket/b.jpg"], "job_id": 7, "attempt_id": 9,
     "sample_index": 0, "correct": true, "valid": true | null}

    The user turn holds one `<image>` placeholder per image, in order, before the question. Both turns
    carry the same keys and every value is a string (empty when there is nothing), so Arrow infers one
    struct type for `messages` (with mismatched keys, `datasets` falls back to an untyped Json feature).
    A trace that never closed (a truncated sample, exported only when asked for with `states`) is written
    as it was produced: `<think>\\ntrace` with no `</think>` and no answer.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.producer.reports.fields import parquet_schema
from vlmbatch.producer.reports.formats import EXPORT_FORMATS, ROW_GROUP_ROWS, ExportFormat, open_writer
from vlmbatch.producer.reports.records import PAGE_ROWS, ExportFilter, iter_records, standing_results
from vlmbatch.schema.tables import Run

__all__ = [
    "EXPORT_FORMATS",
    "ExportFilter",
    "ExportFormat",
    "ExportReport",
    "export_run",
    "iter_records",
    "parquet_schema",
    "standing_results",
]


@dataclass(frozen=True)
class ExportReport:
    run_id: int
    format: ExportFormat
    path: Path
    rows: int


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
