"""Job sources: where image+question jobs come from. Each yields JobSpecs as a stream (never the whole
listing in memory) and validates itself before anything is written, so a bad source changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vlmbatch.schema.errors import SourceError
from vlmbatch.schema.models import JobSpec

if TYPE_CHECKING:
    from vlmbatch.media.staging import Stager
    from vlmbatch.producer.sources.parquet import ColumnChoice

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


# A check applied to every spec while validating; it raises ValueError for a spec that must be refused.
SpecCheck = Callable[[JobSpec], None]
# Where a row is in its source ("line 12", "row 7", a key) and its spec, or why it is malformed.
Row = tuple[str, JobSpec | ValueError]
# Malformed rows listed in full in the error before the rest are only counted.
MAX_REPORTED_ERRORS = 20


class Source(Protocol):
    """A stream of job specs. `validate` raises SourceError naming every problem it finds."""

    @property
    def uri(self) -> str: ...

    def validate(self, check: SpecCheck | None = None) -> None: ...

    def specs(self) -> Iterator[JobSpec]: ...

    def rows(self) -> Iterator[Row]:
        """Every row with its spec or its error, in one pass (for loaders that validate as they go)."""
        ...


class RowErrors:
    """Collects malformed rows; `raise_if_any` refuses the submit, naming them."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.total = 0
        self.shown: list[str] = []

    def add(self, where: str, error: ValueError) -> None:
        self.total += 1
        if len(self.shown) < MAX_REPORTED_ERRORS:
            self.shown.append(f"{where}: {error}")

    def raise_if_any(self) -> None:
        if not self.total:
            return
        more = f"\n  … and {self.total - len(self.shown)} more" if self.total > len(self.shown) else ""
        raise SourceError(
            f"{self._uri}: {self.total} malformed row(s); nothing was submitted:\n  " + "\n  ".join(self.shown) + more
        )


def checked_rows(source: Source, check: SpecCheck | None) -> Iterator[Row]:
    """`source.rows()` with `check` applied to every well-formed spec."""
    for where, spec in source.rows():
        if check is not None and isinstance(spec, JobSpec):
            try:
                check(spec)
            except ValueError as exc:
                yield where, exc
                continue
        yield where, spec


def open_source(
    uri: str,
    *,
    question: str | None,
    s3_endpoint_url: str | None,
    columns: ColumnChoice | None = None,
    stage_to: str | None = None,
) -> Source:
    """The source for `uri`: a manifest file (.jsonl/.csv/.parquet; a Parquet with embedded images as
    `datasets` writes it), WebDataset shards (a `.tar`, a brace pattern, or a folder / prefix of shards),
    an `s3://bucket/prefix`, or a local folder. `question` applies to every job that does not bring its
    own; `columns` names the image, question and reference columns of embedded Parquet and WebDataset
    samples; `stage_to` is where embedded image bytes are staged (None: embedded bytes are refused)."""
    from vlmbatch.media.staging import Stager
    from vlmbatch.producer.sources.folder import FolderSource
    from vlmbatch.producer.sources.manifest import ManifestSource
    from vlmbatch.producer.sources.parquet import ColumnChoice
    from vlmbatch.producer.sources.s3 import S3PrefixSource
    from vlmbatch.producer.sources.webdataset import (
        WebDatasetSource,
        folder_holds_shards,
        looks_like_shards,
        prefix_holds_shards,
    )

    columns = columns or ColumnChoice()
    stager = Stager(stage_to, s3_endpoint_url=s3_endpoint_url) if stage_to else None
    if looks_like_shards(uri):
        return WebDatasetSource(uri, question=question, columns=columns, s3_endpoint_url=s3_endpoint_url)
    if uri.lower().endswith(".parquet"):
        return _parquet_source(uri, question=question, columns=columns, stager=stager, s3_endpoint_url=s3_endpoint_url)
    _refuse_columns_for_manifests(uri, columns)
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        return ManifestSource(uri, question=question, s3_endpoint_url=s3_endpoint_url, stager=stager)
    if uri.startswith("s3://"):
        if prefix_holds_shards(uri, s3_endpoint_url=s3_endpoint_url):
            return WebDatasetSource(uri, question=question, columns=columns, s3_endpoint_url=s3_endpoint_url)
        return S3PrefixSource(uri, question=_required(question, uri), s3_endpoint_url=s3_endpoint_url)
    path = Path(uri.removeprefix("file://"))
    if path.is_dir():
        if folder_holds_shards(path):
            return WebDatasetSource(uri, question=question, columns=columns, s3_endpoint_url=s3_endpoint_url)
        return FolderSource(path, question=_required(question, uri))
    raise SourceError(
        f"{uri}: not a folder, an s3:// prefix, a manifest (.jsonl, .csv, .parquet) or WebDataset shards (.tar)"
    )


def _parquet_source(
    uri: str, *, question: str | None, columns: ColumnChoice, stager: Stager | None, s3_endpoint_url: str | None
) -> Source:
    """Embedded images (or named image columns) go to ParquetImagesSource; a column of URIs stays a manifest."""
    from vlmbatch.producer.sources.manifest import ManifestSource
    from vlmbatch.producer.sources.parquet import ParquetImagesSource, open_parquet_file, wants_embedded_source

    parquet = open_parquet_file(uri, s3_endpoint_url=s3_endpoint_url)
    if not wants_embedded_source(parquet, columns):
        _refuse_columns_for_manifests(uri, columns)
        return ManifestSource(uri, question=question, s3_endpoint_url=s3_endpoint_url, stager=stager)
    if stager is None:
        raise SourceError(f"{uri}: embedded images need a staging root (--stage-to)")
    return ParquetImagesSource(uri, parquet=parquet, question=question, columns=columns, stager=stager)


def _refuse_columns_for_manifests(uri: str, columns: ColumnChoice) -> None:
    """The column flags name columns of embedded Parquet and WebDataset samples: silently ignoring them
    on a URI manifest would hide a mistake."""
    from vlmbatch.producer.sources.parquet import ColumnChoice

    if columns != ColumnChoice():
        raise SourceError(
            f"{uri}: --image-column, --question-column and --reference-column apply to Parquet with images "
            "and to WebDataset shards"
        )


def source_notes(source: Source) -> list[str]:
    """What a source reports besides its jobs (WebDataset samples without an image, for one)."""
    notes = getattr(source, "notes", None)
    return list(notes()) if callable(notes) else []


def _required(question: str | None, uri: str) -> str:
    if not question:
        raise SourceError(f"{uri}: a question is required (--question or --question-file)")
    return question
