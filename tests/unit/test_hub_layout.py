"""Which files of a dataset folder are one split, decided by `datasets`' own split patterns over a listing
(no files needed): split folders, Hub shard names in any folder, and a folder of unnamed shards."""

from __future__ import annotations

import pytest

from vlmbatch.producer.sources.hub import resolve_layout
from vlmbatch.schema.contracts.errors import SourceError


def _files(names: list[str], split: str | None = None) -> list[str]:
    layout = resolve_layout("/d", sorted(names), None, config=None, split=split)
    return [f.removeprefix("/d/") for f in layout.files]


def test_split_folders_give_their_files_train_by_default() -> None:
    names = ["train/b.parquet", "train/a.parquet", "test/c.parquet"]
    assert _files(names) == ["train/a.parquet", "train/b.parquet"]
    assert _files(names, "test") == ["test/c.parquet"]


def test_hub_shard_names_in_any_folder_and_a_lone_split_is_the_default() -> None:
    assert _files(["all/test-00000-of-00001.parquet"]) == ["all/test-00000-of-00001.parquet"]


def test_unnamed_shards_are_all_train() -> None:
    assert _files(["00001.parquet", "00000.parquet"]) == ["00000.parquet", "00001.parquet"]


def test_several_splits_without_train_need_a_choice() -> None:
    with pytest.raises(SourceError, match="no split 'train' \\(pass --split\\); splits: validation, test"):
        _files(["data/validation-00000-of-00001.parquet", "data/test-00000-of-00001.parquet"])
    with pytest.raises(SourceError, match="no split 'dev'"):
        _files(["data/train-00000-of-00001.parquet"], "dev")
