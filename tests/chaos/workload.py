"""The chaos workload: a manifest of image jobs on an S3 server, 5% of them hostile and a few with prompts
over the context, each with the outcome it must end in."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tests.fixtures.bad_images import decompression_bomb_png, empty, good_jpeg, not_an_image, truncated_jpeg
from vlmbatch.schema.contracts.errors import ErrorType

HOSTILE_SHARE = 0.05
TOO_LONG_SHARE = 0.02
QUESTION = "What is in the image?"


@dataclass(frozen=True)
class Expected:
    state: str
    error_type: str | None = None


@dataclass
class Workload:
    manifest: Path
    objects: dict[str, bytes]
    # (image key, question) → what the job must end as.
    expected: dict[tuple[str, str], Expected]


def build_workload(
    folder: Path, *, jobs: int, bucket: str, image_size: int, long_question_words: int, good_state: str = "succeeded"
) -> Workload:
    hostile = {
        "empty": (empty(), ErrorType.INPUT_UNREADABLE),
        "truncated": (truncated_jpeg(), ErrorType.INPUT_UNREADABLE),
        "text": (not_an_image(), ErrorType.INPUT_UNREADABLE),
        "bomb": (decompression_bomb_png(), ErrorType.INPUT_TOO_LARGE),
        "missing": (None, ErrorType.INPUT_NOT_FOUND),
    }
    kinds = list(hostile)
    n_hostile = max(len(kinds), round(jobs * HOSTILE_SHARE))
    n_long = max(1, round(jobs * TOO_LONG_SHARE))
    long_question = " ".join(["describe"] * long_question_words)
    image = good_jpeg(image_size, image_size)
    objects: dict[str, bytes] = {}
    expected: dict[tuple[str, str], Expected] = {}
    rows = []
    for i in range(jobs):
        if i < n_hostile:
            kind = kinds[i % len(kinds)]
            data, error = hostile[kind]
            key = f"chaos/hostile-{kind}-{i:06d}.jpg"
            if data is not None:
                objects[key] = data
            question, outcome = QUESTION, Expected("failed", str(error))
        elif i < n_hostile + n_long:
            key = f"chaos/long-{i:06d}.jpg"
            objects[key] = image
            question, outcome = long_question, Expected("failed", str(ErrorType.PROMPT_TOO_LONG))
        else:
            key = f"chaos/good-{i:06d}.jpg"
            objects[key] = image
            question, outcome = QUESTION, Expected(good_state)
        expected[(f"s3://{bucket}/{key}", question)] = outcome
        rows.append({"image": f"s3://{bucket}/{key}", "question": question})
    manifest = folder / "chaos.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    return Workload(manifest=manifest, objects=objects, expected=expected)
