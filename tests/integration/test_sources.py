"""Sources: a local folder, manifests in three formats, and an S3 prefix on a server over HTTP."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.conftest import fill_bucket
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.sources.s3 import PAGE_SIZE
from vlmbatch.schema.contracts.errors import SourceError


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


def test_a_folder_is_walked_recursively_in_order_keeping_only_images(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    for name in ["b.jpg", "a.PNG", "sub/c.webp", "notes.txt", "sub/deeper/d.tiff"]:
        _touch(root / name)
    source = open_source(str(root), prompting=Prompting.of("q?"), stores=ObjectStores())
    source.validate()
    uris = [spec.images[0] for spec in source.specs()]
    assert uris == [(root / n).resolve().as_uri() for n in ["a.PNG", "b.jpg", "sub/c.webp", "sub/deeper/d.tiff"]]


def test_a_symlink_escaping_the_folder_refuses_the_source(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    _touch(root / "ok.jpg")
    secret = _touch(tmp_path / "outside" / "secret.jpg")
    os.symlink(secret, root / "link.jpg")
    source = open_source(str(root), prompting=Prompting.of("q?"), stores=ObjectStores())
    with pytest.raises(SourceError, match="outside the folder"):
        source.validate()


def test_a_symlink_inside_the_folder_is_followed(tmp_path: Path) -> None:
    root = tmp_path / "imgs"
    real = _touch(root / "real.jpg")
    os.symlink(real, root / "alias.jpg")
    source = open_source(str(root), prompting=Prompting.of("q?"), stores=ObjectStores())
    source.validate()
    assert {spec.images[0] for spec in source.specs()} == {real.resolve().as_uri()}


def test_a_folder_source_needs_a_question(tmp_path: Path) -> None:
    _touch(tmp_path / "imgs" / "a.jpg")
    with pytest.raises(SourceError, match="question is required"):
        open_source(str(tmp_path / "imgs"), stores=ObjectStores())


def test_a_jsonl_manifest_reads_several_images_questions_references_and_metadata(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    rows = [
        {"image": "a.jpg", "reference": "B", "split": "val"},
        {"image": ["a.jpg", "s3://bucket/b.png"], "question": "Compare them.", "id": 7},
    ]
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    source = open_source(str(manifest), prompting=Prompting.of("Default?"), stores=ObjectStores())
    source.validate()
    first, second = source.specs()
    assert first.images == ((tmp_path / "a.jpg").as_uri(),)
    assert (first.question, first.reference, first.meta) == ("Default?", "B", {"split": "val"})
    assert second.images == ((tmp_path / "a.jpg").as_uri(), "s3://bucket/b.png")
    assert (second.question, second.meta) == ("Compare them.", {"id": 7})


def test_a_csv_manifest_splits_images_on_semicolons(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["image", "question", "reference", "source"])
        writer.writerow(["x.jpg;y.jpg", "", "12", "web"])
    (spec,) = open_source(str(manifest), prompting=Prompting.of("How many?"), stores=ObjectStores()).specs()
    assert spec.images == ((tmp_path / "x.jpg").as_uri(), (tmp_path / "y.jpg").as_uri())
    assert (spec.question, spec.reference, spec.meta) == ("How many?", "12", {"source": "web"})


def test_a_parquet_manifest_is_read_in_batches_with_typed_metadata(tmp_path: Path) -> None:
    manifest = tmp_path / "m.parquet"
    table = pa.table(
        {
            "image": [[f"s3://b/{i}.jpg"] for i in range(10_000)],
            "question": ["What?"] * 10_000,
            "score": [float(i) for i in range(10_000)],
        }
    )
    pq.write_table(table, manifest, row_group_size=1000)
    source = open_source(str(manifest), stores=ObjectStores())
    source.validate()
    specs = list(source.specs())
    assert len(specs) == 10_000
    assert specs[-1].images == ("s3://b/9999.jpg",) and specs[-1].meta == {"score": 9999.0}


def test_malformed_manifest_rows_refuse_the_whole_submit_naming_each_line(tmp_path: Path) -> None:
    manifest = tmp_path / "m.jsonl"
    manifest.write_text(
        "\n".join(
            [
                json.dumps({"image": "ok.jpg"}),
                "{not json",
                json.dumps({"image": "ok.jpg", "max_tokens": 0}),
                json.dumps({"image": "../../etc/passwd.jpg"}),
                json.dumps({"image": "ftp://example.com/x.jpg"}),
                json.dumps({"image": 5}),
            ]
        )
    )
    source = open_source(str(manifest), prompting=Prompting.of("q?"), stores=ObjectStores())
    with pytest.raises(SourceError) as raised:
        source.validate()
    message = raised.value.message
    assert "5 malformed row(s); nothing was submitted" in message
    for expected in [
        "line 2: invalid JSON",
        "line 3: `max_tokens`: Input should be greater than or equal to 1",
        "line 4: '../../etc/passwd.jpg' leads outside",
        "line 5: unsupported URI scheme",
        "line 6: `image` must be",
    ]:
        assert expected in message
    assert "line 1" not in message


def test_a_manifest_row_without_any_question_is_malformed(tmp_path: Path) -> None:
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,question\na.jpg,\n")
    with pytest.raises(SourceError, match="line 2: no question"):
        open_source(str(manifest), stores=ObjectStores()).validate()


def test_an_s3_prefix_is_listed_across_pages_keeping_only_images(s3_endpoint: str, s3_bucket: str) -> None:
    count = PAGE_SIZE + 234  # more than one page, so pagination is exercised
    objects = {f"data/img-{i:05d}.jpg": b"x" for i in range(count)}
    objects.update({"data/readme.txt": b"x", "other/img.jpg": b"x"})
    fill_bucket(s3_endpoint, s3_bucket, objects)
    source = open_source(
        f"s3://{s3_bucket}/data/", prompting=Prompting.of("q?"), stores=ObjectStores(s3_endpoint_url=s3_endpoint)
    )
    source.validate()
    uris = [spec.images[0] for spec in source.specs()]
    assert len(uris) == count
    assert uris[0] == f"s3://{s3_bucket}/data/img-00000.jpg" and uris[-1].endswith(f"img-{count - 1:05d}.jpg")


def test_an_unreachable_bucket_refuses_the_source(s3_endpoint: str) -> None:
    source = open_source(
        "s3://no-such-bucket/x/", prompting=Prompting.of("q?"), stores=ObjectStores(s3_endpoint_url=s3_endpoint)
    )
    with pytest.raises(SourceError, match="cannot list"):
        source.validate()


def test_a_manifest_on_s3_resolves_relative_keys_against_its_prefix(s3_endpoint: str, s3_bucket: str) -> None:
    lines = [json.dumps({"image": "imgs/a.jpg"}), json.dumps({"image": "../b.jpg"})]
    fill_bucket(s3_endpoint, s3_bucket, {"sets/one/m.jsonl": "\n".join(lines).encode()})
    source = open_source(
        f"s3://{s3_bucket}/sets/one/m.jsonl",
        prompting=Prompting.of("q?"),
        stores=ObjectStores(s3_endpoint_url=s3_endpoint),
    )
    source.validate()
    assert [s.images[0] for s in source.specs()] == [
        f"s3://{s3_bucket}/sets/one/imgs/a.jpg",
        f"s3://{s3_bucket}/sets/b.jpg",
    ]
