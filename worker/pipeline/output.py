"""Turning engine completions into stored samples: split the `<think>` trace from the answer, count
tokens, name how each sample ended (schema/contracts/finish.py), and decide whether an attempt succeeded
or was truncated."""

from __future__ import annotations

from collections.abc import Sequence

from vlmbatch.schema.contracts.finish import TRUNCATING, finish_kind
from vlmbatch.schema.contracts.models import SamplingSettings
from vlmbatch.schema.contracts.reasoning import split_trace
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.outcomes import SampleRecord
from vlmbatch.worker.engines.base import Completion


def storable(text: str) -> str:
    """`text` without NUL characters, which PostgreSQL cannot store in text columns (a model may emit
    them; they become U+FFFD, the replacement character)."""
    return text.replace("\x00", "\ufffd")


def to_sample(
    index: int, completion: Completion, *, opened_by_prompt: bool, sampling: SamplingSettings | None = None
) -> SampleRecord:
    """One stored sample of `completion`, asked for with `sampling` (its limits tell a context stop from a
    `length` one and a capped thinking budget from a trace that closed by itself; None: the engine's
    finish reason as it is, and no budget)."""
    text = storable(completion.text)
    split = split_trace(text, opened_by_prompt=opened_by_prompt)
    reasoning_tokens = completion.reasoning_tokens
    if split.reasoning is None:
        reasoning_tokens = 0
    elif not split.closed:
        reasoning_tokens = completion.num_tokens
    answer_tokens = None if reasoning_tokens is None else max(0, completion.num_tokens - reasoning_tokens)
    finish = completion.finish_reason
    capped = None
    if sampling is not None:
        finish = finish_kind(finish, num_tokens=completion.num_tokens, max_tokens=sampling.max_tokens)
        capped = thinking_capped(sampling.thinking_token_budget, closed=split.closed, reasoning_tokens=reasoning_tokens)
    return SampleRecord(
        sample_index=index,
        answer=split.answer,
        reasoning=split.reasoning,
        raw_text=text,
        finish_reason=finish,
        trace_closed=split.closed,
        completion_tokens=completion.num_tokens,
        reasoning_tokens=reasoning_tokens,
        answer_tokens=answer_tokens,
        thinking_capped=capped,
    )


def thinking_capped(budget: int | None, *, closed: bool, reasoning_tokens: int | None) -> bool | None:
    """Whether vLLM closed this trace because its thinking budget ran out: the trace closed with at least
    `budget` tokens up to and including `</think>`. vLLM counts the tokens a chat template puts after
    `<think>` in the prompt too (R1V3's puts a newline there), so its forced `</think>` can come as the
    budget's own last token. A trace that closed by itself within a token of the budget reads as capped:
    the output cannot tell them apart. None without a budget, or without a reasoning count."""
    if budget is None or reasoning_tokens is None:
        return None
    return closed and reasoning_tokens >= budget


def attempt_outcome(samples: Sequence[SampleRecord]) -> AttemptOutcome:
    """Truncated when no sample ended by itself (each hit `max_tokens`, the context, or was stopped as a
    loop); succeeded when at least one did."""
    if samples and all(s.finish_reason in TRUNCATING for s in samples):
        return AttemptOutcome.TRUNCATED
    return AttemptOutcome.SUCCEEDED
