"""Datasets as the Hub and `datasets` lay them out, written by `datasets` itself: a folder of Parquet shards
named as `push_to_hub` names them (with and without a dataset card's `configs`), the same on an S3 prefix,
Parquet glob and brace patterns, and `save_to_disk` folders (a Dataset, a DatasetDict). `vlmbatch run`
(fake engine) from another folder: one split, `train` by default, one line saying what was chosen."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import fill_bucket
from tests.fixtures.bad_images import good_jpeg
from tests.processes import vlmbatch


def _dataset(rows: int, tag: str) -> Any:
    import datasets

    datasets.disable_progress_bars()
    features = datasets.Features({"image": datasets.Image(), "question": datasets.Value("string")})
    table = {
        "image": [{"bytes": good_jpeg(20 + i, 20, seed=i + len(tag)), "path": None} for i in range(rows)],
        "question": [f"{tag} question {i}?" for i in range(rows)],
    }
    return datasets.Dataset.from_dict(table, features=features)


def _hub_folder(root: Path, splits: dict[str, int], *, shards: int = 2, prefix: str = "data") -> Path:
    """`<prefix>/<split>-0000i-of-0000n.parquet` per split, as `push_to_hub` names its shards."""
    (root / prefix).mkdir(parents=True, exist_ok=True)
    for split, rows in splits.items():
        dataset = _dataset(rows, split)
        for i in range(shards):
            dataset.shard(num_shards=shards, index=i).to_parquet(
                str(root / prefix / f"{split}-{i:05d}-of-{shards:05d}.parquet")
            )
    return root


def _card(root: Path, configs: list[dict[str, Any]]) -> None:
    """A dataset card whose YAML `configs` are written by `datasets`' own MetadataConfigs."""
    from datasets.utils.metadata import MetadataConfigs
    from huggingface_hub import DatasetCard

    card = DatasetCard("---\n---\n# A dataset\n")
    MetadataConfigs({c.pop("config_name"): c for c in configs}).to_dataset_card_data(card.data)
    card.save(str(root / "README.md"))


def _run(tmp_path: Path, source: str, *args: str, env: dict[str, str] | None = None) -> tuple[dict[str, Any], str]:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(exist_ok=True)
    full = {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home"), **(env or {})}
    done = vlmbatch(["run", source, "-q", "What is shown?", *args, "--json"], full, cwd=elsewhere)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    return status, done.stderr


def _questions(tmp_path: Path, run: int) -> list[str]:
    out = tmp_path / f"out-{run}.jsonl"
    done = vlmbatch(["export", str(run), "--out", str(out)], {"VLMBATCH_HOME": str(tmp_path / "home")})
    assert done.returncode == 0, done.stderr
    return sorted(json.loads(line)["question"] for line in out.read_text().splitlines())


def test_a_hub_folder_of_shards_runs_its_train_split_alone(tmp_path: Path) -> None:
    _hub_folder(tmp_path / "ds", {"train": 5, "test": 3})
    status, stderr = _run(tmp_path, "../ds")
    assert (status["total"], status["counts"]["succeeded"]) == (5, 5)
    assert "config 'default', split 'train': 2 Parquet file(s) (other splits: test; --split picks one)" in stderr
    assert all(q.startswith("train ") for q in _questions(tmp_path, status["run"]))
    status, _ = _run(tmp_path, "../ds", "--split", "test")
    assert status["total"] == 3 and all(q.startswith("test ") for q in _questions(tmp_path, status["run"]))


def test_an_unknown_split_is_one_line_naming_the_splits(tmp_path: Path) -> None:
    _hub_folder(tmp_path / "ds", {"validation": 2, "test": 2})
    env = {"VLMBATCH_ENGINE": "fake", "VLMBATCH_HOME": str(tmp_path / "home")}
    done = vlmbatch(["submit", str(tmp_path / "ds"), "-q", "q?"], env)
    assert (done.returncode, done.stderr.count("\n")) == (2, 1)
    assert "no split 'train' (pass --split); splits: validation, test" in done.stderr


def test_a_dataset_card_configs_choose_the_files(tmp_path: Path) -> None:
    root = _hub_folder(tmp_path / "ds", {"train": 4}, prefix="all")
    _hub_folder(root, {"train": 2}, prefix="small", shards=1)
    _card(
        root,
        [
            {"config_name": "all", "data_files": [{"split": "train", "path": "all/train-*"}], "default": True},
            {"config_name": "small", "data_files": [{"split": "train", "path": "small/train-*"}]},
        ],
    )
    status, stderr = _run(tmp_path, "../ds")
    assert status["total"] == 4 and "config 'all', split 'train'" in stderr
    status, stderr = _run(tmp_path, "../ds", "--config", "small")
    assert status["total"] == 2 and "config 'small', split 'train': 1 Parquet file(s)" in stderr


@pytest.mark.parametrize("pattern", ["../ds/data/train-*.parquet", "../ds/data/train-{00000..00001}-of-00002.parquet"])
def test_parquet_glob_and_brace_patterns(tmp_path: Path, pattern: str) -> None:
    _hub_folder(tmp_path / "ds", {"train": 5, "test": 3})
    status, stderr = _run(tmp_path, pattern)
    assert (status["total"], status["counts"]["succeeded"]) == (5, 5)
    assert "2 Parquet file(s)" in stderr


def test_an_s3_prefix_of_hub_shards(tmp_path: Path, s3_endpoint: str, s3_bucket: str) -> None:
    root = _hub_folder(tmp_path / "ds", {"train": 4, "test": 2})
    objects = {f"hub/{p.relative_to(root).as_posix()}": p.read_bytes() for p in root.rglob("*.parquet")}
    fill_bucket(s3_endpoint, s3_bucket, objects)
    status, stderr = _run(tmp_path, f"s3://{s3_bucket}/hub/", env={"VLMBATCH_S3_ENDPOINT_URL": s3_endpoint})
    assert (status["total"], status["counts"]["succeeded"]) == (4, 4)
    assert "split 'train': 2 Parquet file(s)" in stderr


def test_save_to_disk_folders_a_dataset_and_a_dataset_dict(tmp_path: Path) -> None:
    import datasets

    _dataset(3, "one").save_to_disk(str(tmp_path / "saved"))
    status, stderr = _run(tmp_path, "../saved")
    assert (status["total"], status["counts"]["succeeded"]) == (3, 3)
    assert "a save_to_disk Dataset: 1 Arrow file(s)" in stderr
    datasets.DatasetDict({"train": _dataset(2, "train"), "test": _dataset(4, "test")}).save_to_disk(
        str(tmp_path / "saved_dict")
    )
    status, stderr = _run(tmp_path, "../saved_dict", "--split", "test")
    assert (status["total"], status["counts"]["succeeded"]) == (4, 4)
    assert "split 'test': 1 Arrow file(s) (other splits: train)" in stderr
