"""How a sample ended (`results.finish_reason`), as the outcome contract names it (docs/ARCHITECTURE.md).

- `stop`: the model ended its answer itself -> the job `succeeded`.
- `length`: the job's `max_tokens` ran out -> `truncated`; it can be continued with a larger `--max-tokens`.
- `context`: the model's context limit ran out before `max_tokens` -> `truncated`; more tokens cannot help.
- `repetition`: vLLM's repetition detection stopped a loop -> `truncated`; restarted only on request.

vLLM reports a context stop as `length` too: the worker tells them apart by the sample's token count
against the job's `max_tokens` (`finish_kind`). A capped thinking budget that still answered ends `stop`
and is flagged on the result (`thinking_capped`), not a finish kind of its own.
"""

from __future__ import annotations

from typing import Final

STOP: Final = "stop"
LENGTH: Final = "length"
CONTEXT: Final = "context"
REPETITION: Final = "repetition"
# An engine request aborted (a cancel); never stored on a standing result.
ABORT: Final = "abort"

# The finish kinds that leave a sample without a usable answer: a job whose every sample ended so is truncated.
TRUNCATING: Final = frozenset({LENGTH, CONTEXT, REPETITION})
FINISH_KINDS: Final = (STOP, LENGTH, CONTEXT, REPETITION)


def finish_kind(engine_reason: str | None, *, num_tokens: int, max_tokens: int) -> str | None:
    """The stored finish kind of a sample that ended with the engine's `engine_reason` after `num_tokens`
    tokens, asked for at most `max_tokens`. vLLM says `length` for both limits; fewer tokens than asked
    means the context ran out first. Unknown reasons are kept as the engine gave them."""
    if engine_reason == LENGTH and num_tokens < max_tokens:
        return CONTEXT
    return engine_reason
