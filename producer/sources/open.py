"""Which source a SOURCE argument names: decided once, from its form and what the first look finds, and
then built. The one module that imports every source (they import `sources.base`, never this).

What the first look opened or listed is handed to the source, which reads it from there: a manifest or
batch file's reader (its first lines stay in the reader's buffer), a Parquet file's `ParquetFile` (its
footer parsed once), an S3 prefix's shard listing. Every read goes through the `ObjectStores` the command
built from its settings (media/stores.py); no source builds a client of its own."""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from vlmbatch.media.staging import Stager
from vlmbatch.media.stores import ObjectStores, local_path
from vlmbatch.producer.sources.base import MANIFEST_SUFFIXES, Source, store_refusal
from vlmbatch.producer.sources.batch_sniff import is_openai_batch
from vlmbatch.producer.sources.folder import FolderSource
from vlmbatch.producer.sources.hub import (
    ChainedSource,
    expand_pattern,
    is_save_to_disk,
    list_data_files,
    resolve_layout,
    save_to_disk_layout,
)
from vlmbatch.producer.sources.manifest import ManifestSource
from vlmbatch.producer.sources.openai_batch import OpenAIBatchSource
from vlmbatch.producer.sources.parquet import (
    ArrowStreamFile,
    ColumnChoice,
    ParquetImagesSource,
    open_parquet_file,
    wants_embedded_source,
)
from vlmbatch.producer.sources.prompts import PromptedSource, Prompting
from vlmbatch.producer.sources.s3 import S3PrefixSource
from vlmbatch.producer.sources.survey import nothing_found
from vlmbatch.producer.sources.webdataset import (
    SHARD_SUFFIX,
    WebDatasetSource,
    folder_holds_shards,
    is_brace_pattern,
    looks_like_shards,
    prefix_shards,
)
from vlmbatch.schema.contracts.errors import InputNotFound, JobError, SourceError

# The reader's buffer for a manifest or batch file: each S3 range GET fetches this much.
LINES_BUFFER = 4 << 20


@dataclass(frozen=True)
class FileReading:
    """What reading one file of a source takes besides its URI (a single file, or each of a dataset's):
    the stores it is read through, the question rows without one get, the columns chosen, where embedded
    images are staged (None refuses them) and the local folders its rows' paths may name."""

    stores: ObjectStores
    question: str | None
    columns: ColumnChoice
    stager: Stager | None
    local_roots: tuple[Path, ...]


def open_source(
    uri: str,
    *,
    stores: ObjectStores,
    prompting: Prompting | None = None,
    columns: ColumnChoice | None = None,
    stage_to: str | None = None,
    local_roots: Sequence[Path] = (),
    max_image_bytes: int | None = None,
    config: str | None = None,
    split: str | None = None,
) -> Source:
    """The source for `uri`: an OpenAI batch file (.jsonl whose lines carry `custom_id` and `body`), a
    manifest file (.jsonl/.csv/.parquet; a Parquet with embedded images as `datasets` writes it),
    WebDataset shards (a `.tar`, a brace pattern, or a folder / prefix of shards), an `s3://bucket/prefix`,
    or a local folder.

    `prompting` is what is asked of every row that does not bring its own question (one job per question,
    each job's text rendered by its template: producer/sources/prompts.py); none: each row brings its own.
    `columns` names
    the image, question and reference columns of embedded Parquet and WebDataset samples; `stage_to` is
    where embedded image bytes are staged (None: embedded bytes are refused). `stage_to` also takes
    an OpenAI batch file's `data:` images. A manifest's local images must lie in
    its own folder or under `local_roots` (VLMBATCH_LOCAL_ROOTS). A folder or prefix of Parquet shards
    (the Hub's layouts), a Parquet glob or brace pattern, and a `save_to_disk` folder are read file by
    file (producer/sources/hub.py); `config` and `split` choose among a dataset's files. An embedded
    image over `max_image_bytes` is a malformed row. `stores` reads and lists local files and S3 (built
    once by the command, `ObjectStores.from_settings`)."""

    uri = absolute_source(uri)
    prompting = prompting or Prompting()
    given = prompting.default_question
    stager = Stager(stage_to, stores=stores, max_bytes=max_image_bytes) if stage_to else None
    reading = FileReading(stores, given, columns or ColumnChoice(), stager, tuple(local_roots))
    lines = _sniffed_lines(uri, stores) if uri.lower().endswith(".jsonl") else None
    if lines is not None and is_openai_batch(lines):
        if prompting.asks_anything:
            raise SourceError(f"{uri}: an OpenAI batch file brings its own messages (no --question or template)")
        return OpenAIBatchSource(uri, stager=stager, local_roots=local_roots, reader=lines)
    inner = _inner_source(uri, reading, prompting, lines, config=config, split=split)
    return PromptedSource(inner, prompting, describe_empty=lambda: nothing_found(uri, stores=stores))


