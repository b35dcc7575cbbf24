"""Splitting a reasoning trace from its answer, and what counts as truncated."""

from __future__ import annotations

import pytest

from vlmbatch.schema.contracts.reasoning import split_trace
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.worker.engines.base import Completion
from vlmbatch.worker.pipeline.output import attempt_outcome, to_sample


@pytest.mark.parametrize(
    ("text", "opened", "reasoning", "answer", "closed"),
    [
        pytest.param("I look.</think>A cat.", True, "I look.", "A cat.", True, id="trace-opened-by-prompt"),
        pytest.param("<think>I look.</think>\nA cat.", False, "I look.", "A cat.", True, id="both-tags-generated"),
        pytest.param("a</think>b</think>c", True, "a", "b</think>c", True, id="split-at-the-first-closing-tag"),
        pytest.param("still thinking", True, "still thinking", "", False, id="never-closed-prompt-trace"),
        pytest.param("<think>still", False, "still", "", False, id="never-closed-generated-trace"),
        pytest.param("A cat.", False, None, "A cat.", True, id="model-without-trace"),
        pytest.param("</think>B", True, "", "B", True, id="empty-trace"),
        pytest.param("", True, "", "", False, id="nothing-generated"),
    ],
)
def test_split_trace(text: str, opened: bool, reasoning: str | None, answer: str, closed: bool) -> None:
    split = split_trace(text, opened_by_prompt=opened)
    assert (split.reasoning, split.answer, split.closed) == (reasoning, answer, closed)


def test_a_sample_counts_reasoning_and_answer_tokens() -> None:
    sample = to_sample(0, Completion("think</think>ok", 10, "stop", reasoning_tokens=7), opened_by_prompt=True)
    assert (sample.reasoning_tokens, sample.answer_tokens, sample.trace_closed) == (7, 3, True)


def test_an_unclosed_trace_counts_every_token_as_reasoning() -> None:
    sample = to_sample(1, Completion("think more", 64, "length"), opened_by_prompt=True)
    assert (sample.sample_index, sample.reasoning_tokens, sample.answer_tokens, sample.answer) == (1, 64, 0, "")


def test_an_answer_without_trace_counts_no_reasoning_tokens() -> None:
    sample = to_sample(0, Completion("A cat.", 3, "stop"), opened_by_prompt=False)
    assert (sample.reasoning, sample.reasoning_tokens, sample.answer_tokens) == (None, 0, 3)


def test_an_attempt_is_truncated_only_when_every_sample_hit_the_limit() -> None:
    done = to_sample(0, Completion("t</think>a", 3, "stop"), opened_by_prompt=True)
    cut = to_sample(1, Completion("t", 3, "length"), opened_by_prompt=True)
    cut_after_answer = to_sample(2, Completion("t</think>half an ans", 3, "length"), opened_by_prompt=True)
    assert attempt_outcome([done, cut]) == AttemptOutcome.SUCCEEDED
    assert attempt_outcome([cut, cut_after_answer]) == AttemptOutcome.TRUNCATED
