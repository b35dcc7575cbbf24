"""Whether an attempt continues its job's checkpoint, and whether its own output is worth checkpointing.

Sampling is autoregressive: the prompt followed by the checkpointed tokens, sampled with the same
settings, draws from the distribution a trace generated in one go would (and at temperature 0 gives the
same tokens). Where a continuation is not that same draw, the attempt restarts from token 0 (the safe
default; docs/ARCHITECTURE.md, "Outcome contract"):
- a per-request `seed`: the continued request's random stream starts again at the checkpoint;
- constrained outputs (`--choices`, `--json-schema`): the grammar would have to be advanced through the
  prefix;
- a thinking budget: vLLM counts the trace's tokens in the output only, so a continued trace would get
  its whole budget again;
- repetition detection: it looks at the new request's output only;
- `n > 1`: one checkpoint per job, of one sample;
- a checkpoint of a trace that ended otherwise than at its `max_tokens` (the context limit, a loop), or
  that already holds `max_tokens` tokens.
vlmbatch has no stop strings, so none can straddle a checkpoint.
"""

from __future__ import annotations

from vlmbatch.schema.contracts.models import SamplingSettings
from vlmbatch.schema.ledger.checkpoints import CONTINUABLE_FINISH, Checkpoint
from vlmbatch.worker.engines.base import AnswerConstraint, Continuation


def restart_reason(sampling: SamplingSettings, *, seed: int | None, constraint: AnswerConstraint | None) -> str | None:
    """Why a trace sampled this way cannot be continued (None: it can)."""
    if sampling.samples != 1:
        return "n > 1"
    if seed is not None:
        return "a per-request seed"
    if constraint is not None:
        return "a constrained answer"
    if sampling.thinking_token_budget is not None:
        return "a thinking budget"
    if sampling.repetition_detection is not None:
        return "repetition detection"
    return None


def continuation(
    checkpoint: Checkpoint | None,
    sampling: SamplingSettings,
    *,
    seed: int | None,
    constraint: AnswerConstraint | None,
) -> Continuation | None:
    """What the attempt continues: its job's checkpoint, when the job's sampling allows it, the checkpoint
    ended (if at all) at its max_tokens, and tokens are left to generate; else None (start again)."""
    if checkpoint is None or not checkpoint.token_ids:
        return None
    if checkpoint.finish_reason not in (None, CONTINUABLE_FINISH):
        return None
    if checkpoint.tokens >= sampling.max_tokens:
        return None
    if restart_reason(sampling, seed=seed, constraint=constraint) is not None:
        return None
    return Continuation(token_ids=checkpoint.token_ids, text=checkpoint.text)