def _inner_source(
    uri: str,
    reading: FileReading,
    prompting: Prompting,
    lines: IO[bytes] | None,
    *,
    config: str | None,
    split: str | None,
) -> Source:
    """The source of every kind but an OpenAI batch file, before prompting; `lines`: the .jsonl file the
    first look opened."""
    stores, given, columns = reading.stores, reading.question, reading.columns
    _refuse_choice_in_one_file(uri, config, split)
    if uri.lower().endswith(".parquet") and (is_brace_pattern(uri) or any(c in uri for c in "*?[")):
        matched = expand_pattern(uri, stores=stores)
        return ChainedSource(uri, matched, _parquet_opener(reading), f"{uri}: {len(matched)} Parquet file(s)")
    if looks_like_shards(uri):
        return WebDatasetSource(uri, question=given, columns=columns, stores=stores)
    if uri.lower().endswith(".parquet"):
        return _parquet_source(uri, reading)
    if uri.lower().endswith(MANIFEST_SUFFIXES):
        _refuse_columns_for_manifests(uri, columns)
        return ManifestSource(
            uri,
            question=given,
            reader=lines or _open_lines(uri, stores),
            stager=reading.stager,
            local_roots=reading.local_roots,
        )
    # A folder or prefix of shards (img2dataset's metadata-only .parquet beside them); a prefix's listing
    # is handed over.
    if uri.startswith("s3://") and (shards := prefix_shards(uri, stores=stores)):
        return WebDatasetSource(uri, question=given, columns=columns, stores=stores, shards=shards)
    if not uri.startswith("s3://") and local_path(uri).is_dir() and folder_holds_shards(local_path(uri)):
        return WebDatasetSource(uri, question=given, columns=columns, stores=stores)
    if (hub := _dataset_folder(uri, stores, config=config, split=split)) is not None:
        files, note = hub
        opener = _parquet_opener(reading) if not files[0].endswith(".arrow") else _arrow_opener(reading)
        return ChainedSource(uri, files, opener, note)
    if uri.startswith("s3://"):
        _refuse_columns_for_manifests(uri, columns)
        return S3PrefixSource(uri, question=_required(given, uri), stores=stores)
    path = Path(uri.removeprefix("file://"))
    if not path.is_dir():
        raise SourceError(
            f"{uri}: not a folder, an s3:// prefix, a manifest (.jsonl, .csv, .parquet) or WebDataset shards (.tar)"
        )
    # Column flags name sidecar fields (img2dataset's `files` output); without them a question is due.
    question = given if columns != ColumnChoice() else _required(given, uri)
    return FolderSource(
        path,
        question=question,
        question_column=columns.question_column,
        reference_column=columns.reference_column,
    )


def _sniffed_lines(uri: str, stores: ObjectStores) -> IO[bytes] | None:
    """The .jsonl file opened for its first look, or None when it cannot be (the manifest source that
    follows then says why)."""
    try:
        return stores.open_reader(uri, buffer_size=LINES_BUFFER)
    except JobError:
        return None


def _open_lines(uri: str, stores: ObjectStores) -> IO[bytes]:
    """A .jsonl or .csv manifest, opened. Raises SourceError."""
    try:
        return stores.open_reader(uri, buffer_size=LINES_BUFFER)
    except InputNotFound as exc:
        raise SourceError(f"{uri}: no such manifest file") from exc
    except JobError as exc:
        raise store_refusal(uri, "read the manifest", exc) from exc


