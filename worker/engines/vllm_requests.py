"""A job's request in vLLM's terms, and vLLM's answer and errors back in the engine seam's terms.

The prompt goes through vLLM's own chat renderer (so any vLLM-supported VLM gets its own image placeholder
and chat template); the sampling parameters carry `n` samples, a seed, an answer constraint and a thinking
budget; vLLM's validation and engine errors map onto the error taxonomy.
"""

from __future__ import annotations

from typing import Any

from vlmbatch.schema.contracts.errors import EngineDead, EngineOutOfMemory, InputUnsupported, PromptTooLong
from vlmbatch.worker.engines.base import Completion, GenerationRequest, TraceProgress, is_prompt_too_long
from vlmbatch.worker.engines.cpu_build import is_cpu_build


async def render(llm: Any, request: GenerationRequest) -> Any:
    """The engine input for `request`, rendered by `llm`'s chat renderer."""
    from vllm.renderers import ChatParams

    content: list[dict[str, Any]] = [
        {"type": "text", "text": part}
        if isinstance(part, str)
        else {"type": "image_pil", "image_pil": request.images[part]}
        for part in request.user_parts()
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if request.system is not None:
        messages.insert(0, {"role": "system", "content": request.system})
    mm_kwargs = {"max_dynamic_patch": request.max_tiles}
    renderer = llm.renderer
    chat_params = ChatParams(
        chat_template_kwargs={"add_generation_prompt": True, "continue_final_message": False},
        mm_processor_kwargs=mm_kwargs,
    )
    _, (engine_input,) = await renderer.render_chat_async(
        [messages],
        chat_params,
        renderer.default_chat_tok_params.with_kwargs(add_special_tokens=False),
        prompt_extras={"mm_processor_kwargs": mm_kwargs},
    )
    return engine_input


def continue_prompt(engine_input: Any, token_ids: tuple[int, ...]) -> int:
    """Put an earlier attempt's output after the rendered prompt, as the assistant's unfinished turn: the
    ids themselves, never their text tokenised again (the same tokens, so the same draw at temperature 0).
    The images' placeholders lie before it, so the prompt's prefix (and its cached KV) is unchanged.
    Returns the tokens added."""
    prompt = engine_input.get("prompt_token_ids") if isinstance(engine_input, dict) else None
    if prompt is None or not token_ids:
        return 0
    engine_input["prompt_token_ids"] = [*prompt, *token_ids]
    return len(token_ids)


def streams(request: GenerationRequest, continued: int) -> dict[int, TraceProgress] | None:
    """Where the streamed outputs go, by sample index; None: final outputs only, as before checkpoints.
    Streamed only when someone reads the output so far (checkpoints) or a continuation must be put back
    in front of it. A continued trace so far is the whole trace: its continuation comes first."""
    if request.progress is None and not continued:
        return None
    progress = request.progress if request.progress is not None else TraceProgress()  # empty is falsy
    if continued and request.continuation is not None:
        progress.add(request.continuation.token_ids, request.continuation.text)
    return {0: progress}


def sampling_params(request: GenerationRequest, *, continued: int = 0, streamed: bool = False) -> Any:
    """vLLM's SamplingParams for `request`, which continues `continued` output tokens already generated;
    `streamed`: each step's new tokens (DELTA), else the final output only. Raises InputUnsupported for a
    seed on vLLM's CPU build."""
    from vllm import SamplingParams
    from vllm.sampling_params import RequestOutputKind

    s = request.sampling
    extra: dict[str, Any] = {}
    if request.seed is not None:
        if is_cpu_build():
            # vLLM's CPU build kills the whole engine on a seeded request whose prefill is split.
            raise InputUnsupported("per-request seeds are not supported by vLLM's CPU build")
        extra["seed"] = request.seed
    if request.constraint is not None:
        extra["structured_outputs"] = _structured(request.constraint.choices, request.constraint.json_schema)
    if s.repetition_detection is not None:
        from vllm.sampling_params import RepetitionDetectionParams

        extra["repetition_detection"] = RepetitionDetectionParams(**s.repetition_detection.model_dump())
    if s.thinking_token_budget is not None:
        extra["thinking_token_budget"] = s.thinking_token_budget
    return SamplingParams(
        n=s.samples,
        temperature=s.temperature,
        top_p=s.top_p,
        repetition_penalty=s.repetition_penalty,
        # A continuation's tokens count against the job's max_tokens (the pipeline continues only while
        # some are left).
        max_tokens=s.max_tokens - continued,
        ignore_eos=s.ignore_eos,
        # DELTA: each step's new tokens only (a cumulative output would copy the whole trace every step).
        output_kind=RequestOutputKind.DELTA if streamed else RequestOutputKind.FINAL_ONLY,
        **extra,
    )


def completion(output_ids: Any, text: str, finish_reason: str | None, *, think_close_id: int | None) -> Completion:
    """One sample of vLLM's output; the trace's tokens counted up to `think_close_id` when it shows."""
    token_ids = list(output_ids)
    reasoning_tokens = None
    if think_close_id is not None and think_close_id in token_ids:
        reasoning_tokens = token_ids.index(think_close_id) + 1
    return Completion(
        text=text,
        num_tokens=len(token_ids),
        finish_reason=finish_reason,
        reasoning_tokens=reasoning_tokens,
        token_ids=tuple(token_ids),
    )


def _structured(choices: tuple[str, ...] | None, json_schema: dict[str, Any] | None) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if choices:
        return StructuredOutputsParams(choice=list(choices))
    return StructuredOutputsParams(json=json_schema)


def dead(exc: BaseException) -> Exception:
    """vLLM's EngineDeadError as EngineOutOfMemory or EngineDead."""
    text = f"{exc} {exc.__cause__ or ''}".lower()
    if "out of memory" in text:
        return EngineOutOfMemory(f"engine ran out of memory: {exc}")
    return EngineDead(f"engine died: {exc}")


def classify_validation(exc: Exception) -> Exception:
    """vLLM's refusal of a request as PromptTooLong or InputUnsupported."""
    text = str(exc)
    if is_prompt_too_long(text):
        return PromptTooLong(text)
    return InputUnsupported(f"the engine refused the request: {text}")
