"""A manifest file (.jsonl, .csv or .parquet), local or on S3, one job per row.

Columns: `image` (a URI, path, http(s) URL or base64 `data:` URI; several as a list in JSONL/Parquet or
`;`-separated in CSV; none, or an empty cell, for a text-only request), optional `question` (overrides
the CLI question), optional `reference` (the ground-truth answer), optional `max_tokens`, `temperature`,
`top_p`, `seed` (this row's sampling, in place of the run's), and any other columns, kept as the job's
metadata. Relative paths are resolved against the manifest's own folder; local paths (relative, absolute
or `file://`) must stay inside that folder or a folder of `VLMBATCH_LOCAL_ROOTS`.

Malformed rows are reported with their line number: recorded as the run's rejects, or, under `--strict`,
refusing the whole submit before a single job is written (producer/sources/base.py, RejectPolicy).
"""

from __future__ import annotations

import csv
import datetime as dt
import decimal
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path, PurePosixPath
from typing import IO, Any

from pydantic import ValidationError

from vlmbatch.media.local_roots import LocalRoots, source_root
from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import local_path
from vlmbatch.producer.sources.base import Row, RowSource, rewound_text
from vlmbatch.producer.sources.locations import resolve_image_ref
from vlmbatch.producer.sources.parquet_batches import bounded_batches
from vlmbatch.schema.contracts.errors import JobError, SourceError
from vlmbatch.schema.contracts.models import SAMPLING_COLUMNS, JobParams, JobSpec

CSV_IMAGE_SEPARATOR = ";"
PARQUET_BATCH_ROWS = 8192
_RESERVED = ("image", "question", "reference", *SAMPLING_COLUMNS)


class RowError(ValueError):
    pass


class ManifestSource(RowSource):
    def __init__(
        self,
        uri: str,
        *,
        question: str | None,
        reader: IO[bytes] | None = None,
        parquet: Any = None,
        stager: Stager | None = None,
        local_roots: Sequence[Path] = (),
    ) -> None:
        """The manifest comes opened (by `open_source`, which may have read some of it to tell what it
        is): a .jsonl or .csv as `reader` (ObjectStores.open_reader: on S3 read by ranges), a .parquet
        as `parquet` (a pyarrow ParquetFile). Each pass over the rows reads it from its start."""
        if not uri.startswith("s3://"):
            # Absolute, so that the run records where its local images may come from (media/local_roots.py).
            uri = str(local_path(uri).absolute())
        self._uri = uri
        # Where `data:` URIs are staged (producer/sources/locations.py); None refuses them.
        self._stager = stager
        # Local images may come from the manifest's own folder and VLMBATCH_LOCAL_ROOTS, nowhere else.
        self._roots = LocalRoots.of([source_root(uri), *local_roots])
        self._question = question
        suffix = PurePosixPath(uri.split("?", 1)[0]).suffix.lower()
        if suffix not in (".jsonl", ".csv", ".parquet"):
            raise SourceError(f"{uri}: a manifest must end in .jsonl, .csv or .parquet")
        if (parquet is not None) != (suffix == ".parquet") or (reader is not None) == (suffix == ".parquet"):
            raise ValueError(f"{uri}: a .parquet manifest comes as `parquet`, any other as `reader`")
        self._format = suffix
        self._reader = reader
        self._parquet = parquet

    def rows(self) -> Iterator[Row]:
        for where, record in self._records():
            try:
                yield where, self._spec(record)
            except RowError as exc:
                yield where, exc

    # -- rows ------------------------------------------------------------------------------------------

    def _spec(self, record: Any) -> JobSpec:
        if isinstance(record, RowError):
            raise record
        if not isinstance(record, dict):
            raise RowError("not an object")
        images = record.get("image")
        if images is None or images == "" or images == []:
            uris: list[str] = []  # a text-only request
        elif isinstance(images, str):
            uris = [images]
        elif isinstance(images, list) and all(isinstance(u, str) for u in images):
            uris = list(images)
        else:
            raise RowError("`image` must be a string or a list of strings")
        question = record.get("question")
        if question in (None, ""):
            question = self._question
        if not isinstance(question, str) or not question.strip():
            raise RowError("no question (no `question` column value and no --question)")
        reference = record.get("reference")
        if reference is not None and not isinstance(reference, str | int | float):
            raise RowError("`reference` must be text or a number")
        meta = {k: _jsonable(v) for k, v in record.items() if k not in _RESERVED}
        try:
            return JobSpec(
                images=tuple(self._resolve(u) for u in uris),
                question=question,
                reference=None if reference in (None, "") else str(reference),
                meta=meta or None,
                params=_sampling_params(record),
            )
        except ValidationError as exc:
            raise RowError(exc.errors()[0]["msg"]) from exc

    def _resolve(self, uri: str) -> str:
        try:
            return resolve_image_ref(uri, base_uri=self._uri, stager=self._stager, roots=self._roots)
        except ValueError as exc:
            raise RowError(str(exc)) from exc

    # -- reading ---------------------------------------------------------------------------------------

    def _records(self) -> Iterator[tuple[str, Any]]:
        try:
            if self._parquet is not None:
                yield from _parquet_records(self._parquet, self._uri)
            elif self._format == ".jsonl":
                assert self._reader is not None
                self._reader.seek(0)
                yield from _jsonl_records(self._reader)
            else:
                assert self._reader is not None
                yield from _csv_records(self._reader, self._uri)
        except JobError as exc:  # the S3 reader failed mid-file
            raise SourceError(f"{self._uri}: cannot read the manifest ({exc.message})") from exc


