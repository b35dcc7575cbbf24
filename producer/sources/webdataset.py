"""WebDataset tar shards (img2dataset's output), local or on S3: one job per sample with an image.

SOURCE is a `.tar` file, a brace pattern (`shard-{00000..00099}.tar`), or a folder / S3 prefix of
`.tar` shards. A sample is the run of consecutive members sharing a key (the member's path up to the
first dot of its base name, as WebDataset groups them). Its image members (`jpg jpeg png webp bmp tif
tiff gif`), in shard order, are the job's images; a `.json` member's fields and `.txt`/`.cls` members
(by extension) become the job's metadata, where `--question-column` / `--reference-column` may find the
question and the reference (`--question-column caption`, `--question-column txt`). `shard` and `key`
are kept in the metadata, so an export names each sample.

Submit reads each shard once, as a stream, to learn where every member's bytes lie; a job stores
`tar+<shard>#offset=…&size=…` and the worker reads just that range. Samples without an image member are
counted and reported by submit (`notes`), never dropped in silence.
"""

from __future__ import annotations

import json
import os
import re
import tarfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import IO, Any

from braceexpand import braceexpand
from pydantic import ValidationError

from vlmbatch.media.shards import ScannedMember, TarMember, scan_members
from vlmbatch.media.stores import ObjectStores, local_path, split_s3_uri
from vlmbatch.producer.sources.base import Row, RowSource, store_refusal
from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.schema.contracts.errors import JobError, SourceError
from vlmbatch.schema.contracts.models import JobSpec

IMAGE_EXTENSIONS = frozenset({"jpg", "jpeg", "png", "webp", "bmp", "tif", "tiff", "gif"})
TEXT_EXTENSIONS = frozenset({"txt", "cls"})
SHARD_SUFFIX = ".tar"
# WebDataset's own split of a member path into (key, extension): up to the first dot of the base name.
_KEY_AND_EXTENSION = re.compile(r"^((?:.*/|)[^./]+)\.([^/]*)$")
_SHOWN_KEYS = 10
_MAX_TEXT_BYTES = 1 << 20


def is_brace_pattern(uri: str) -> bool:
    return bool(re.search(r"\{[^{}]*(\.\.|,)[^{}]*\}", uri))


def looks_like_shards(uri: str) -> bool:
    """A `.tar` file or a brace pattern (the folder and prefix cases are told by `folder_holds_shards`)."""
    return uri.lower().endswith(SHARD_SUFFIX) or is_brace_pattern(uri)


def folder_holds_shards(folder: Path) -> bool:
    """True when the folder holds `.tar` shards and no image file (walks until it meets an image)."""
    from vlmbatch.producer.sources.images import looks_like_image

    shards = False
    for _dirpath, dirnames, filenames in os.walk(folder):
        dirnames.sort()
        for name in filenames:
            if looks_like_image(name):
                return False
            shards = shards or name.lower().endswith(SHARD_SUFFIX)
    return shards


def prefix_shards(uri: str, *, stores: ObjectStores) -> tuple[str, ...]:
    """The `.tar` shards an S3 prefix lists, in order, when it lists no image (pages until it meets one);
    () otherwise. The listing is handed to WebDatasetSource, which then lists nothing again."""
    from vlmbatch.producer.sources.images import looks_like_image

    bucket, _prefix = split_s3_uri(uri)
    shards: list[str] = []
    try:
        for key in stores.s3.list_keys(uri):
            if looks_like_image(key):
                return ()
            if key.lower().endswith(SHARD_SUFFIX):
                shards.append(f"s3://{bucket}/{key}")
    except JobError:
        return ()  # S3PrefixSource reports the listing error
    return tuple(shards)


