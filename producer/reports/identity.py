"""How an exported record names what it came from: the source row's own id and the job's `custom_id`."""

from __future__ import annotations

import hashlib
from itertools import count
from typing import Any

# Metadata keys that hold a row's own id, most specific first: a manifest's or Parquet's `id` (MathVista's
# `pid`, MMMU-style `qid`, VQA's `question_id`), then a WebDataset sample's `key`.
ROW_ID_KEYS = ("id", "qid", "pid", "question_id", "key")


class CustomIds:
    """Hands out the `custom_id`s of one export, each once, so that an id names one job (or rejected line).

    A job's own id (`metadata.custom_id`: an OpenAI batch line's, or a manifest's or WebDataset `.json`'s
    column, which nothing keeps unique) is kept unless an earlier job of the export took it; a job without
    one, or whose id was taken, gets `job-<id>` (then `job-<id>-2`, ...: a row may call itself `job-7`).
    The first to ask keeps a repeated id: records come by job (the `openai` output file before its error
    file), so an export of the same jobs names them the same every time.
    Memory: an 8-byte digest per id (~60 bytes a job); a digest collision only renames, never repeats."""

    def __init__(self) -> None:
        self._taken: set[bytes] = set()
        self._last: tuple[int, str] | None = None

    def of_job(self, job_id: int, metadata: dict[str, Any] | None) -> str:
        """The job's `custom_id`; the same for each of its samples (they arrive one after another)."""
        if self._last is None or self._last[0] != job_id:
            self._last = (job_id, self.claim((metadata or {}).get("custom_id"), f"job-{job_id}"))
        return self._last[1]

    def claim(self, own: object, fallback: str) -> str:
        """`own` when it is a non-empty string not yet handed out, else `fallback` made unique."""
        candidates = [own] if isinstance(own, str) and own else []
        for candidate in (*candidates, fallback):
            if self._take(candidate):
                return candidate
        return next(name for n in count(2) if self._take(name := f"{fallback}-{n}"))

    def _take(self, name: str) -> bool:
        digest = hashlib.blake2b(name.encode("utf-8", "surrogatepass"), digest_size=8).digest()
        if digest in self._taken:
            return False
        self._taken.add(digest)
        return True


def row_id(metadata: dict[str, Any] | None) -> str:
    """The source row's own id as text ('' when its source gave none: a folder of images)."""
    for key in ROW_ID_KEYS:
        value = (metadata or {}).get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return ""
