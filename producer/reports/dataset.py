"""`export --format sft|internvl --out DIR`: a dataset folder that a trainer points at as it is.

    DIR/
      records/part-00000.jsonl …   the records (training.py), `shard_size` per file, in job order
      images/ab/ab12….jpg …        each image the records use, once, named by content hash (dataset_images.py)
      dataset_info.json            LLaMA-Factory's entry: `dataset_dir: DIR`, `dataset: <name>`
      internvl_meta.json           (internvl) InternVL's meta: root, annotation, data_augment, repeat_time, length
      provenance.json              what produced the traces, as far as the ledger and the model folder say

Image paths in the records are relative to DIR (LLaMA-Factory joins them to its `media_dir`, which is
`dataset_dir` unless set; InternVL joins them to the meta's `root`, DIR). `images_dir` puts the images
elsewhere (the paths then lead there from DIR); `image_root` writes paths relative to a folder of local
images the user already has, and copies nothing (`media_dir` / `root` is then that folder).

The records are written to `records.partial/` and replace `records/` once complete; images are written
once each, atomically, and kept across exports (same bytes, same name). A sample whose image cannot be
written (gone, changed since the worker read it, outside the image root) is left out and reported.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any, Literal

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import ObjectStore
from vlmbatch.producer.reports.dataset_images import DatasetImages
from vlmbatch.producer.reports.fields import ExportRecord
from vlmbatch.producer.reports.identity import CustomIds
from vlmbatch.producer.reports.provenance import run_provenance
from vlmbatch.producer.reports.records import PAGE_ROWS, ExportFilter, iter_records
from vlmbatch.producer.reports.training import internvl_record, sft_record
from vlmbatch.schema.contracts.errors import JobError, VlmbatchError
from vlmbatch.schema.ledger.runs import RunView

DatasetFormat = Literal["sft", "internvl"]
RECORDS_DIR = "records"
DATASET_INFO = "dataset_info.json"
INTERNVL_META = "internvl_meta.json"
PROVENANCE = "provenance.json"
# What an export writes into DIR: a folder holding anything else is not one of ours, and is refused.
_FILES = (DATASET_INFO, INTERNVL_META, PROVENANCE)
OWN_ENTRIES = frozenset({RECORDS_DIR, f"{RECORDS_DIR}.partial", "images", *_FILES, *(f"{f}.partial" for f in _FILES)})
# Skipped samples named in the report; the rest are only counted.
SHOWN_SKIPS = 20

# LLaMA-Factory's dataset_info entries (its data/README.md, ShareGPT format).
_SFT_INFO: dict[str, Any] = {
    "formatting": "sharegpt",
    "columns": {"messages": "messages", "images": "images"},
    "tags": {
        "role_tag": "role",
        "content_tag": "content",
        "user_tag": "user",
        "assistant_tag": "assistant",
        "system_tag": "system",
    },
}
_INTERNVL_INFO: dict[str, Any] = {
    "formatting": "sharegpt",
    "columns": {"messages": "conversations", "images": "image"},
    "tags": {
        "role_tag": "from",
        "content_tag": "value",
        "user_tag": "human",
        "assistant_tag": "gpt",
        "system_tag": "system",
    },
}


class DatasetFolderRefused(VlmbatchError):
    """The output folder holds files that an export did not write."""


@dataclass(frozen=True)
class DatasetOptions:
    shard_size: int | None = None
    images_dir: Path | None = None
    image_root: Path | None = None
    max_image_bytes: int = 64 << 20
    max_image_pixels: int = 40_000_000


@dataclass
class DatasetReport:
    rows: int = 0
    shards: list[Path] = field(default_factory=list)
    images_written: int = 0
    skipped: int = 0
    skipped_shown: list[str] = field(default_factory=list)


def check_dataset_folder(out: Path) -> None:
    """Raises DatasetFolderRefused when `out` is a file, or a folder with entries an export did not write."""
    if out.exists() and not out.is_dir():
        raise DatasetFolderRefused(f"{out} is a file: --out names a folder for this format")
    if out.is_dir():
        foreign = sorted(entry.name for entry in out.iterdir() if entry.name not in OWN_ENTRIES)
        if foreign:
            raise DatasetFolderRefused(f"{out} holds files an export did not write ({', '.join(foreign[:5])})")


def dataset_name(run: RunView) -> str:
    """The dataset's name in dataset_info.json and the InternVL meta."""
    return f"vlmbatch_{run.name}"