class WebDatasetSource(RowSource):
    def __init__(
        self,
        uri: str,
        *,
        question: str | None,
        columns: ColumnChoice,
        stores: ObjectStores,
        shards: Sequence[str] | None = None,
    ) -> None:
        """`shards`: the shard URIs when the caller listed them already (`prefix_shards`)."""
        self._uri = uri
        self._question = question
        self._columns = columns
        self._stores = stores
        self._listed = tuple(shards) if shards else None
        self._without_image = 0
        self._without_image_keys: list[str] = []

    def notes(self) -> list[str]:
        """What submit reports besides its counts: the samples skipped for want of an image."""
        if not self._without_image:
            return []
        shown = ", ".join(self._without_image_keys)
        more = ", …" if self._without_image > len(self._without_image_keys) else ""
        return [f"{self._without_image} sample(s) without an image member, not submitted: {shown}{more}"]

    def rows(self) -> Iterator[Row]:
        self._without_image = 0
        self._without_image_keys = []
        shards = list(self.shards())
        if not shards:
            raise SourceError(f"{self._uri}: no .tar shards")
        for shard in shards:
            for key, members in self._samples(shard):
                where = f"{shard.rsplit('/', 1)[-1]}:{key}"
                try:
                    spec = self._spec(shard, key, members)
                except ValueError as exc:
                    yield where, exc
                    continue
                if spec is None:
                    self._without_image += 1
                    if len(self._without_image_keys) < _SHOWN_KEYS:
                        self._without_image_keys.append(where)
                    continue
                yield where, spec

    def shards(self) -> Iterator[str]:
        """The shard URIs (`file://…` or `s3://…`) in order."""
        if self._listed is not None:
            yield from self._listed
        elif is_brace_pattern(self._uri):
            for uri in braceexpand(self._uri):
                yield uri if uri.startswith("s3://") else local_path(uri).resolve().as_uri()
        elif self._uri.lower().endswith(SHARD_SUFFIX):
            yield self._uri if self._uri.startswith("s3://") else local_path(self._uri).resolve().as_uri()
        elif self._uri.startswith("s3://"):
            bucket, _prefix = split_s3_uri(self._uri)
            try:
                keys = list(self._stores.s3.list_keys(self._uri))
            except JobError as exc:
                raise store_refusal(self._uri, "list the shards", exc) from exc
            yield from (f"s3://{bucket}/{key}" for key in keys if key.lower().endswith(SHARD_SUFFIX))
        else:
            root = local_path(self._uri).resolve()
            yield from (path.as_uri() for path in sorted(root.rglob(f"*{SHARD_SUFFIX}")) if path.is_file())

    # -- samples ---------------------------------------------------------------------------------------

    def _samples(self, shard: str) -> Iterator[tuple[str, list[tuple[str, TarMember, bytes | None]]]]:
        """(key, [(extension, member, text or json bytes)]) per run of members sharing a key."""
        key: str | None = None
        members: list[tuple[str, TarMember, bytes | None]] = []
        with self._open(shard) as stream:
            try:
                for scanned in scan_members(shard, stream):
                    parts = _KEY_AND_EXTENSION.match(scanned.member.name)
                    if parts is None:
                        continue
                    if parts.group(1) != key:
                        if key is not None:
                            yield key, members
                        key, members = parts.group(1), []
                    extension = parts.group(2).lower()
                    members.append((extension, scanned.member, _small_content(extension, scanned)))
            except tarfile.TarError as exc:
                raise SourceError(f"{shard}: not a readable (uncompressed) tar shard: {exc}") from exc
        if key is not None:
            yield key, members

    def _spec(self, shard: str, key: str, members: list[tuple[str, TarMember, bytes | None]]) -> JobSpec | None:
        images = [member.uri() for extension, member, _ in members if extension.rsplit(".", 1)[-1] in IMAGE_EXTENSIONS]
        if not images:
            return None
        meta: dict[str, Any] = {}
        for extension, _, content in members:
            if content is None:
                continue
            if extension == "json":
                try:
                    fields = json.loads(content)
                except ValueError as exc:
                    raise ValueError(f"`{key}.json` is not valid JSON") from exc
                except RecursionError:
                    raise ValueError(f"`{key}.json` nests too deeply") from None
                meta.update(fields if isinstance(fields, dict) else {"json": fields})
            else:
                meta[extension] = content.decode("utf-8", errors="replace").strip()
        meta.update(shard=shard, key=key)
        question = meta.get(self._columns.question_column) or self._question
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"no question (no `{self._columns.question_column}` in the sample and no --question)")
        reference = meta.get(self._columns.reference_column)
        if reference is not None and not isinstance(reference, str | int | float):
            raise ValueError(f"`{self._columns.reference_column}` must be text or a number")
        try:
            return JobSpec(
                images=tuple(images),
                question=question,
                reference=None if reference in (None, "") else str(reference),
                meta=meta,
            )
        except ValidationError as exc:
            raise ValueError(exc.errors()[0]["msg"]) from exc

    @contextmanager
    def _open(self, shard: str) -> Iterator[IO[bytes]]:
        if not shard.startswith("s3://"):
            path = local_path(shard)
            if not path.is_file():
                raise SourceError(f"{shard}: no such shard")
            with path.open("rb") as handle:
                yield handle
            return
        with ExitStack() as stack:
            try:
                body = stack.enter_context(self._stores.s3.open_stream(shard))
            except JobError as exc:
                raise store_refusal(shard, "read the shard", exc) from exc
            yield body


def _small_content(extension: str, scanned: ScannedMember) -> bytes | None:
    """The bytes of a metadata member (`.json`, `.txt`, `.cls`), bounded; None for any other member."""
    if extension != "json" and extension not in TEXT_EXTENSIONS:
        return None
    if scanned.member.size > _MAX_TEXT_BYTES:
        raise SourceError(f"{scanned.member.shard}: {scanned.member.name} is over {_MAX_TEXT_BYTES} bytes")
    return scanned.read()
