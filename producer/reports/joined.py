"""`export --format parquet --join-source`: the annotations back onto the dataset, one Parquet row per source
row, in source order.

A source row is the run of consecutive jobs (by id, the order submit read them) that submit numbered as
one row (`jobs.source_row`: the jobs of one row's several questions, `-q` repeated). Jobs submitted before
that number was recorded are grouped by what a row's jobs share: images, reference and metadata (two
adjacent rows that agree in all three and differ only in their own question then read as one row).

Columns: `row` (0-based, in source order), `images` (the URIs the jobs read), `reference`, then the source's
own columns as its metadata holds them (a manifest's or Parquet's extra columns, a WebDataset sample's
`shard`, `key` and `.json` fields; typed from the first rows; a value of another type, or a column first
seen later, goes to `metadata`, JSON text, so that nothing is lost), then per question `question`,
`answer`, `state` and, when asked, `trace`, `finish`, `correct` (suffixed `_1`, `_2`, … when rows ask
several questions; prefixed `vlmbatch_` when the source has a column of one of those names, as MMMU has
`answer`). A job without a standing sample that passes the filters has a null answer. A sampled
job's answer is its first sample (`--one-per-job best` picks the best).

Written in files of `shard_rows` rows (`part-00000.parquet`, …) into a local folder, or through the object
store to `s3://bucket/prefix/` (each file staged locally, then uploaded in parts). Memory holds one row group.
"""

from __future__ import annotations

import functools
import json
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import S3Objects
from vlmbatch.producer.reports.fields import ExportRecord
from vlmbatch.producer.reports.records import PAGE_ROWS, ExportFilter, SourceJob, iter_jobs, iter_records
from vlmbatch.schema.contracts.states import TERMINAL_STATES
from vlmbatch.schema.ledger.runs import RunView

JOIN_EXTRAS = ("trace", "finish", "correct")
DEFAULT_SHARD_ROWS = 1_000_000
ROW_GROUP_ROWS = 10_000
_OWN = ("row", "images", "reference", "metadata")
_PER_QUESTION = ("question", "answer", "state", "trace", "finish", "correct")


@dataclass(frozen=True)
class JoinOptions:
    extras: tuple[str, ...] = ()
    shard_rows: int = DEFAULT_SHARD_ROWS
    row_group_rows: int = ROW_GROUP_ROWS


@dataclass
class JoinReport:
    rows: int = 0
    files: list[str] = field(default_factory=list)
    questions: int = 0


@dataclass
class _SourceRow:
    jobs: list[SourceJob]


def export_joined(
    sessions: sessionmaker[Session],
    *,
    run: RunView,
    out: str,
    selection: ExportFilter,
    options: JoinOptions,
    s3: S3Objects | None = None,
    page_rows: int = PAGE_ROWS,
) -> JoinReport:
    """Write `run`'s source rows with their answers to `out` (a folder, or `s3://bucket/prefix/` through
    `s3`). Raises OSError, the store's errors; database errors propagate."""
    answers = _first_sample_per_job(sessions, run, selection, page_rows)
    rows = _source_rows(iter_jobs(sessions, run, page_rows=page_rows))
    report = JoinReport()
    shard = _Shard(out, s3)
    buffer: list[_SourceRow] = []
    layout: _Layout | None = None
    in_file = 0
    group = min(options.row_group_rows, options.shard_rows)
    try:
        for row in rows:
            buffer.append(row)
            if len(buffer) < group:
                continue
            layout = layout or _Layout.of(buffer, options.extras)
            in_file = _flush(shard, layout, buffer, answers, report, in_file, options)
            buffer = []
        if buffer or layout is None:
            layout = layout or _Layout.of(buffer, options.extras)
            _flush(shard, layout, buffer, answers, report, in_file, options)
        shard.close(report)
    except BaseException:
        shard.abandon()
        raise
    report.questions = layout.questions
    return report


def _flush(
    shard: _Shard,
    layout: _Layout,
    rows: list[_SourceRow],
    answers: _Answers,
    report: JoinReport,
    in_file: int,
    options: JoinOptions,
) -> int:
    if in_file >= options.shard_rows:
        shard.close(report)
        in_file = 0
    shard.write(layout, [layout.values(report.rows + n, row, answers) for n, row in enumerate(rows)])
    report.rows += len(rows)
    return in_file + len(rows)


def _source_rows(jobs: Iterator[SourceJob]) -> Iterator[_SourceRow]:
    current: list[SourceJob] = []
    for job in jobs:
        if current and _row_key(job) != _row_key(current[0]):
            yield _SourceRow(current)
            current = []
        current.append(job)
    if current:
        yield _SourceRow(current)


def _row_key(job: SourceJob) -> tuple[Any, ...]:
    if job.source_row is not None:
        return (job.source_row,)
    return (job.images, job.reference, json.dumps(job.metadata, sort_keys=True, default=str))


class _Answers:
    """The chosen sample of each job, read alongside the jobs (both by job id): only samples of jobs not
    yet reached are held."""

    def __init__(self, records: Iterator[ExportRecord]) -> None:
        self._records = records
        self._next: ExportRecord | None = next(records, None)

    def of(self, job_id: int) -> ExportRecord | None:
        while self._next is not None and self._next["job_id"] < job_id:
            self._next = next(self._records, None)
        if self._next is not None and self._next["job_id"] == job_id:
            return self._next
        return None


