"""Datasets laid out as the Hugging Face Hub and `datasets` lay them out: a folder (or `s3://` prefix) of
Parquet shards (`data/train-00000-of-00002.parquet`, `train/…`, `all/test-00000-of-00001.parquet`), with
or without a dataset card (`README.md`) whose YAML `configs` name each config's files, and the folders
`Dataset.save_to_disk` writes (Arrow files with `state.json`; a `DatasetDict`'s splits in subfolders).

Which files are one split of one config is decided by `datasets`' own code: the card's `configs`
(`MetadataConfigs`) when present, else its split-name patterns (`_get_data_files_patterns`), given the
listing of the folder. The default split is `train` when there is one (else the only split); several
splits are never mixed. `HubLayout.note` says what was chosen, in one line.

`ChainedSource` reads the chosen files one after another, each through the source a single file gets
(embedded images or a column of URIs), naming rows `<file> row N`.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from vlmbatch.media.stores import ObjectStores, local_path, split_s3_uri
from vlmbatch.producer.sources.base import Row, RowSource, Source, source_notes, store_refusal
from vlmbatch.producer.sources.images import looks_like_image
from vlmbatch.schema.contracts.errors import JobError, SourceError

DATA_SUFFIXES = (".parquet", ".arrow")
DEFAULT_SPLIT = "train"
DEFAULT_CONFIG = "default"
CARD = "README.md"
# Notes of the chained files shown at most.
SHOWN_FILE_NOTES = 5
# Files a listing reads at most: a folder of more shards than this is not a dataset someone lists by hand.
MAX_LISTED = 100_000
# A dataset card is read whole; cards are a few kB, and this bounds a hostile one.
MAX_CARD_BYTES = 16 << 20


@dataclass(frozen=True)
class HubLayout:
    """The files of one split of one config, in order (URIs), and the line that says what was chosen."""

    files: tuple[str, ...]
    note: str


def list_data_files(uri: str, *, stores: ObjectStores) -> tuple[list[str], str | None, bool]:
    """The `.parquet`/`.arrow` files under `uri` (paths relative to it, sorted), its dataset card's text
    when it has one, and whether it holds an image (the listing stops there: a folder of images is not a
    dataset of files, and is listed again by its own source)."""
    if uri.startswith("s3://"):
        return _list_s3(uri, stores)
    root = local_path(uri)
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        if any(looks_like_image(f) for f in filenames):
            return [], None, True
        here = Path(dirpath)
        names.extend(str((here / f).relative_to(root).as_posix()) for f in filenames if f.endswith(DATA_SUFFIXES))
        if len(names) > MAX_LISTED:
            raise SourceError(f"{uri}: more than {MAX_LISTED} data files; name a split's files with a pattern")
    card = root / CARD
    return sorted(names), card.read_text(encoding="utf-8", errors="replace") if card.is_file() else None, False


def _list_s3(uri: str, stores: ObjectStores) -> tuple[list[str], str | None, bool]:
    bucket, prefix = split_s3_uri(uri)
    prefix = prefix if not prefix or prefix.endswith("/") else prefix + "/"
    names: list[str] = []
    card: str | None = None
    try:
        for key in stores.s3.list_keys(f"s3://{bucket}/{prefix}"):
            relative = key[len(prefix) :]
            if looks_like_image(relative):
                return [], None, True
            if relative.endswith(DATA_SUFFIXES):
                names.append(relative)
            elif relative == CARD:
                card = stores.s3.fetch(f"s3://{bucket}/{key}", max_bytes=MAX_CARD_BYTES).decode("utf-8", "replace")
    except JobError:
        return [], None, False  # not a dataset then: S3PrefixSource reports the listing error
    return sorted(names), card, False


def is_save_to_disk(names: Sequence[str]) -> bool:
    """Arrow files only: `Dataset.save_to_disk`'s layout (its `state.json` and `dataset_info.json` beside)."""
    return bool(names) and all(name.endswith(".arrow") for name in names)