def export_dataset(
    sessions: sessionmaker[Session],
    *,
    run: RunView,
    fmt: DatasetFormat,
    out: Path,
    store: ObjectStore,
    selection: ExportFilter,
    options: DatasetOptions,
    page_rows: int = PAGE_ROWS,
) -> DatasetReport:
    """Write `run`'s samples that pass `selection` as a dataset folder at `out` (module docstring).
    Raises DatasetFolderRefused, OSError; database errors propagate."""
    check_dataset_folder(out)
    out.mkdir(parents=True, exist_ok=True)
    images = DatasetImages(
        store=store,
        dataset_dir=out,
        images_dir=options.images_dir or out / "images",
        image_root=options.image_root,
        max_bytes=options.max_image_bytes,
        max_pixels=options.max_image_pixels,
    )
    shape = sft_record if fmt == "sft" else internvl_record
    report = DatasetReport()
    custom_ids = CustomIds()
    partial = out / f"{RECORDS_DIR}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    lengths: list[int] = []
    try:
        with _Shards(partial, options.shard_size) as shards:
            for record in iter_records(sessions, run, selection, page_rows=page_rows):
                paths = _image_paths(images, record, report)
                if paths is None:
                    continue
                shards.write(shape(record, paths, custom_id=custom_ids.of_job(record["job_id"], record["metadata"])))
                report.rows += 1
            lengths = shards.lengths
        final = out / RECORDS_DIR
        shutil.rmtree(final, ignore_errors=True)
        os.replace(partial, final)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    report.shards = [out / RECORDS_DIR / _shard_name(n) for n in range(len(lengths))]
    report.images_written = images.written
    name = dataset_name(run)
    _write_json(
        out / DATASET_INFO, {name: {"file_name": RECORDS_DIR, **(_SFT_INFO if fmt == "sft" else _INTERNVL_INFO)}}
    )
    if fmt == "internvl":
        _write_json(out / INTERNVL_META, _internvl_meta(name, out, options.image_root, report.shards, lengths))
    else:  # a meta left by an earlier internvl export would name records of another format
        (out / INTERNVL_META).unlink(missing_ok=True)
    _write_json(out / PROVENANCE, {"runs": [run_provenance(run)], "format": fmt, "selection": _selection(selection)})
    return report


def _image_paths(images: DatasetImages, record: ExportRecord, report: DatasetReport) -> list[str] | None:
    hashes = record["image_hashes"]
    if hashes is not None and len(hashes) != len(record["images"]):
        hashes = None
    try:
        return [
            images.path_of(uri, recorded_hash=hashes[n] if hashes is not None else None)
            for n, uri in enumerate(record["images"])
        ]
    except (JobError, VlmbatchError) as exc:
        report.skipped += 1
        if len(report.skipped_shown) < SHOWN_SKIPS:
            report.skipped_shown.append(f"job {record['job_id']} sample {record['sample_index']}: {exc.args[0]}")
        return None


def _internvl_meta(
    name: str, out: Path, image_root: Path | None, shards: list[Path], lengths: list[int]
) -> dict[str, Any]:
    """One meta entry per shard (InternVL reads one `.jsonl` annotation per entry); absolute paths, since
    InternVL opens them from wherever training runs."""
    root = str((image_root or out).resolve())
    many = len(shards) > 1
    return {
        (f"{name}_{n:05d}" if many else name): {
            "root": root,
            "annotation": str(shard.resolve()),
            "data_augment": False,
            "repeat_time": 1,
            "length": length,
        }
        for n, (shard, length) in enumerate(zip(shards, lengths, strict=True))
    }


def _selection(selection: ExportFilter) -> dict[str, Any]:
    return {
        "states": [s.value for s in selection.states],
        "only_correct": selection.only_correct,
        "min_trace_tokens": selection.min_trace_tokens,
        "max_trace_tokens": selection.max_trace_tokens,
        "finish": list(selection.finish) if selection.finish is not None else None,
        "one_per_job": selection.one_per_job,
    }


def _shard_name(number: int) -> str:
    return f"part-{number:05d}.jsonl"


class _Shards:
    """JSON lines into `part-NNNNN.jsonl` files of at most `size` records (one file when None)."""

    def __init__(self, folder: Path, size: int | None) -> None:
        self._folder, self._size = folder, size
        self._file: IO[str] | None = None
        self.lengths: list[int] = []

    def __enter__(self) -> _Shards:
        self._open()
        return self

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            self._file.close()

    def _open(self) -> None:
        if self._file is not None:
            self._file.close()
        self._file = (self._folder / _shard_name(len(self.lengths))).open("w", encoding="utf-8", newline="\n")
        self.lengths.append(0)

    def write(self, line: dict[str, Any]) -> None:
        if self._size is not None and self.lengths[-1] >= self._size:
            self._open()
        assert self._file is not None
        self._file.write(json.dumps(line, ensure_ascii=False, separators=(",", ":")))
        self._file.write("\n")
        self.lengths[-1] += 1


def _write_json(path: Path, payload: Any) -> None:
    partial = path.with_name(path.name + ".partial")
    partial.write_text(json.dumps(payload, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    os.replace(partial, path)