def _first_sample_per_job(
    sessions: sessionmaker[Session], run: RunView, selection: ExportFilter, page_rows: int
) -> _Answers:
    one = selection.one_per_job if selection.one_per_job != "all" else "first"
    states = tuple(s for s in selection.states if s in TERMINAL_STATES)
    return _Answers(
        iter_records(sessions, run, replace(selection, states=states, one_per_job=one), page_rows=page_rows)
    )


@dataclass(frozen=True)
class _Layout:
    """The file's columns: the source's typed metadata columns and the questions per row, fixed by the
    first rows (a Parquet file has one schema)."""

    meta_types: dict[str, type]
    questions: int
    extras: tuple[str, ...]
    # Put before the per-question columns when the source has a column of that name (MMMU's `answer`).
    prefix: str = ""

    @classmethod
    def of(cls, rows: list[_SourceRow], extras: tuple[str, ...]) -> _Layout:
        questions = max((len(row.jobs) for row in rows), default=1)
        keys = {key for row in rows for key in (row.jobs[0].metadata or {})}
        per_question = {name for stem in _PER_QUESTION for name in _names(stem, questions)}
        prefix = "vlmbatch_" if keys & per_question else ""
        meta_types: dict[str, type] = {}
        for row in rows:
            for key, value in (row.jobs[0].metadata or {}).items():
                if key not in _OWN and value is not None:
                    meta_types.setdefault(key, type(value))
        return cls(meta_types, questions, extras, prefix)

    def names(self, stem: str) -> list[str]:
        return _names(self.prefix + stem, self.questions)

    @functools.cached_property
    def table_schema(self) -> Any:
        return self.schema()

    def schema(self) -> Any:
        import pyarrow as pa

        arrow = {str: pa.string(), int: pa.int64(), float: pa.float64(), bool: pa.bool_()}
        columns: list[tuple[str, Any]] = [
            ("row", pa.int64()),
            ("images", pa.list_(pa.string())),
            ("reference", pa.string()),
        ]
        for key, kind in self.meta_types.items():
            columns.append((key, arrow.get(kind, pa.string())))  # lists and objects as JSON text
        columns.append(("metadata", pa.string()))
        per = [("question", pa.string()), ("answer", pa.string()), ("state", pa.string())]
        per += [(extra, pa.bool_() if extra == "correct" else pa.string()) for extra in self.extras]
        for n in range(self.questions):
            columns += [(self.names(stem)[n], kind) for stem, kind in per]
        return pa.schema(columns)

    def values(self, number: int, row: _SourceRow, answers: _Answers) -> dict[str, Any]:
        first = row.jobs[0]
        if len(row.jobs) > self.questions:
            raise ValueError(
                f"source row {number} has {len(row.jobs)} questions, more than the {self.questions} of the first rows"
            )
        values: dict[str, Any] = {"row": number, "images": list(first.images), "reference": first.reference}
        rest: dict[str, Any] = {}
        for key, value in (first.metadata or {}).items():
            kind = self.meta_types.get(key)
            if kind is None or (value is not None and type(value) is not kind):
                rest[key] = value
            elif kind in (list, dict) and value is not None:
                values[key] = json.dumps(value, ensure_ascii=False)
            else:
                values[key] = value
        values["metadata"] = json.dumps(rest, ensure_ascii=False) if rest else None
        for n, job in enumerate(row.jobs):
            sample = answers.of(job.job_id)
            values[self.names("question")[n]] = job.question
            values[self.names("state")[n]] = job.state
            values[self.names("answer")[n]] = sample["answer"] if sample is not None else None
            if "trace" in self.extras:
                values[self.names("trace")[n]] = sample["reasoning"] if sample is not None else None
            if "finish" in self.extras:
                values[self.names("finish")[n]] = sample["finish_reason"] if sample is not None else None
            if "correct" in self.extras:
                values[self.names("correct")[n]] = sample["correct"] if sample is not None else None
        return values


def _names(stem: str, questions: int) -> list[str]:
    return [stem] if questions == 1 else [f"{stem}_{n}" for n in range(1, questions + 1)]


class _Shard:
    """The file being written: `part-NNNNN.parquet` in the folder, or staged locally for the object store."""

    def __init__(self, out: str, s3: S3Objects | None) -> None:
        self._out, self._s3 = out, s3
        self._writer: Any = None
        self._path: Path | None = None
        self._count = 0
        if not out.startswith("s3://"):
            Path(out).mkdir(parents=True, exist_ok=True)

    def _target(self) -> str:
        name = f"part-{self._count:05d}.parquet"
        return self._out.rstrip("/") + "/" + name if self._out.startswith("s3://") else str(Path(self._out) / name)

    def write(self, layout: _Layout, rows: list[dict[str, Any]]) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq

        if self._writer is None:
            if self._out.startswith("s3://"):
                handle, name = tempfile.mkstemp(suffix=".parquet")
                os.close(handle)
                self._path = Path(name)
            else:
                self._path = Path(self._target() + ".partial")
            self._writer = pq.ParquetWriter(str(self._path), layout.table_schema, compression="zstd")
        self._writer.write_table(pa.Table.from_pylist(rows, schema=layout.table_schema))

    def close(self, report: JoinReport) -> None:
        if self._writer is None or self._path is None:
            return
        self._writer.close()
        target = self._target()
        if self._s3 is not None and target.startswith("s3://"):
            self._s3.upload_file(str(self._path), target)
            self._path.unlink()
        else:
            os.replace(self._path, target)
        report.files.append(target)
        self._writer, self._path = None, None
        self._count += 1

    def abandon(self) -> None:
        if self._writer is not None:
            self._writer.close()
        if self._path is not None:
            self._path.unlink(missing_ok=True)
