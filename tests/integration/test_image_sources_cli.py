"""The commands of the issue's "done when", as a newcomer types them (subprocesses, fake engine, embedded
defaults): a `datasets` Parquet, an MMMU-shaped one with its columns named, a folder of WebDataset
shards; then the export names every job's images and sample ids."""

from __future__ import annotations

import json
from pathlib import Path

from tests.fixtures.embedded import write_image_parquet, write_mmmu_parquet, write_shards
from tests.processes import vlmbatch, vlmbatch_json


def _env(tmp_path: Path) -> dict[str, str]:
    return {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home")}


def _exported(tmp_path: Path, run: int) -> list[dict[str, object]]:
    out = tmp_path / f"run-{run}.jsonl"
    done = vlmbatch(["export", str(run), "--format", "jsonl", "--out", str(out)], _env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    return [json.loads(line) for line in out.read_text().splitlines()]


def test_run_a_datasets_parquet_with_an_image_column(tmp_path: Path) -> None:
    write_image_parquet(tmp_path / "data.parquet", rows=5, corrupt_row=None)
    status = vlmbatch_json(["run", str(tmp_path / "data.parquet"), "-q", "What is shown?", "--json"], _env(tmp_path))
    assert isinstance(status, dict)
    assert (status["total"], status["counts"]["succeeded"]) == (5, 5)
    staged = list((tmp_path / "home" / "staged" / "sha256").rglob("*"))
    assert len([p for p in staged if p.is_file()]) == 5  # the default staging root, under VLMBATCH_HOME


def test_run_an_mmmu_shaped_parquet_with_its_columns_named(tmp_path: Path) -> None:
    rows = write_mmmu_parquet(tmp_path / "mmmu.parquet")
    columns = ",".join(f"image_{i}" for i in range(1, 8))
    args = ["run", str(tmp_path / "mmmu.parquet"), "--image-column", columns]
    args += ["--question-column", "question", "--reference-column", "answer", "--grader", "choice", "--json"]
    status = vlmbatch_json(args, _env(tmp_path))
    assert isinstance(status, dict) and status["counts"]["succeeded"] == 3
    records = _exported(tmp_path, 1)
    assert sorted(len(r["images"]) for r in records) == sorted(len(images) for images in rows)  # type: ignore[arg-type]
    assert sorted(str(r["reference"]) for r in records) == ["A", "C", "D"]


def test_run_a_folder_of_webdataset_shards_reports_samples_without_an_image(tmp_path: Path) -> None:
    write_shards(tmp_path / "shards")
    done = vlmbatch(["run", str(tmp_path / "shards"), "-q", "Caption this.", "--json"], _env(tmp_path))
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    assert (status["total"], status["counts"]["succeeded"], status["errors"]) == (7, 6, {"input.unreadable": 1})
    assert "1 sample(s) without an image member, not submitted: 00001.tar:000000005" in done.stderr
    records = _exported(tmp_path, status["run"])
    keys = sorted(r["metadata"]["key"] for r in records)  # type: ignore[index]
    assert keys == [f"{n:09d}" for n in (1, 3, 4, 6, 7, 8)]  # the corrupt one has no answer to export
    assert all(str(r["metadata"]["shard"]).endswith(".tar") for r in records)  # type: ignore[index]


def test_a_missing_image_column_is_one_line_and_exit_2(tmp_path: Path) -> None:
    write_mmmu_parquet(tmp_path / "mmmu.parquet")
    done = vlmbatch(["submit", str(tmp_path / "mmmu.parquet"), "--image-column", "picture"], _env(tmp_path))
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "no column picture" in done.stderr
