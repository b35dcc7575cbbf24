"""The export formats' file writers: JSON lines (`jsonl`) and Parquet in row groups. The `openai` format has a
module of its own (openai_batch.py), and `sft` / `internvl` write dataset folders (dataset.py)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, Literal, Protocol

from vlmbatch.producer.reports.fields import FIELDS, ExportRecord, parquet_schema

ExportFormat = Literal["jsonl", "parquet", "sft", "internvl", "openai", "rejects"]
EXPORT_FORMATS: tuple[ExportFormat, ...] = ("jsonl", "parquet", "sft", "internvl", "openai", "rejects")
# A Parquet row group is flushed at this many rows or this many bytes of text, whichever comes first:
# long traces would otherwise make a 10k-row group weigh gigabytes in memory.
ROW_GROUP_ROWS = 10_000
ROW_GROUP_BYTES = 64 << 20
_JSON_FIELDS = tuple(f.name for f in FIELDS if f.arrow == "json")
_TEXT_FIELDS = ("question", "answer", "reasoning", "raw_text")


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
        for name in _JSON_FIELDS:  # free-form: no Arrow type fits every run, so stored as JSON text
            row[name] = None if row[name] is None else json.dumps(row[name], ensure_ascii=False)
        self._buffer.append(row)
        self._buffered_bytes += sum(len(row[name] or "") for name in _TEXT_FIELDS)
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
    """A writer of `fmt` records into `path`. Raises ValueError for an unknown format (and for `openai`,
    `sft` and `internvl`, which write more than one file: `export_run` calls their writers)."""
    if fmt == "jsonl":
        return _JsonLinesWriter(path, lambda record: record)
    if fmt == "parquet":
        return _ParquetWriter(path, row_group_rows=row_group_rows, row_group_bytes=row_group_bytes)
    raise ValueError(f"unknown export format {fmt!r}; expected one of {', '.join(EXPORT_FORMATS)}")
