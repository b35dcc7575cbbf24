"""Exporting a run's standing results: JSONL, Parquet, SFT and InternVL chat records, and the OpenAI Batch
output format, streamed in flat memory.

What is exported: the *standing* results of a run, i.e. the result rows (one per sample) of the attempts
made since each job's last (re)submission (`schema.ledger.standing`: the current attempt, or every sampling
round of an accept-until-M job), for jobs in the selected finished states (default `succeeded`).
Attempts before a resubmission are history and never exported. Filters (every format, records.py's
`ExportFilter`): `only_correct` keeps samples graded correct (`correct IS TRUE`); `min_trace_tokens` and
`max_trace_tokens` bound `reasoning_tokens` (samples with unknown reasoning tokens are kept); `finish`
keeps samples of the finish kinds named; `one_per_job` keeps each job's first or best sample.

Rows are read in pages (windows of job ids, ordered by job, attempt, then sample), one short transaction per page:
memory stays flat for millions of rows, and no long transaction holds SQLite's write lock (every ledger
transaction is `BEGIN IMMEDIATE`) or PostgreSQL's snapshot while the file is written. The file appears
under its name only once complete (written to `<out>.partial` first).

Formats
-------
`jsonl`: one JSON object per sample::

    {"run": "name", "run_id": 1, "job_id": 7, "attempt_id": 9, "sample_index": 0,
     "images": ["s3://bucket/a.jpg"], "question": "...", "system": "..." | null, "reference": "B" | null,
     "metadata": {...} | null, "state": "succeeded",
     "answer": "...", "reasoning": "..." | null, "raw_text": "...",
     "finish_reason": "stop" | "length" | "context" | "repetition" | null,
     "trace_closed": true, "prompt_tokens": 1234 | null, "completion_tokens": 456,
     "reasoning_tokens": 400 | null, "answer_tokens": 56 | null, "extracted_answer": "B" | null,
     "correct": true | null, "valid": true | null, "grader": "boxed" | null,
     "grader_version": "vlmbatch 0.1.0; math-verify 0.9.0" | null, "thinking_capped": true | null,
     "gpu_seconds": 0.8 | null,
     "timings": {"queue_wait_s": ..., "fetch_s": ..., "decode_s": ..., "generation_s": ..., "first_token_s": ...}}

    `prompt_tokens`, `gpu_seconds` and `timings` belong to the attempt (shared by its samples); the other
    token counts are the sample's own. `metadata` is the manifest's extra columns as an object (Arrow
    readers infer it as a struct, so its keys should keep one type across rows; Parquet stores it as text).

`parquet`: the same fields as typed columns (`parquet_schema()`): int64 ids and token counts, string texts,
bool flags, float64 seconds, `images` as list<string>, `timings` as a struct of float64, and `metadata` as a
JSON string (free-form, so no struct type could fit every run). Written in row groups as it streams.

`sft` and `internvl`: a dataset folder (dataset.py) that LLaMA-Factory (`dataset_dir: DIR`, ShareGPT
`messages` and `images`) and InternVL (`--meta_path DIR/internvl_meta.json`, `conversations` and `image`)
load as they are: records in `records/`, each image once in `images/` named by content hash, as the
model saw it, paths relative to DIR; `dataset_info.json`, the InternVL meta and `provenance.json`. One
record per sample; training.py has the record format, the same keys and types for every run.

`openai`: the OpenAI Batch API's output file, one line per job, and its error file (`<out>.errors.jsonl`
unless named), one line per failed or cancelled job and per input line rejected at submit: every
`custom_id` once across the two. openai_batch.py has the line format. It takes every finished state by
default. A sample filter keeps a job's line with the samples that pass as its choices; a job none of
whose samples pass has no line.

`rejects`: the source rows recorded at submit instead of submitted (schema.ledger.rejects), one JSON
object per row: `{"run_id": 1, "where": "line 12", "line": 12 | null, "reason": "...", "custom_id": ... | null}`.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import ObjectStore
from vlmbatch.producer.reports.dataset import DatasetOptions, export_dataset
from vlmbatch.producer.reports.fields import parquet_schema
from vlmbatch.producer.reports.formats import EXPORT_FORMATS, ROW_GROUP_ROWS, ExportFormat, open_writer
from vlmbatch.producer.reports.identity import CustomIds
from vlmbatch.producer.reports.openai_batch import OpenAIBatchWriter, error_line, reject_line, write_line
from vlmbatch.producer.reports.records import PAGE_ROWS, ExportFilter, iter_failed_jobs, iter_records
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.rejects import iter_rejects
from vlmbatch.schema.ledger.runs import RunView

# The OpenAI format's split: jobs with standing samples go to the output file, the others to the errors.
_WITH_SAMPLES = (JobState.SUCCEEDED, JobState.TRUNCATED)
_WITHOUT_SAMPLES = (JobState.FAILED, JobState.CANCELLED)

__all__ = [
    "EXPORT_FORMATS",
    "ExportFilter",
    "ExportFormat",
    "ExportReport",
    "default_errors_path",
    "export_run",
    "iter_records",
    "parquet_schema",
]


@dataclass(frozen=True)
class ExportReport:
    run_id: int
    format: ExportFormat
    path: Path
    # Records written: samples, or jobs (lines) for `openai`.
    rows: int
    # `openai` only: the error file and its lines (failed and cancelled jobs).
    errors_path: Path | None = None
    errors: int = 0
    # `sft` and `internvl` (a dataset folder): record files, images written, samples left out and why.
    shards: tuple[Path, ...] = ()
    images_written: int = 0
    skipped: int = 0
    skipped_shown: tuple[str, ...] = ()


def default_errors_path(out: Path) -> Path:
    """Where the `openai` format's error file goes unless named: `o.jsonl` → `o.errors.jsonl`."""
    return out.with_name(f"{out.stem}.errors{out.suffix or '.jsonl'}")