def resolve_layout(
    uri: str, names: Sequence[str], card: str | None, *, config: str | None, split: str | None
) -> HubLayout:
    """The files of the chosen config and split under `uri`. Raises SourceError naming the choices
    when the asked config or split does not exist, or when several splits exist and none is `train`."""
    kind = "Arrow" if is_save_to_disk(names) else "Parquet"
    configs = _card_configs(uri, card)
    if configs:
        chosen_config = config or _default_config(configs)
        if chosen_config not in configs:
            raise SourceError(f"{uri}: no config {chosen_config!r} (configs: {', '.join(configs)})")
        patterns = _split_patterns(configs[chosen_config].get("data_files"))
    else:
        if config not in (None, DEFAULT_CONFIG):
            raise SourceError(f"{uri}: no config {config!r}: the folder has no dataset card with `configs`")
        chosen_config = DEFAULT_CONFIG
        patterns = _inferred_patterns(uri, names)
    chosen_split = split or (DEFAULT_SPLIT if DEFAULT_SPLIT in patterns or len(patterns) != 1 else next(iter(patterns)))
    if chosen_split not in patterns:
        hint = "" if split else " (pass --split)"
        raise SourceError(f"{uri}: no split {chosen_split!r}{hint}; splits: {', '.join(patterns)}")
    files = _matching(names, patterns[chosen_split])
    if not files:
        raise SourceError(f"{uri}: split {chosen_split!r} names no .parquet or .arrow file")
    others = [s for s in patterns if s != chosen_split]
    base = uri.rstrip("/")
    note = f"{uri}: config {chosen_config!r}, split {chosen_split!r}: {len(files)} {kind} file(s)" + (
        f" (other splits: {', '.join(others)}; --split picks one)" if others else ""
    )
    return HubLayout(files=tuple(_join(base, name) for name in files), note=note)


def _datasets(uri: str) -> None:
    """Refuse in one line when `datasets`, which decides a dataset folder's files, is not installed."""
    import importlib.util

    if importlib.util.find_spec("datasets") is None:
        raise SourceError(f"{uri}: a dataset folder needs the `datasets` package: pip install 'vlmbatch[hub]'")


def _card_configs(uri: str, card: str | None) -> dict[str, dict[str, Any]]:
    if card is None:
        return {}
    _datasets(uri)
    import yaml
    from datasets.utils.metadata import MetadataConfigs, _split_yaml_from_readme

    try:
        front, _ = _split_yaml_from_readme(card)
        data = yaml.safe_load(front) if front else None
        return dict(MetadataConfigs.from_dataset_card_data(data)) if isinstance(data, dict) else {}
    except (ValueError, yaml.YAMLError) as exc:
        raise SourceError(f"{uri}: the dataset card's `configs` are not valid: {exc}") from exc


def _default_config(configs: dict[str, dict[str, Any]]) -> str:
    marked = [name for name, fields in configs.items() if fields.get("default")]
    if marked:
        return marked[0]
    return DEFAULT_CONFIG if DEFAULT_CONFIG in configs or len(configs) != 1 else next(iter(configs))


def _split_patterns(data_files: Any) -> dict[str, list[str]]:
    """A card config's `data_files` (a pattern, a list, or `[{split, path}]`) as split → patterns."""
    if isinstance(data_files, str):
        return {DEFAULT_SPLIT: [data_files]}
    if isinstance(data_files, list) and all(isinstance(p, str) for p in data_files):
        return {DEFAULT_SPLIT: list(data_files)}
    if isinstance(data_files, list):
        splits: dict[str, list[str]] = {}
        for entry in data_files:
            paths = entry.get("path") if isinstance(entry, dict) else None
            splits[str(entry.get("split", DEFAULT_SPLIT))] = [paths] if isinstance(paths, str) else list(paths or [])
        return splits
    return {DEFAULT_SPLIT: ["**"]}


def _inferred_patterns(uri: str, names: Sequence[str]) -> dict[str, list[str]]:
    _datasets(uri)
    from datasets.data_files import _get_data_files_patterns

    try:
        patterns = _get_data_files_patterns(lambda pattern: _matching(names, [pattern]))
        return {str(split): list(globs) for split, globs in patterns.items()}  # its keys may be NamedSplit
    except FileNotFoundError as exc:
        raise SourceError(f"{uri}: no .parquet or .arrow files") from exc
    except ValueError as exc:  # a split name datasets refuses
        raise SourceError(f"{uri}: {exc}") from exc


def _matching(names: Sequence[str], patterns: Sequence[str]) -> list[str]:
    """The names any of `patterns` matches, in listing order, as `datasets` globs them (fsspec: `**` spans
    folders, `*` does not)."""
    from fsspec.utils import glob_translate

    compiled = [re.compile(glob_translate(pattern.lstrip("./"))) for pattern in patterns]
    return [name for name in names if any(c.fullmatch(name) for c in compiled)]


def _join(base: str, name: str) -> str:
    return f"{base}/{name}" if base.startswith("s3://") else str(Path(base) / PurePosixPath(name))


