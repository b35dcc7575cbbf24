"""Which source a SOURCE argument names: decided once, from its form and what the first look finds, and
then built. The one module that imports every source (they import `sources.base`, never this)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from vlmbatch.media.staging import Stager
from vlmbatch.producer.sources.base import MANIFEST_SUFFIXES, Source
from vlmbatch.producer.sources.folder import FolderSource
from vlmbatch.producer.sources.manifest import ManifestSource
from vlmbatch.producer.sources.openai_batch import OpenAIBatchSource, is_openai_batch
from vlmbatch.producer.sources.parquet import (
    ColumnChoice,
    ParquetImagesSource,
    open_parquet_file,
    wants_embedded_source,
)
from vlmbatch.producer.sources.prompts import CLI_QUESTION, PromptedSource, Prompting, PromptTemplate
from vlmbatch.producer.sources.s3 import S3PrefixSource
from vlmbatch.producer.sources.webdataset import (
    WebDatasetSource,
    folder_holds_shards,
    looks_like_shards,
    prefix_holds_shards,
)
from vlmbatch.schema.contracts.errors import SourceError


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
    max_image_bytes: int | None = None,
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
    its own folder or under `local_roots` (VLMBATCH_LOCAL_ROOTS). An embedded image over `max_image_bytes`
    is a malformed row."""

    asked = ((question,) if question else ()) + tuple(questions)
    prompting = Prompting(questions=asked, template=prompt_template)
    given = CLI_QUESTION if prompting.asks_source else (asked[0] if asked else None)
    columns = columns or ColumnChoice()
    stager = Stager(stage_to, s3_endpoint_url=s3_endpoint_url, max_bytes=max_image_bytes) if stage_to else None
    if uri.lower().endswith(".jsonl") and is_openai_batch(uri):
        if asked or prompt_template is not None:
            raise SourceError(f"{uri}: an OpenAI batch file brings its own messages (no --question or template)")
        return OpenAIBatchSource(uri, stager=stager, local_roots=local_roots)
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

    parquet = open_parquet_file(uri, s3_endpoint_url=s3_endpoint_url)
    if not wants_embedded_source(parquet, columns):
        _refuse_columns_for_manifests(uri, columns)
        return ManifestSource(
            uri, question=question, s3_endpoint_url=s3_endpoint_url, stager=stager, local_roots=local_roots
        )
    if stager is None:
        raise SourceError(f"{uri}: embedded images need a staging root (--stage-to)")
    return ParquetImagesSource(
        uri, parquet=parquet, question=question, columns=columns, stager=stager, local_roots=local_roots
    )


def _refuse_columns_for_manifests(uri: str, columns: ColumnChoice) -> None:
    """The column flags name columns of embedded Parquet and WebDataset samples: silently ignoring them
    on a URI manifest would hide a mistake."""

    if columns != ColumnChoice():
        raise SourceError(
            f"{uri}: --image-column, --question-column and --reference-column apply to Parquet with images "
            "and to WebDataset shards"
        )


def _required(question: str | None, prompting: Prompting, uri: str) -> str:
    if not question and prompting.template is None:
        raise SourceError(f"{uri}: a question is required (--question or --question-file)")

    return question or CLI_QUESTION
