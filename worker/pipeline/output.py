"""Turning engine completions into stored samples: split the `<think>` trace from the answer, count
tokens, and decide whether an attempt succeeded or was truncated."""

from __future__ import annotations

from collections.abc import Sequence

from vlmbatch.schema.contracts.reasoning import split_trace
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.outcomes import SampleRecord
from vlmbatch.worker.engines.base import Completion


def storable(text: str) -> str:
    """`text` without NUL characters, which PostgreSQL cannot store in text columns (a model may emit
    them; they become U+FFFD, the replacement character)."""
    return text.replace("\x00", "\ufffd")


def to_sample(index: int, completion: Completion, *, opened_by_prompt: bool) -> SampleRecord:
    text = storable(completion.text)
    split = split_trace(text, opened_by_prompt=opened_by_prompt)
    reasoning_tokens = completion.reasoning_tokens
    if split.reasoning is None:
        reasoning_tokens = 0
    elif not split.closed:
        reasoning_tokens = completion.num_tokens
    answer_tokens = None if reasoning_tokens is None else max(0, completion.num_tokens - reasoning_tokens)
    return SampleRecord(
        sample_index=index,
        answer=split.answer,
        reasoning=split.reasoning,
        raw_text=text,
        finish_reason=completion.finish_reason,
        trace_closed=split.closed,
        completion_tokens=completion.num_tokens,
        reasoning_tokens=reasoning_tokens,
        answer_tokens=answer_tokens,
    )


def attempt_outcome(samples: Sequence[SampleRecord]) -> AttemptOutcome:
    """Truncated when every sample hit max_tokens (before `</think>` or before its answer ended);
    succeeded when at least one finished on its own."""
    if samples and all(s.finish_reason == "length" for s in samples):
        return AttemptOutcome.TRUNCATED
    return AttemptOutcome.SUCCEEDED
