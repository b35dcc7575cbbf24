"""What a SOURCE that yields no job holds instead: one line naming what was looked for and what was found
(`no images, manifests, Parquet or tar shards under X; found 3 .arrow, 1 .json`), with a hint where the
files say what the user meant. Listings are bounded: a survey never walks a huge tree to say so."""

from __future__ import annotations

import os
from collections import Counter
from itertools import islice
from pathlib import Path, PurePosixPath

from vlmbatch.media.stores import ObjectStores, local_path
from vlmbatch.schema.contracts.errors import JobError

LOOKED_FOR = "no images, manifests (.jsonl, .csv), Parquet files or .tar shards"
# Entries a survey reads at most.
SURVEY_LIMIT = 10_000
_SHOWN_KINDS = 6


def nothing_found(uri: str, *, stores: ObjectStores) -> str:
    """Why `uri` gave no job, in one line."""
    if uri.startswith("s3://"):
        names = _s3_names(uri, stores)
    else:
        path = local_path(uri)
        if not path.is_dir():
            return f"{uri}: no rows, nothing to submit"
        names = _local_names(path)
    if not names:
        return f"{uri}: empty: {LOOKED_FOR}"
    kinds = Counter(PurePosixPath(name).suffix.lower() or "(no extension)" for name in names)
    found = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common(_SHOWN_KINDS))
    more = "+" if len(names) >= SURVEY_LIMIT else ""
    return f"{uri}: {LOOKED_FOR} under it; found {len(names)}{more} files: {found}{_hint(names)}"


def _hint(names: list[str]) -> str:
    base = {PurePosixPath(name).name for name in names}
    if any(name.endswith(".arrow") for name in base) and base & {"dataset_info.json", "state.json"}:
        return " (a `datasets` save_to_disk folder? pass the folder that holds dataset_info.json)"
    if any(name.endswith((".json", ".txt")) for name in base):
        return " (captions or metadata without images?)"
    return ""


def _local_names(root: Path) -> list[str]:
    names: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        names.extend(str(Path(dirpath, name).relative_to(root)) for name in sorted(filenames))
        if len(names) >= SURVEY_LIMIT:
            return names[:SURVEY_LIMIT]
    return names


def _s3_names(uri: str, stores: ObjectStores) -> list[str]:
    try:
        return list(islice(stores.s3.list_keys(uri), SURVEY_LIMIT))
    except JobError:
        return []
