"""The shape of a reasoning model's output: `<think>trace</think>answer` (Skywork-R1V3, DeepSeek-R1 style).

The one definition of the markers, used by the worker (splitting outputs), the engines (probing whether
the chat template opens the trace), the exports (SFT records) and the smoke model's tokenizer.
"""

from __future__ import annotations

from dataclasses import dataclass

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"


@dataclass(frozen=True)
class SplitOutput:
    reasoning: str | None
    answer: str
    # False when a trace was opened and never closed (the model ran out of tokens while thinking).
    closed: bool


def split_trace(text: str, *, opened_by_prompt: bool) -> SplitOutput:
    """Split generated text at the first `</think>`.

    The opening tag is optional: R1V3's chat template puts it in the prompt, so the generated text
    starts inside the trace. Without any trace (a model that does not reason) the text is the answer.
    """
    head, sep, tail = text.partition(THINK_CLOSE)
    if sep:
        reasoning = head.split(THINK_OPEN, 1)[1] if THINK_OPEN in head else head
        return SplitOutput(reasoning=reasoning.strip(), answer=tail.strip(), closed=True)
    if THINK_OPEN in text:
        return SplitOutput(reasoning=text.split(THINK_OPEN, 1)[1].strip(), answer="", closed=False)
    if opened_by_prompt:
        return SplitOutput(reasoning=text.strip(), answer="", closed=False)
    return SplitOutput(reasoning=None, answer=text.strip(), closed=True)


def join_trace(reasoning: str | None, answer: str, *, closed: bool) -> str:
    """The assistant turn as a reasoning model writes it: `<think>\\ntrace\\n</think>\\n\\nanswer`, or only
    the opened trace when it never closed (a truncated sample, kept as it was produced)."""
    trace = (reasoning or "").strip()
    if not closed:
        return f"{THINK_OPEN}\n{trace}"
    return f"{THINK_OPEN}\n{trace}\n{THINK_CLOSE}\n\n{answer.strip()}"