def _jsonl_records(lines: IO[bytes]) -> Iterator[tuple[str, Any]]:
    for number, raw in enumerate(lines, start=1):
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            yield f"line {number}", RowError(f"not valid UTF-8 (byte {exc.start + 1})")
            continue
        if not line.strip():
            continue
        try:
            yield f"line {number}", json.loads(line)
        except json.JSONDecodeError as exc:
            yield f"line {number}", RowError(f"invalid JSON ({exc.msg})")
        except RecursionError:
            yield f"line {number}", RowError("nested too deeply")


def _csv_records(lines: IO[bytes], uri: str) -> Iterator[tuple[str, Any]]:
    # surrogateescape: a line of invalid UTF-8 is reported with its number instead of ending the read.
    with rewound_text(lines, errors="surrogateescape", newline="") as handle:
        reader = csv.DictReader(handle)
        if reader.fieldnames is None or "image" not in reader.fieldnames:
            raise SourceError(f"{uri}: the CSV header has no `image` column")
        for row in _csv_rows(reader, uri):
            where = f"line {reader.line_num}"
            if any(isinstance(v, str) and _SURROGATES.search(v) for v in row.values()):
                yield where, RowError("not valid UTF-8")
                continue
            if None in row:
                yield where, RowError("more cells than header columns")
                continue
            record: dict[str, Any] = dict(row)
            cell = record.get("image") or ""
            record["image"] = [p.strip() for p in cell.split(CSV_IMAGE_SEPARATOR) if p.strip()]
            yield where, record


_SURROGATES = re.compile("[\udc80-\udcff]")


def _csv_rows(reader: csv.DictReader[str], uri: str) -> Iterator[dict[str, Any]]:
    """The reader's rows; a row the csv module cannot parse (a cell over its size limit, say) refuses
    the manifest naming its line, since the reader cannot go on past it."""
    while True:
        try:
            yield next(reader)
        except StopIteration:
            return
        except csv.Error as exc:
            raise SourceError(f"{uri}: line {reader.line_num + 1}: {exc}") from exc


def _parquet_records(parquet: Any, uri: str) -> Iterator[tuple[str, Any]]:
    if "image" not in parquet.schema_arrow.names:
        raise SourceError(f"{uri}: the Parquet schema has no `image` column")
    row = 0
    for batch in bounded_batches(parquet, max_rows=PARQUET_BATCH_ROWS):
        for record in batch.to_pylist():
            row += 1
            yield f"row {row}", record


def _sampling_params(record: dict[str, Any]) -> JobParams | None:
    """The row's own sampling (`max_tokens`, `temperature`, `top_p`, `seed`), validated like the flags."""
    given = {k: record[k] for k in SAMPLING_COLUMNS if record.get(k) not in (None, "")}
    if not given:
        return None
    try:
        return JobParams.model_validate(given)
    except ValidationError as exc:
        error = exc.errors()[0]
        raise RowError(f"`{error['loc'][0]}`: {error['msg']}") from exc


def _jsonable(value: Any) -> Any:
    """Metadata values as JSON (Parquet may hold dates, decimals, bytes)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, dt.date | dt.datetime | dt.time):
        return value.isoformat()
    if isinstance(value, decimal.Decimal):
        return str(value)
    if isinstance(value, bytes):
        return value.hex()
    return str(value)
