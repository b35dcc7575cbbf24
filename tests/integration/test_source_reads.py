"""What a source reads, and how often: `open_source` opens a file (or lists a prefix) once to tell what it
is, and the source it builds reads that same opened file, on every pass. Counted through the one storage
seam (`ObjectStores`), locally and on an S3 server over HTTP."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import fill_bucket
from tests.fixtures.embedded import write_shards
from vlmbatch.media.stores import ObjectStores, S3Objects
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.openai_batch import OpenAIBatchSource
from vlmbatch.producer.sources.prompts import Prompting

ROWS = [{"image": "imgs/a.jpg", "id": 1}, {"image": "imgs/b.jpg", "id": 2}]


class _CountingS3:
    """An S3Objects that notes the prefixes it lists."""

    def __init__(self, inner: S3Objects, listed: list[str]) -> None:
        self._inner = inner
        self._listed = listed

    def list_keys(self, uri: str, **kwargs: Any) -> Iterator[str]:
        self._listed.append(uri)
        return self._inner.list_keys(uri, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class CountingStores(ObjectStores):
    """The stores, noting every file opened for reading and every prefix listed."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.opened: list[str] = []
        self.listed: list[str] = []
        self._counting = _CountingS3(super().s3, self.listed)

    @property
    def s3(self) -> S3Objects:
        return self._counting  # type: ignore[return-value]

    def open_reader(self, uri: str, *, buffer_size: int = 1 << 20) -> IO[bytes]:
        self.opened.append(uri)
        return super().open_reader(uri, buffer_size=buffer_size)


def _manifest_bytes(kind: str) -> bytes:
    if kind == "jsonl":
        return "".join(json.dumps(row) + "\n" for row in ROWS).encode()
    if kind == "csv":
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=["image", "id"])
        writer.writeheader()
        writer.writerows(ROWS)
        return text.getvalue().encode()
    sink = pa.BufferOutputStream()
    pq.write_table(pa.Table.from_pylist(ROWS), sink)
    return bytes(sink.getvalue().to_pybytes())


@pytest.mark.parametrize("kind", ["jsonl", "csv", "parquet"])
def test_a_manifest_on_s3_is_opened_once_and_every_pass_reads_that_reader(
    kind: str, s3_endpoint: str, s3_bucket: str
) -> None:
    fill_bucket(s3_endpoint, s3_bucket, {f"sets/m.{kind}": _manifest_bytes(kind)})
    uri = f"s3://{s3_bucket}/sets/m.{kind}"
    stores = CountingStores(s3_endpoint_url=s3_endpoint)
    source = open_source(uri, prompting=Prompting.of("q?"), stores=stores)
    source.validate()
    images = [spec.images for spec in source.specs()]
    assert images == [(f"s3://{s3_bucket}/sets/imgs/a.jpg",), (f"s3://{s3_bucket}/sets/imgs/b.jpg",)]
    assert stores.opened == [uri]  # the first look's reader, read by ranges: never opened or downloaded again


def test_a_local_parquet_manifest_has_its_footer_read_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.parquet"
    path.write_bytes(_manifest_bytes("parquet"))
    opened: list[object] = []
    real = pq.ParquetFile

    def counting(source: object, *args: Any, **kwargs: Any) -> Any:
        opened.append(source)
        return real(source, *args, **kwargs)

    monkeypatch.setattr(pq, "ParquetFile", counting)
    source = open_source(str(path), prompting=Prompting.of("q?"), stores=ObjectStores())
    source.validate()
    assert [spec.meta for spec in source.specs()] == [{"id": 1}, {"id": 2}]
    assert opened == [str(path)]


def test_an_openai_batch_file_on_s3_is_sniffed_and_read_through_one_reader_even_after_a_peek(
    s3_endpoint: str, s3_bucket: str
) -> None:
    def line(custom_id: str) -> str:
        body = {"model": "m", "messages": [{"role": "user", "content": f"Say {custom_id}."}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    fill_bucket(s3_endpoint, s3_bucket, {"b.jsonl": "\n".join(line(c) for c in "abc").encode() + b"\n"})
    uri = f"s3://{s3_bucket}/b.jsonl"
    stores = CountingStores(s3_endpoint_url=s3_endpoint)
    source = open_source(uri, stores=stores)
    assert isinstance(source, OpenAIBatchSource)
    assert next(iter(source.rows()))[0] == "line 1"  # the CLI's one-row peek, its pass dropped half-read
    source.validate()
    assert [spec.question for spec in source.specs()] == ["Say a.", "Say b.", "Say c."]
    assert stores.opened == [uri]


def test_a_prefix_of_shards_is_listed_once_and_its_listing_handed_to_the_source(
    tmp_path: Path, s3_endpoint: str, s3_bucket: str
) -> None:
    write_shards(tmp_path / "shards")
    fill_bucket(s3_endpoint, s3_bucket, {f"wds/{p.name}": p.read_bytes() for p in (tmp_path / "shards").iterdir()})
    stores = CountingStores(s3_endpoint_url=s3_endpoint)
    source = open_source(f"s3://{s3_bucket}/wds/", prompting=Prompting.of("What is shown?"), stores=stores)
    source.validate()
    specs = list(source.specs())
    assert [spec.meta["key"] for spec in specs if spec.meta] == ["000000001", "000000002", "000000003", "000000004",
                                                                   "000000006", "000000007", "000000008"]  # fmt: skip
    assert stores.listed == [f"s3://{s3_bucket}/wds/"]
