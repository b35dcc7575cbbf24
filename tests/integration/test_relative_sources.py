"""Every SOURCE form, typed as a relative path from another folder than the data's, as a user types it:
`vlmbatch run` (fake engine, embedded defaults) answers every job. The run records the absolute path,
so the worker's allowed local folder is the data's, wherever the submitter stood."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.fixtures.bad_images import good_jpeg
from tests.fixtures.embedded import write_image_parquet, write_shards
from tests.processes import vlmbatch


def _env(tmp_path: Path) -> dict[str, str]:
    return {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home")}


def _run_from_elsewhere(tmp_path: Path, source: str, *args: str) -> dict[str, object]:
    """`vlmbatch run SOURCE` in tmp_path/elsewhere, SOURCE relative to it."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    done = vlmbatch(["run", source, *args, "--json"], _env(tmp_path), cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert isinstance(status, dict)
    return status


def _images(folder: Path, count: int) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = [folder / f"{i}.jpg" for i in range(count)]
    for i, path in enumerate(paths):
        path.write_bytes(good_jpeg(30 + i, 20, seed=i))
    return paths


def test_a_relative_folder(tmp_path: Path) -> None:
    _images(tmp_path / "data" / "pics", 3)
    status = _run_from_elsewhere(tmp_path, "../data/pics", "-q", "What is shown?")
    assert (status["total"], status["errors"]) == (3, {})


def test_a_relative_manifest_naming_images_relative_to_itself(tmp_path: Path) -> None:
    _images(tmp_path / "data" / "img", 2)
    manifest = tmp_path / "data" / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"img/{i}.jpg", "question": "q?"}) + "\n" for i in range(2)))
    status = _run_from_elsewhere(tmp_path, "../data/m.jsonl")
    assert (status["total"], status["errors"]) == (2, {})


def test_a_relative_parquet_with_embedded_images(tmp_path: Path) -> None:
    (tmp_path / "data").mkdir()
    write_image_parquet(tmp_path / "data" / "d.parquet", rows=4, corrupt_row=None)
    status = _run_from_elsewhere(tmp_path, "../data/d.parquet", "-q", "What is shown?")
    assert (status["total"], status["errors"]) == (4, {})


@pytest.mark.parametrize("source", ["../data/shards", "../data/shards/00000.tar", "../data/shards/{00000..00001}.tar"])
def test_relative_webdataset_shards(tmp_path: Path, source: str) -> None:
    write_shards(tmp_path / "data" / "shards")
    status = _run_from_elsewhere(tmp_path, source, "-q", "Caption this.")
    total = 4 if source.endswith("00000.tar") else 7  # one sample of shard 1 has no image
    # Sample 2 holds a truncated JPEG: read (so its path was allowed), then refused as unreadable.
    assert (status["total"], status["errors"]) == (total, {"input.unreadable": 1})


def test_a_relative_openai_batch_file_with_relative_and_file_uri_images(tmp_path: Path) -> None:
    pictures = _images(tmp_path / "data" / "img", 2)
    batch = tmp_path / "data" / "batch.jsonl"

    def line(custom_id: str, url: str) -> str:
        content = [{"type": "image_url", "image_url": {"url": url}}, {"type": "text", "text": "What is shown?"}]
        body = {"model": "m", "messages": [{"role": "user", "content": content}]}
        return json.dumps({"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body})

    batch.write_text(line("a", "img/0.jpg") + "\n" + line("b", pictures[1].as_uri()) + "\n")
    status = _run_from_elsewhere(tmp_path, "../data/batch.jsonl")
    assert (status["total"], status["errors"]) == (2, {})