def export_run(
    sessions: sessionmaker[Session],
    *,
    run: RunView,
    fmt: ExportFormat,
    out: Path,
    selection: ExportFilter | None = None,
    errors_out: Path | None = None,
    page_rows: int = PAGE_ROWS,
    row_group_rows: int = ROW_GROUP_ROWS,
    cancelled_as: tuple[str, str] | None = None,
    store: ObjectStore | None = None,
    dataset: DatasetOptions | None = None,
) -> ExportReport:
    """Write `run`'s standing samples that pass `selection` to `out` in `fmt`; return how many were written.

    `openai` writes one line per job of the selected states to `out` and the failed and cancelled ones to
    `errors_out` (default `default_errors_path(out)`), a cancelled job's error as `cancelled_as` (code,
    message) when given. `sft` and `internvl` write a dataset folder at `out` (dataset.py), reading the
    images through `store` (required for them). A file is replaced only once the export is complete; on
    any error the partial files are removed and the error propagates (database errors, OSError when a
    file cannot be written, DatasetFolderRefused).
    """
    selection = selection or ExportFilter()
    if fmt in ("sft", "internvl"):
        if store is None:
            raise ValueError(f"the {fmt} format reads the images: give a store")
        folder = export_dataset(
            sessions,
            run=run,
            fmt="sft" if fmt == "sft" else "internvl",
            out=out,
            store=store,
            selection=selection,
            options=dataset or DatasetOptions(),
            page_rows=page_rows,
        )
        return ExportReport(
            run_id=run.id,
            format=fmt,
            path=out,
            rows=folder.rows,
            shards=tuple(folder.shards),
            images_written=folder.images_written,
            skipped=folder.skipped,
            skipped_shown=tuple(folder.skipped_shown),
        )
    if fmt == "openai":
        return _export_openai(
            sessions,
            run=run,
            out=out,
            errors_out=errors_out,
            selection=selection,
            page_rows=page_rows,
            cancelled_as=cancelled_as,
        )
    if fmt == "rejects":
        return _export_rejects(sessions, run=run, out=out)
    rows = 0
    with _replacing(out) as partial:
        writer = open_writer(fmt, partial, row_group_rows=row_group_rows)
        try:
            for record in iter_records(sessions, run, selection, page_rows=page_rows):
                writer.write(record)
                rows += 1
        finally:
            writer.close()
    return ExportReport(run_id=run.id, format=fmt, path=out, rows=rows)


def _export_openai(
    sessions: sessionmaker[Session],
    *,
    run: RunView,
    out: Path,
    errors_out: Path | None,
    selection: ExportFilter,
    page_rows: int,
    cancelled_as: tuple[str, str] | None,
) -> ExportReport:
    errors_out = errors_out or default_errors_path(out)
    if errors_out.resolve() == out.resolve():
        raise ValueError("the openai format's error file must differ from its output file")
    with_samples = tuple(s for s in selection.states if s in _WITH_SAMPLES)
    without = tuple(s for s in selection.states if s in _WITHOUT_SAMPLES)
    errors = 0
    with ExitStack() as stack:  # both files appear only once both are complete
        partial_out = stack.enter_context(_replacing(out))
        partial_errors = stack.enter_context(_replacing(errors_out))
        custom_ids = CustomIds()  # one id space across the output and error files
        writer = OpenAIBatchWriter(
            partial_out, run_id=run.id, model=run.model, created=int(time.time()), custom_ids=custom_ids
        )
        try:
            if with_samples:
                jobs = replace(selection, states=with_samples)
                for record in iter_records(sessions, run, jobs, page_rows=page_rows):
                    writer.write(record)
        finally:
            writer.close()
        with partial_errors.open("w", encoding="utf-8", newline="\n") as file:
            for job in iter_failed_jobs(sessions, run, without, page_rows=page_rows):
                name = custom_ids.of_job(job.job_id, job.metadata)
                write_line(file, error_line(run.id, job, custom_id=name, cancelled_as=cancelled_as))
                errors += 1
            for reject in iter_rejects(sessions, run.id):
                write_line(file, reject_line(run.id, reject, custom_ids))
                errors += 1
    return ExportReport(
        run_id=run.id, format="openai", path=out, rows=writer.lines, errors_path=errors_out, errors=errors
    )


def _export_rejects(sessions: sessionmaker[Session], *, run: RunView, out: Path) -> ExportReport:
    rows = 0
    with _replacing(out) as partial, partial.open("w", encoding="utf-8", newline="\n") as file:
        for reject in iter_rejects(sessions, run.id):
            number = reject.where.rsplit(" ", 1)[-1]
            line = int(number) if reject.where.startswith(("line ", "row ")) and number.isdigit() else None
            record = {"run_id": run.id, "where": reject.where, "line": line, "reason": reject.reason}
            write_line(file, record | {"custom_id": reject.custom_id})
            rows += 1
    return ExportReport(run_id=run.id, format="rejects", path=out, rows=rows)


@contextmanager
def _replacing(out: Path) -> Iterator[Path]:
    """A `.partial` path to write; it replaces `out` when the block ends without error, else is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    partial = out.with_name(out.name + ".partial")
    try:
        yield partial
        os.replace(partial, out)
    except BaseException:
        partial.unlink(missing_ok=True)
        raise