def _refuse_choice_in_one_file(uri: str, config: str | None, split: str | None) -> None:
    if (config or split) and uri.lower().endswith((*MANIFEST_SUFFIXES, SHARD_SUFFIX)):
        raise SourceError(f"{uri}: --config and --split choose among a dataset folder's files, not in one file")


def _dataset_folder(
    uri: str, stores: ObjectStores, *, config: str | None, split: str | None
) -> tuple[tuple[str, ...], str] | None:
    """The chosen files of a folder or prefix that holds Parquet or Arrow files and no image (a Hub
    dataset, a save_to_disk folder), and the line saying what was chosen; None for any other folder."""
    if not uri.startswith("s3://") and not local_path(uri).is_dir():
        return None
    names, card, images = list_data_files(uri, stores=stores)
    if not names or images:
        if config or split:
            raise SourceError(f"{uri}: --config and --split choose among Parquet or Arrow files; there are none")
        return None
    if is_save_to_disk(names):
        if uri.startswith("s3://"):
            raise SourceError(f"{uri}: a save_to_disk folder on S3: copy it locally, or save it with to_parquet")
        layout = save_to_disk_layout(local_path(uri), split=split)
    else:
        layout = resolve_layout(uri, names, card, config=config, split=split)
    return layout.files, layout.note


def _arrow_opener(reading: FileReading) -> Callable[[str], Source]:
    """The source of one `save_to_disk` Arrow file: its images are `datasets` Image structs, as in Parquet."""

    def open_file(file: str) -> Source:
        if reading.stager is None:
            raise SourceError(f"{file}: embedded images need a staging root (--stage-to)")
        arrow = ArrowStreamFile(file)
        return ParquetImagesSource(
            file,
            parquet=arrow,
            question=reading.question,
            columns=reading.columns,
            stager=reading.stager,
            local_roots=reading.local_roots,
        )

    return open_file


def _parquet_opener(reading: FileReading) -> Callable[[str], Source]:
    return lambda file: _parquet_source(file, reading)


def absolute_source(uri: str) -> str:
    """A local SOURCE (a path, a `file://` URI, a brace pattern) as an absolute path, made once at submit:
    the run records it, and its local root (media/local_roots.py) must not depend on where the submitter
    stood. Remote URIs are returned as given."""
    if "://" in uri and not uri.startswith("file://"):
        return uri
    return os.path.abspath(local_path(uri))  # a brace pattern's braces are kept: only the folder is joined


def _parquet_source(uri: str, reading: FileReading) -> Source:
    """Embedded images (or named image columns) go to ParquetImagesSource; a column of URIs stays a
    manifest. Either reads the `ParquetFile` opened here to tell them apart."""

    parquet = open_parquet_file(uri, stores=reading.stores)
    if not wants_embedded_source(parquet, reading.columns):
        _refuse_columns_for_manifests(uri, reading.columns)
        return ManifestSource(
            uri, question=reading.question, parquet=parquet, stager=reading.stager, local_roots=reading.local_roots
        )
    if reading.stager is None:
        raise SourceError(f"{uri}: embedded images need a staging root (--stage-to)")
    return ParquetImagesSource(
        uri,
        parquet=parquet,
        question=reading.question,
        columns=reading.columns,
        stager=reading.stager,
        local_roots=reading.local_roots,
    )


def _refuse_columns_for_manifests(uri: str, columns: ColumnChoice) -> None:
    """The column flags name columns of embedded Parquet and WebDataset samples: silently ignoring them
    on a URI manifest would hide a mistake."""

    if columns != ColumnChoice():
        raise SourceError(
            f"{uri}: --image-column, --question-column and --reference-column apply to Parquet with images "
            "and to WebDataset shards"
        )


def _required(question: str | None, uri: str) -> str:
    if not question:
        raise SourceError(f"{uri}: a question is required (--question or --question-file)")
    return question
