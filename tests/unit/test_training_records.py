"""The training records' turns: one `<image>` per image wherever the text puts it (or images first), a
literal `<image>` elsewhere defused, the system turn first, and one type per field whatever the run."""

from __future__ import annotations

from typing import Any

import pytest

from vlmbatch.producer.reports.fields import ExportRecord
from vlmbatch.producer.reports.training import internvl_record, sft_record


def _record(question: str, images: int, **fields: Any) -> ExportRecord:
    record: dict[str, Any] = {
        "run": "r", "run_id": 1, "job_id": 7, "attempt_id": 9, "sample_index": 0,
        "images": [f"s3://b/{n}.jpg" for n in range(images)], "question": question, "system": None,
        "reference": None, "metadata": None, "state": "succeeded", "answer": "B", "reasoning": "look",
        "raw_text": "look</think>B", "finish_reason": "stop", "trace_closed": True, "prompt_tokens": 10,
        "completion_tokens": 3, "reasoning_tokens": 1, "answer_tokens": 1, "extracted_answer": None,
        "correct": None, "valid": None, "grader": None, "grader_version": None, "gpu_seconds": None,
        "image_hashes": None, "timings": {},
    }  # fmt: skip
    record.update(fields)
    return record  # type: ignore[return-value]


def _paths(n: int) -> list[str]:
    return [f"images/{i}.jpg" for i in range(n)]


def _count(record: dict[str, Any]) -> int:
    turns = record.get("messages") or record["conversations"]
    return sum(turn.get("content", turn.get("value", "")).count("<image>") for turn in turns)


@pytest.mark.parametrize(
    ("question", "images", "sft_user", "internvl_human", "order"),
    [
        ("What?", 1, "<image>What?", "<image>\nWhat?", [0]),
        ("What?", 2, "<image><image>What?", "Image-1: <image>\nImage-2: <image>\nWhat?", [0, 1]),
        ("Is <image 2> like <image 1>?", 2, "Is <image> like <image>?", "Is <image> like <image>?", [1, 0]),
        # MMMU: an image placed, then referred back to as text.
        ("<image 1> Which? A. <image 2> B. <image 1>", 2, "<image> Which? A. <image> B. <image 1>", None, [0, 1]),
        ("Compare:\n<image>\nthis.", 1, "Compare:\n<image>\nthis.", "Compare:\n<image>\nthis.", [0]),
        # Placeholders that do not match the images: images first, the stray `<image>` defused.
        ("<image> and <image>?", 1, "<image>< image> and < image>?", "<image>\n< image> and < image>?", [0]),
    ],
)
def test_one_image_token_per_image_where_the_text_placed_it(
    question: str, images: int, sft_user: str, internvl_human: str | None, order: list[int]
) -> None:
    sft = sft_record(_record(question, images), _paths(images))
    internvl = internvl_record(_record(question, images), _paths(images))
    assert sft["messages"][0]["content"] == sft_user
    if internvl_human is not None:
        assert internvl["conversations"][0]["value"] == internvl_human
    assert sft["images"] == internvl["image"] == [f"images/{n}.jpg" for n in order]
    assert _count(sft) == _count(internvl) == images


def test_a_literal_image_token_in_the_system_prompt_answer_or_trace_is_defused() -> None:
    record = _record("What?", 1, system="Describe each <image>.", reasoning="the <image> shows", answer="<image>")
    for shaped in (sft_record(record, _paths(1)), internvl_record(record, _paths(1))):
        assert _count(shaped) == 1


def test_every_field_has_one_type_whether_or_not_the_run_was_graded() -> None:
    ungraded = sft_record(_record("What?", 1, finish_reason=None), _paths(1))
    graded = sft_record(_record("What?", 1, correct=True, grader="choice"), _paths(1))
    assert list(ungraded) == list(graded)
    for key in ungraded:
        assert type(ungraded[key]) is type(graded[key]), key
    assert (ungraded["graded"], ungraded["correct"], ungraded["finish_reason"]) == (False, False, "")
    assert (graded["graded"], graded["correct"]) == (True, True)
    assert (ungraded["id"], ungraded["custom_id"]) == ("", "job-7")


def test_a_truncated_trace_is_written_as_it_was_produced() -> None:
    record = _record("What?", 1, trace_closed=False, answer="", finish_reason="length")
    assert sft_record(record, _paths(1))["messages"][1]["content"] == "<think>\nlook"
