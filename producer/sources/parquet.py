"""Parquet with images inside, as Hugging Face `datasets` writes it (MMMU, MathVista, MathVerse...).

An `Image` feature is an Arrow `struct<bytes: binary, path: string>` (the bytes win; `path` is used
only when the bytes are null), a list of them for multi-image rows, or several columns (MMMU's
`image_1`..`image_7`, mostly null). Image columns: `--image-column` names them (in order), else
`image`, else those the footer's `huggingface` metadata marks as images. Null cells are skipped and
lists keep their order, so a job's images are the row's, in column order. Plain binary columns and
strings (URIs, paths, URLs, `data:` URIs) work too.

Submit streams the file a small batch of rows at a time (one row group's pages at most, and about 64 MB
decoded: a decompression bomb is read row by row, and an image over VLMBATCH_MAX_IMAGE_BYTES refuses its
row) and stages each
image's bytes once, content-addressed (media/staging.py); the job stores only the staged object's URI.
The worker then reads one small object per image instead of a Parquet row group, and memory stays flat
on both sides whatever the row count. On S3 the file is read by ranges, never downloaded whole.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from pydantic import ValidationError

from vlmbatch.media.local_roots import LocalRoots, source_root
from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import ObjectStores, local_path
from vlmbatch.producer.sources.base import Row, RowSource
from vlmbatch.producer.sources.locations import resolve_image_ref, stage_bytes
from vlmbatch.producer.sources.manifest import _jsonable
from vlmbatch.producer.sources.parquet_batches import bounded_batches
from vlmbatch.schema.contracts.errors import JobError, SourceError
from vlmbatch.schema.contracts.models import JobSpec

# Rows decoded at once at most (fewer when they are large: parquet_batches.py), so a batch stays small
# whatever the row group size; an oversize image is then refused by the stager (VLMBATCH_MAX_IMAGE_BYTES).
BATCH_ROWS = 64
DEFAULT_IMAGE_COLUMN = "image"
# The columns that tell img2dataset's `parquet` output (status: success, failed_to_download, ...).
IMG2DATASET_COLUMNS = frozenset({"status", "error_message", "key"})


@dataclass(frozen=True)
class ColumnChoice:
    """Which columns hold the images, the question and the reference (`--image-column` etc.)."""

    image_columns: tuple[str, ...] | None = None
    question_column: str = "question"
    reference_column: str = "reference"


def open_parquet_file(uri: str, *, stores: ObjectStores) -> Any:
    """A `pyarrow.parquet.ParquetFile` over a local file or an S3 object (read by ranges), opened once:
    what reads its rows is handed this one (its footer is parsed here, and only here). Raises SourceError."""
    import pyarrow.parquet as pq

    handle: IO[bytes] | str
    try:
        if uri.startswith("s3://"):
            handle = stores.open_reader(uri)
        else:
            path = local_path(uri)
            if not path.is_file():
                raise SourceError(f"{uri}: no such Parquet file")
            handle = str(path)
        return pq.ParquetFile(handle)
    except JobError as exc:
        raise SourceError(f"{uri}: cannot read the Parquet file ({exc.message})") from exc
    except SourceError:
        raise
    except Exception as exc:
        raise SourceError(f"{uri}: not a readable Parquet file ({exc})") from exc


class ArrowStreamFile:
    """An Arrow IPC stream file, as `Dataset.save_to_disk` writes them, read like a `ParquetFile`:
    `schema_arrow` and `iter_batches` (memory-mapped; batches cut to `batch_size` rows)."""

    def __init__(self, path: str) -> None:
        import pyarrow as pa

        try:
            self._reader = pa.ipc.open_stream(pa.memory_map(path))
        except (OSError, pa.ArrowInvalid) as exc:
            raise SourceError(f"{path}: not a readable Arrow stream file ({exc})") from exc
        self.schema_arrow = self._reader.schema

    def iter_batches(self, *, batch_size: int) -> Iterator[Any]:
        for batch in self._reader:
            for start in range(0, batch.num_rows, batch_size):
                yield batch.slice(start, batch_size)


def embedded_image_columns(schema: Any) -> list[str]:
    """The columns that hold images by their type (struct<bytes, path>, binary, lists of them) or by
    the `huggingface` metadata, in schema order."""
    marked = set(_huggingface_image_columns(schema))
    return [field.name for field in schema if field.name in marked or _is_image_type(field.type)]


def wants_embedded_source(parquet: Any, columns: ColumnChoice) -> bool:
    """Whether this Parquet is read by ParquetImagesSource (images inside, or columns named) rather
    than as a manifest of URIs in an `image` column."""
    if columns.image_columns:
        return True
    embedded = embedded_image_columns(parquet.schema_arrow)
    names = parquet.schema_arrow.names
    return bool(embedded) and (DEFAULT_IMAGE_COLUMN not in names or DEFAULT_IMAGE_COLUMN in embedded)


class ParquetImagesSource(RowSource):
    def __init__(
        self,
        uri: str,
        *,
        parquet: Any,
        question: str | None,
        columns: ColumnChoice,
        stager: Stager,
        local_roots: Sequence[Path] = (),
    ) -> None:
        self._uri = uri
        # A `path` cell naming a local file must lie in the file's folder or VLMBATCH_LOCAL_ROOTS.
        self._roots = LocalRoots.of([source_root(uri), *local_roots])
        self._parquet = parquet
        self._question = question
        self._stager = stager
        schema = parquet.schema_arrow
        self._images = self._image_columns(schema, columns)
        missing = [name for name in self._images if name not in schema.names]
        if missing:
            raise SourceError(f"{uri}: no column {', '.join(missing)} (columns: {', '.join(schema.names)})")
        self._question_column = columns.question_column
        self._reference_column = columns.reference_column
        # Image-typed columns not chosen as images are left out of the metadata: bytes never reach the ledger.
        self._skipped = set(self._images) | set(embedded_image_columns(schema))
        self._skipped |= {self._question_column, self._reference_column}
        # img2dataset's `parquet` output: a row whose download failed has status `failed_to_*` and no image.
        self._downloads = set(schema.names) >= IMG2DATASET_COLUMNS
        self.not_downloaded = 0

    def notes(self) -> list[str]:
        """Rows img2dataset could not download, skipped (never refused, never silent)."""
        if not self.not_downloaded:
            return []
        return [f"{self._uri}: {self.not_downloaded} row(s) img2dataset did not download (status), skipped"]

    @property
    def image_columns(self) -> tuple[str, ...]:
        return self._images

    def rows(self) -> Iterator[Row]:
        number = 0
        self.not_downloaded = 0
        try:
            for batch in bounded_batches(self._parquet, max_rows=BATCH_ROWS):
                records = batch.to_pylist()
                self._stager.stage_ahead([blob for record in records for blob in self._embedded_blobs(record)])
                for record in records:
                    number += 1
                    if self._downloads and record.get("status") != "success":
                        self.not_downloaded += 1
                        continue
                    try:
                        yield f"row {number}", self._spec(record)
                    except ValueError as exc:
                        yield f"row {number}", exc
        except JobError as exc:  # the S3 reader failed mid-file
            raise SourceError(f"{self._uri}: cannot read the Parquet file ({exc.message})") from exc
        finally:
            self._stager.close()

    def _embedded_blobs(self, record: dict[str, Any]) -> Iterator[bytes]:
        """The embedded image bytes of a row, to stage ahead of its spec."""
        for name in self._images:
            cells = record.get(name)
            for cell in cells if isinstance(cells, list) else [cells]:
                if isinstance(cell, dict) and isinstance(cell.get("bytes"), bytes) and cell["bytes"]:
                    yield cell["bytes"]
                elif isinstance(cell, bytes) and cell:
                    yield cell

    def _spec(self, record: dict[str, Any]) -> JobSpec:
        images: list[str] = []
        for name in self._images:
            images.extend(self._cell_images(record.get(name), name))
        if not images:
            raise ValueError(f"no image in {', '.join(self._images)}")
        question = record.get(self._question_column)
        if question in (None, ""):
            question = self._question
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"no question (no `{self._question_column}` value and no --question)")
        reference = record.get(self._reference_column)
        if reference is not None and not isinstance(reference, str | int | float):
            raise ValueError(f"`{self._reference_column}` must be text or a number")
        meta = {k: _jsonable(v) for k, v in record.items() if k not in self._skipped}
        try:
            return JobSpec(
                images=tuple(images),
                question=question,
                reference=None if reference in (None, "") else str(reference),
                meta=meta or None,
            )
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from exc

    def _cell_images(self, cell: Any, column: str) -> list[str]:
        """A cell's images in order: a struct, bytes, a string, or a list of them; nulls skipped."""
        if cell is None:
            return []
        if isinstance(cell, list):
            return [uri for element in cell for uri in self._cell_images(element, column)]
        if isinstance(cell, dict):
            if cell.get("bytes"):
                return [stage_bytes(cell["bytes"], self._stager)]
            if isinstance(cell.get("path"), str) and cell["path"]:
                return [self._ref(cell["path"])]
            return []
        if isinstance(cell, bytes):
            return [stage_bytes(cell, self._stager)]
        if isinstance(cell, str):
            return [self._ref(cell)] if cell.strip() else []
        raise ValueError(f"`{column}` holds {type(cell).__name__}, not an image")

    def _ref(self, ref: str) -> str:
        return resolve_image_ref(ref, base_uri=self._uri, stager=self._stager, roots=self._roots)

    def _image_columns(self, schema: Any, columns: ColumnChoice) -> tuple[str, ...]:
        if columns.image_columns:
            return columns.image_columns
        if DEFAULT_IMAGE_COLUMN in schema.names:
            return (DEFAULT_IMAGE_COLUMN,)
        found = embedded_image_columns(schema)
        if not found:
            raise SourceError(f"{self._uri}: no image column (name one with --image-column)")
        return tuple(found)


