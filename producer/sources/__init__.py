"""Job sources: where image+question jobs come from. Each yields JobSpecs as a stream (never the whole
listing in memory) and validates itself before anything is written, so a bad source changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Protocol

from schema.errors import SourceError
from schema.models import JobSpec

MANIFEST_SUFFIXES = (".jsonl", ".csv", ".parquet")


# A check applied to every spec while validating; it raises ValueError for a spec that must be refused.
SpecCheck = Callable[[JobSpec], None]


class Source(Protocol):
    """A stream of job specs. `validate` raises SourceError naming every problem it finds."""

    @property
    def uri(self) -> str: ...

    def validate(self, check: SpecCheck | None = None) -> None: ...

    def specs(self) -> Iterator[JobSpec]: ...


def open_source(uri: str, *, question: str | None, s3_endpoint_url: str | None) -> Source:
    """The source for `uri`: a manifest file (.jsonl/.csv/.parquet), an `s3://bucket/prefix`, or a
    local folder. `question` applies to every job that does not bring its own."""
    from producer.sources.folder import FolderSource
    from producer.sources.manifest import ManifestSource
    from producer.sources.s3 import S3PrefixSource

    if uri.lower().endswith(MANIFEST_SUFFIXES):
        return ManifestSource(uri, question=question, s3_endpoint_url=s3_endpoint_url)
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
