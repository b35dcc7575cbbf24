"""Job sources: where image+question jobs come from. Each yields JobSpecs as a stream (never the whole
listing in memory) and validates itself before anything is written, so a bad source changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Protocol

from vlmbatch.schema.errors import SourceError
from vlmbatch.schema.models import JobSpec

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
        if self.total == 1:  # one line, for the terminal and for logs
            raise SourceError(f"{self._uri}: 1 malformed row; nothing was submitted: {self.shown[0]}")
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
    uri: str, *, question: str | None, s3_endpoint_url: str | None, local_roots: Sequence[Path] = ()
) -> Source:
    """The source for `uri`: a manifest file (.jsonl/.csv/.parquet), an `s3://bucket/prefix`, or a
    local folder. `question` applies to every job that does not bring its own. A manifest's local images
    must lie in its own folder or under `local_roots` (VLMBATCH_LOCAL_ROOTS)."""
    from vlmbatch.producer.sources.folder import FolderSource
    from vlmbatch.producer.sources.manifest import ManifestSource
    from vlmbatch.producer.sources.s3 import S3PrefixSource

    if uri.lower().endswith(MANIFEST_SUFFIXES):
        return ManifestSource(uri, question=question, s3_endpoint_url=s3_endpoint_url, local_roots=local_roots)
    if uri.startswith("s3://"):
        return S3PrefixSource(uri, question=_required(question, uri), s3_endpoint_url=s3_endpoint_url)
    path = Path(uri.removeprefix("file://"))
    if path.is_dir():
        return FolderSource(path, question=_required(question, uri))
    raise SourceError(f"{uri}: not a folder, an s3:// prefix or a manifest (.jsonl, .csv, .parquet)")


def _required(question: str | None, uri: str) -> str:
    if not question:
        raise SourceError(f"{uri}: a question is required (--question or --question-file)")
    return question
