"""The same checks at submit for every source: a local image outside the source's folder and
VLMBATCH_LOCAL_ROOTS (an OpenAI batch line's absolute path or file:// URI, a Parquet `path` cell) and an
http URL that does not parse are malformed rows, refused before anything is written; the worker types
such a URL `input.unsupported`."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from tests.fixtures.bad_images import good_jpeg
from vlmbatch.media.http import HttpImages, HttpOptions
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.schema.contracts.errors import InputUnsupported, SourceError

OCTAL_URL = "http://0177.0.0.1:9171/img.png"


def _batch_line(custom_id: str, url: str) -> str:
    content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is it?"}]
    return json.dumps({"custom_id": custom_id, "body": {"messages": [{"role": "user", "content": content}]}}) + "\n"


def test_an_openai_batch_line_may_not_name_a_local_file_outside_its_folder(tmp_path: Path) -> None:
    (tmp_path / "mine.jpg").write_bytes(good_jpeg(8, 8, seed=1))
    batch = tmp_path / "batch.jsonl"
    lines = [
        _batch_line("inside", str(tmp_path / "mine.jpg")),
        _batch_line("passwd", "/etc/passwd"),
        _batch_line("passwd-uri", "file:///etc/passwd"),
        _batch_line("octal", OCTAL_URL),
    ]
    batch.write_text("".join(lines))
    source = open_source(str(batch), stores=ObjectStores())
    with pytest.raises(SourceError) as refused:
        source.validate()
    message = str(refused.value)
    assert "3 malformed row(s)" in message
    assert "line 2" in message and "line 3" in message and "line 4" in message and "line 1:" not in message
    assert "VLMBATCH_LOCAL_ROOTS" in message and "not a valid URL" in message
    allowed = open_source(str(batch), stores=ObjectStores(), local_roots=[Path("/etc")])
    with pytest.raises(SourceError, match="1 malformed row"):  # /etc allowed: only the bad URL is left
        allowed.validate()


def test_a_parquet_path_cell_outside_the_roots_and_a_bad_url_are_malformed_rows(tmp_path: Path) -> None:
    image_type = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    cells = [
        {"bytes": good_jpeg(8, 8, seed=2), "path": None},
        {"bytes": None, "path": "/etc/passwd"},
        {"bytes": None, "path": OCTAL_URL},
    ]
    table = pa.table({"image": pa.array(cells, image_type), "question": ["What?"] * 3})
    pq.write_table(table, tmp_path / "rows.parquet")
    source = open_source(
        str(tmp_path / "rows.parquet"),
        stores=ObjectStores(),
        stage_to=str(tmp_path / "staged"),
        columns=ColumnChoice(image_columns=("image",)),
    )
    with pytest.raises(SourceError) as refused:
        source.validate()
    message = str(refused.value)
    assert "2 malformed row(s)" in message and "row 2" in message and "row 3" in message


def test_a_manifest_url_that_does_not_parse_is_a_malformed_row(tmp_path: Path) -> None:
    manifest = tmp_path / "urls.jsonl"
    manifest.write_text(json.dumps({"image": OCTAL_URL, "question": "What?"}) + "\n")
    with pytest.raises(SourceError, match="not a valid URL"):
        open_source(str(manifest), stores=ObjectStores()).validate()


def test_the_worker_types_a_url_that_does_not_parse_as_unsupported() -> None:
    with pytest.raises(InputUnsupported, match="not a valid URL"):
        HttpImages(HttpOptions(attempts=1)).fetch(OCTAL_URL, max_bytes=1024)


@pytest.mark.parametrize(
    ("field", "value"),
    [("n", True), ("max_tokens", "100"), ("max_completion_tokens", 10.0), ("seed", "7"), ("temperature", "0.5"),
     ("top_p", False)],
)  # fmt: skip
def test_batch_line_fields_of_the_wrong_type_are_refused_not_coerced(tmp_path: Path, field: str, value: object) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(8, 8, seed=1))
    content = [{"type": "image_url", "image_url": {"url": "a.jpg"}}, {"type": "text", "text": "What is it?"}]
    body = {"messages": [{"role": "user", "content": content}], field: value}
    batch = tmp_path / "typed.jsonl"
    batch.write_text(json.dumps({"custom_id": "a", "body": body}) + "\n")
    with pytest.raises(SourceError, match=f"`{field}` must be"):
        open_source(str(batch), stores=ObjectStores()).validate()


def test_huggingface_metadata_nested_too_deep_is_ignored_not_a_crash(tmp_path: Path) -> None:
    deep = json.dumps({"info": {"features": "X"}}).replace('"X"', "[" * 100_000 + "]" * 100_000)
    table = pa.table({"picture": [good_jpeg(8, 8, seed=4)], "question": ["What?"]})
    pq.write_table(table.replace_schema_metadata({"huggingface": deep}), tmp_path / "deep.parquet")
    source = open_source(str(tmp_path / "deep.parquet"), stores=ObjectStores(), stage_to=str(tmp_path))
    source.validate()  # the image column is found by its type; the metadata is not read
    assert [len(spec.images) for spec in source.specs()] == [1]


def test_a_batch_files_data_images_are_decoded_once_over_every_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import base64

    from vlmbatch.producer.sources import locations

    uris = ["data:image/jpeg;base64," + base64.b64encode(good_jpeg(8, 8, seed=i)).decode() for i in range(3)]
    batch = tmp_path / "inline.jsonl"
    batch.write_text("".join(_batch_line(f"r{i}", uris[i % 3]) for i in range(6)))
    decoded: list[int] = []
    real = locations.decode_data_uri

    def counting(uri: str) -> bytes:
        decoded.append(len(uri))
        return real(uri)

    monkeypatch.setattr(locations, "decode_data_uri", counting)
    source = open_source(str(batch), stores=ObjectStores(), stage_to=str(tmp_path / "staged"))
    source.validate()  # validation, as the Batch API's line check and a SQLite submit do
    specs = list(source.specs())  # then the insert's read
    assert len(specs) == 6 and len(decoded) == 3  # each distinct image once
