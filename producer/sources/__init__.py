"""Job sources: where image+question jobs come from. Each yields JobSpecs as a stream (never the whole
listing in memory) and validates itself before anything is written, so a bad source changes nothing."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from vlmbatch.schema.errors import SourceError
from vlmbatch.schema.models import JobSpec

if TYPE_CHECKING:
    from vlmbatch.media.staging import Stager
    from vlmbatch.producer.sources.parquet import ColumnChoice
    from vlmbatch.producer.sources.prompts import Prompting, PromptTemplate

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
    """Collects malformed rows; `raise_if_any` refuses the submit, naming them: the first ones with their
    reason, and every one by number (as ranges, so a million bad rows still make a short message)."""

    def __init__(self, uri: str) -> None:
        self._uri = uri
        self.total = 0
        self.shown: list[str] = []
        self._numbers: list[list[int]] = []  # [first, last] runs of bad row numbers

    def add(self, where: str, error: ValueError) -> None:
        self.total += 1
        if len(self.shown) < MAX_REPORTED_ERRORS:
            self.shown.append(f"{where}: {error}")
        number = where.rsplit(" ", 1)[-1]
        if number.isdigit():
            n = int(number)
            if self._numbers and self._numbers[-1][1] in (n, n - 1):
                self._numbers[-1][1] = n
            else:
                self._numbers.append([n, n])

    def raise_if_any(self) -> None:
        if not self.total:
            return
        if self.total == 1:  # one line, for the terminal and for logs
            raise SourceError(f"{self._uri}: 1 malformed row; nothing was submitted: {self.shown[0]}")
        more = ""
        if self.total > len(self.shown):
            numbers = ", ".join(str(a) if a == b else f"{a}-{b}" for a, b in self._numbers)
            more = f"\n  … and {self.total - len(self.shown)} more; all of them: {numbers}"
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


class RowSource:
    """What every row-by-row source shares: `validate` reports every malformed row at once (nothing is
    written then), and `specs` yields the rows once `validate` has passed. Subclasses give `_uri` and
    `rows()`."""

    _uri: str

    @property
    def uri(self) -> str:
        return self._uri

    def rows(self) -> Iterator[Row]:
        raise NotImplementedError

    def validate(self, check: SpecCheck | None = None) -> None:
        errors = RowErrors(self._uri)
        for where, spec in checked_rows(self, check):
            if isinstance(spec, ValueError):
                errors.add(where, spec)
        errors.raise_if_any()

    def specs(self) -> Iterator[JobSpec]:
        for where, spec in self.rows():
            if isinstance(spec, ValueError):  # validate() runs first; this only guards a file changed meanwhile
                raise SourceError(f"{self._uri}: {where}: {spec}")
            yield spec


def open_source(
    uri: str,
    *,
    question: str | None,
    s3_endpoint_url: str | None,
    questions: Sequence[str] = (),
    prompt_template: PromptTemplate | None = None,
    columns: ColumnChoice | None = None,
    stage_to: str | None = None,
    local_roots: Sequence[Path] = (),
) -> Source:
    """The source for `uri`: an OpenAI batch file (.jsonl whose lines carry `custom_id` and `body`), a
    manifest file (.jsonl/.csv/.parquet; a Parquet with embedded images as `datasets` writes it),
    WebDataset shards (a `.tar`, a brace pattern, or a folder / prefix of shards), an `s3://bucket/prefix`,
    or a local folder.

    `question` and `questions` apply to every job that does not bring its own (one job per question);
    `prompt_template` renders each job's text from its row (producer/sources/prompts.py). `columns` names
    the image, question and reference columns of embedded Parquet and WebDataset samples; `stage_to` is
    where embedded image bytes are staged (None: embedded bytes are refused). `stage_to` also takes
    an OpenAI batch file's `data:` images. A manifest's local images must lie in
    its own folder or under `local_roots` (VLMBATCH_LOCAL_ROOTS)."""
    from vlmbatch.media.staging import Stager
    from vlmbatch.producer.sources.folder import FolderSource
    from vlmbatch.producer.sources.manifest import ManifestSource
    from vlmbatch.producer.sources.openai_batch import OpenAIBatchSource, is_openai_batch
    from vlmbatch.producer.sources.parquet import ColumnChoice
    from vlmbatch.producer.sources.prompts import CLI_QUESTION, PromptedSource, Prompting
    from vlmbatch.producer.sources.s3 import S3PrefixSource
    from vlmbatch.producer.sources.webdataset import (
        WebDatasetSource,
        folder_holds_shards,
        looks_like_shards,
        prefix_holds_shards,
    )

    asked = ((question,) if question else ()) + tuple(questions)
    prompting = Prompting(questions=asked, template=prompt_template)
    given = CLI_QUESTION if prompting.asks_source else (asked[0] if asked else None)
    columns = columns or ColumnChoice()
    stager = Stager(stage_to, s3_endpoint_url=s3_endpoint_url) if stage_to else None
    if uri.lower().endswith(".jsonl") and is_openai_batch(uri):
        if asked or prompt_template is not None:
            raise SourceError(f"{uri}: an OpenAI batch file brings its own messages (no --question or template)")
        return OpenAIBatchSource(uri, stager=stager)
    inner: Source
    if looks_like_shards(uri):
        inner = WebDatasetSource(uri, question=given, columns=columns, s3_endpoint_url=s3_endpoint_url)
    elif uri.lower().endswith(".parquet"):
        inner = _parquet_source(
            uri,
            question=given,
            columns=columns,
            stager=stager,
            s3_endpoint_url=s3_endpoint_url,
            local_roots=local_roots,
        )
    elif uri.lower().endswith(MANIFEST_SUFFIXES):
        _refuse_columns_for_manifests(uri, columns)
        inner = ManifestSource(
            uri, question=given, s3_endpoint_url=s3_endpoint_url, stager=stager, local_roots=local_roots
        )
    elif uri.startswith("s3://"):
        if prefix_holds_shards(uri, s3_endpoint_url=s3_endpoint_url):
            inner = WebDatasetSource(uri, question=given, columns=columns, s3_endpoint_url=s3_endpoint_url)
        else:
            _refuse_columns_for_manifests(uri, columns)
            inner = S3PrefixSource(uri, question=_required(given, prompting, uri), s3_endpoint_url=s3_endpoint_url)
    else:
        path = Path(uri.removeprefix("file://"))
        if not path.is_dir():
            raise SourceError(
                f"{uri}: not a folder, an s3:// prefix, a manifest (.jsonl, .csv, .parquet) or WebDataset shards (.tar)"
            )
        if folder_holds_shards(path):
            inner = WebDatasetSource(uri, question=given, columns=columns, s3_endpoint_url=s3_endpoint_url)
        else:
            _refuse_columns_for_manifests(uri, columns)
            inner = FolderSource(path, question=_required(given, prompting, uri))
    return PromptedSource(inner, prompting)


def _parquet_source(
    uri: str,
    *,
    question: str | None,
    columns: ColumnChoice,
    stager: Stager | None,
    s3_endpoint_url: str | None,
    local_roots: Sequence[Path],
) -> Source:
    """Embedded images (or named image columns) go to ParquetImagesSource; a column of URIs stays a manifest."""
    from vlmbatch.producer.sources.manifest import ManifestSource
    from vlmbatch.producer.sources.parquet import ParquetImagesSource, open_parquet_file, wants_embedded_source

    parquet = open_parquet_file(uri, s3_endpoint_url=s3_endpoint_url)
    if not wants_embedded_source(parquet, columns):
        _refuse_columns_for_manifests(uri, columns)
        return ManifestSource(
            uri, question=question, s3_endpoint_url=s3_endpoint_url, stager=stager, local_roots=local_roots
        )
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


def _required(question: str | None, prompting: Prompting, uri: str) -> str:
    if not question and prompting.template is None:
        raise SourceError(f"{uri}: a question is required (--question or --question-file)")
    from vlmbatch.producer.sources.prompts import CLI_QUESTION

    return question or CLI_QUESTION