def save_to_disk_files(root: Path) -> list[str] | None:
    """A `save_to_disk` folder's Arrow files in their order (its `state.json`), or None when `root` is not
    one. A `DatasetDict`'s splits are subfolders, chosen by `resolve_layout`."""
    state = root / "state.json"
    if not state.is_file():
        return None
    try:
        files = json.loads(state.read_text(encoding="utf-8")).get("_data_files", [])
        return [str(root / entry["filename"]) for entry in files]
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise SourceError(f"{root}: state.json is not a `datasets` state file: {exc}") from exc


def expand_pattern(uri: str, *, stores: ObjectStores) -> list[str]:
    """The files a glob (`data/train-*.parquet`) or brace pattern (`part-{0..3}.parquet`) names, in sorted
    order per brace alternative; S3 globs are matched against a listing of the prefix before the first
    wildcard."""
    from braceexpand import braceexpand
    from fsspec.utils import glob_translate

    files: list[str] = []
    for expanded in braceexpand(uri):
        if not any(c in expanded for c in "*?["):
            files.append(expanded)
        elif expanded.startswith("s3://"):
            bucket, key = split_s3_uri(expanded)
            prefix = re.split(r"[*?\[]", key, maxsplit=1)[0]
            pattern = re.compile(glob_translate(key))
            listing = f"s3://{bucket}/{prefix}"
            try:
                keys = list(stores.s3.list_keys(listing))
            except JobError as exc:
                raise store_refusal(listing, "list", exc) from exc
            files.extend(f"s3://{bucket}/{k}" for k in keys if pattern.fullmatch(k))
        else:
            path = local_path(expanded)
            anchor = Path(path.anchor or ".")
            files.extend(str(p) for p in sorted(anchor.glob(str(path.relative_to(anchor)))) if p.is_file())
    if not files:
        raise SourceError(f"{uri}: the pattern names no file")
    return files


def save_to_disk_layout(root: Path, *, split: str | None) -> HubLayout:
    """A `save_to_disk` folder: a `Dataset` (its `state.json` lists its Arrow files) or a `DatasetDict`
    (`dataset_dict.json` lists its splits, each a `Dataset` subfolder). Raises SourceError."""
    files = save_to_disk_files(root)
    if files is not None:
        if split is not None:
            raise SourceError(f"{root}: a save_to_disk Dataset has no splits (--split {split})")
        return HubLayout(tuple(files), f"{root}: a save_to_disk Dataset: {len(files)} Arrow file(s)")
    try:
        splits = json.loads((root / "dataset_dict.json").read_text(encoding="utf-8"))["splits"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise SourceError(f"{root}: Arrow files without a save_to_disk state.json or dataset_dict.json") from exc
    chosen = split or (DEFAULT_SPLIT if DEFAULT_SPLIT in splits or len(splits) != 1 else splits[0])
    if chosen not in splits:
        hint = "" if split else " (pass --split)"
        raise SourceError(f"{root}: no split {chosen!r}{hint}; splits: {', '.join(splits)}")
    files = save_to_disk_files(root / chosen) or []
    others = [s for s in splits if s != chosen]
    note = f"{root}: a save_to_disk DatasetDict, split {chosen!r}: {len(files)} Arrow file(s)"
    return HubLayout(tuple(files), note + (f" (other splits: {', '.join(others)})" if others else ""))


class ChainedSource(RowSource):
    """The files of one split read one after another, each by the source `open_file` gives it."""

    def __init__(self, uri: str, files: Sequence[str], open_file: Callable[[str], Source], note: str) -> None:
        self._uri = uri
        self._files = tuple(files)
        self._open_file = open_file
        self._note = note
        self._file_notes: list[str] = []

    def notes(self) -> list[str]:
        """What was chosen, then what the files report (the first few: a thousand shards, a few lines)."""
        shown = self._file_notes[:SHOWN_FILE_NOTES]
        more = len(self._file_notes) - len(shown)
        return [self._note, *shown, *([f"… and {more} more file(s) with notes like these"] if more else [])]

    def rows(self) -> Iterator[Row]:
        base = self._uri.rstrip("/") + "/"
        self._file_notes = []  # each pass over the rows says it again
        for file in self._files:
            name = file[len(base) :] if file.startswith(base) else file.rsplit("/", 1)[-1]
            source = self._open_file(file)
            for where, spec in source.rows():
                yield f"{name} {where}", spec
            self._file_notes.extend(source_notes(source))