def _is_image_type(arrow_type: Any) -> bool:
    import pyarrow as pa

    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return _is_image_type(arrow_type.value_type)
    if pa.types.is_struct(arrow_type):
        names = {arrow_type.field(i).name for i in range(arrow_type.num_fields)}
        return names == {"bytes", "path"}
    return bool(pa.types.is_binary(arrow_type) or pa.types.is_large_binary(arrow_type))


def _huggingface_image_columns(schema: Any) -> list[str]:
    """Columns whose feature is `Image`, or a list/sequence of `Image`, in the `huggingface` metadata."""
    raw = (schema.metadata or {}).get(b"huggingface")
    if not raw:
        return []
    try:
        features = json.loads(raw).get("info", {}).get("features", {})
    except (ValueError, AttributeError, RecursionError):
        return []
    if not isinstance(features, dict):
        return []
    return [name for name, feature in features.items() if _is_image_feature(feature)]


def _is_image_feature(feature: Any) -> bool:
    if isinstance(feature, list):  # the older list shorthand: [feature]
        return len(feature) == 1 and _is_image_feature(feature[0])
    if not isinstance(feature, dict):
        return False
    if feature.get("_type") == "Image":
        return True
    return feature.get("_type") in ("List", "Sequence", "LargeList") and _is_image_feature(feature.get("feature"))
