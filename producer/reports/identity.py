"""How an exported record names what it came from: the source row's own id and the job's `custom_id`."""

from __future__ import annotations

from typing import Any

# Metadata keys that hold a row's own id, most specific first: a manifest's or Parquet's `id` (MathVista's
# `pid`, MMMU-style `qid`, VQA's `question_id`), then a WebDataset sample's `key`.
ROW_ID_KEYS = ("id", "qid", "pid", "question_id", "key")


def custom_id(job_id: int, metadata: dict[str, Any] | None) -> str:
    """The job's `custom_id` from its metadata (an OpenAI batch line's), or a stable one from its id."""
    given = (metadata or {}).get("custom_id")
    return given if isinstance(given, str) and given else f"job-{job_id}"


def row_id(metadata: dict[str, Any] | None) -> str:
    """The source row's own id as text ('' when its source gave none: a folder of images)."""
    for key in ROW_ID_KEYS:
        value = (metadata or {}).get(key)
        if isinstance(value, str | int) and not isinstance(value, bool) and str(value):
            return str(value)
    return ""
