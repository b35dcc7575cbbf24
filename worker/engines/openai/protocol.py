"""The wire format: chat-completion request bodies (a system turn, images as data URLs where the user turn
places them, `n` samples, R1V3 sampling, tile bounds, structured outputs) and the streamed answer turned
back into the in-process engine's completions."""

from __future__ import annotations

import base64
import io
import json
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL.Image import Image

from vlmbatch.schema.contracts.reasoning import THINK_CLOSE
from vlmbatch.worker.engines.base import Completion, GenerationRequest

# Tokens per streamed chunk: a sign of life every second or two of a trace, without per-token JSON.
STREAM_INTERVAL = 64
JPEG_QUALITY = 95


@dataclass
class Sample:
    reasoning: str = ""
    content: str = ""
    token_ids: list[int] = field(default_factory=list)
    has_token_ids: bool = False
    finish_reason: str | None = None


def chat_body(request: GenerationRequest, *, model: str, max_model_len: int | None) -> dict[str, Any]:
    """The streamed chat-completion request of one job."""
    s = request.sampling
    content: list[dict[str, Any]] = [
        {"type": "text", "text": part}
        if isinstance(part, str)
        else {"type": "image_url", "image_url": {"url": data_url(request.images[part])}}
        for part in request.user_parts()
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": content}]
    if request.system is not None:
        messages.insert(0, {"role": "system", "content": request.system})
    max_tokens = s.max_tokens if max_model_len is None else min(s.max_tokens, max_model_len)
    body: dict[str, Any] = {
        "model": model,
        "messages": messages,
        "n": s.samples,
        "temperature": s.temperature,
        "top_p": s.top_p,
        "repetition_penalty": s.repetition_penalty,
        # The server refuses more than its context; in-process vLLM stops there with "length": clamp.
        "max_completion_tokens": max_tokens,
        "ignore_eos": s.ignore_eos,
        "mm_processor_kwargs": {"max_dynamic_patch": request.max_tiles},
        "stream": True,
        "stream_options": {"include_usage": True},
        "stream_interval": STREAM_INTERVAL,
        "return_token_ids": True,
        "request_id": request.request_id,  # the server's logs then name the job and attempt
    }
    if request.seed is not None:
        body["seed"] = request.seed
    # vLLM's own request fields (its server reads them from the body, as `SamplingParams` names them).
    if s.repetition_detection is not None:
        body["repetition_detection"] = s.repetition_detection.model_dump()
    if s.thinking_token_budget is not None:
        body["thinking_token_budget"] = s.thinking_token_budget
    constraint = request.constraint
    if constraint is not None:
        structured = {"choice": list(constraint.choices)} if constraint.choices else {"json": constraint.json_schema}
        body["structured_outputs"] = structured
    return body


def completions(samples: list[Sample], total_tokens: int, *, think_close_id: int | None) -> list[Completion]:
    """Each sample as a Completion with its token count (exact from token ids, else the total split by text
    length) and its reasoning tokens where `</think>`'s id is known."""
    texts = [raw_text(s, think_close_id=think_close_id) for s in samples]
    if all(s.has_token_ids for s in samples):
        counts = [len(s.token_ids) for s in samples]
    else:  # no per-sample counts from this server: split the total by text length
        lengths = [max(1, len(text)) for text in texts]
        counts = [round(total_tokens * n / sum(lengths)) for n in lengths]
    completions = []
    for sample, text, count in zip(samples, texts, counts, strict=True):
        reasoning_tokens = None
        if sample.has_token_ids and think_close_id in sample.token_ids:
            reasoning_tokens = sample.token_ids.index(think_close_id) + 1
        completions.append(
            Completion(
                text=text, num_tokens=count, finish_reason=sample.finish_reason, reasoning_tokens=reasoning_tokens
            )
        )
    return completions


def absorb(sample: Sample, choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    # `reasoning` since vLLM 0.31; `reasoning_content` before.
    sample.reasoning += delta.get("reasoning") or delta.get("reasoning_content") or ""
    sample.content += delta.get("content") or ""
    if choice.get("token_ids") is not None:
        sample.has_token_ids = True
        sample.token_ids.extend(choice["token_ids"])
    if choice.get("finish_reason"):
        sample.finish_reason = choice["finish_reason"]


def raw_text(sample: Sample, *, think_close_id: int | None) -> str:
    """The sample's generated text as the in-process engine would return it.

    A server with `--reasoning-parser` strips `</think>` and returns the trace apart: put it back where
    it was. Whether the trace closed is read from the token ids when we know `</think>`'s id; otherwise
    a trace closed if an answer followed it or the sample did not run out of tokens.
    """
    joined = sample.reasoning + sample.content
    if THINK_CLOSE in joined or (not sample.reasoning and think_close_id is None):
        return joined
    if think_close_id is not None and sample.has_token_ids:
        closed = think_close_id in sample.token_ids
    else:
        closed = bool(sample.content) or sample.finish_reason != "length"
    return sample.reasoning + THINK_CLOSE + sample.content if closed else joined


def data_url(image: Image) -> str:
    """An image as a base64 data URL: JPEG for RGB (what media.images decodes to), PNG for anything else."""
    buffer = io.BytesIO()
    if image.mode == "RGB":
        # 4:4:4 at quality 95: visually lossless, and ~10x smaller and faster than PNG for photographs.
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def error_message(response: httpx.Response) -> str:
    """vLLM's `{"error": {"message": …}}`, or the body itself."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:2000]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return json.dumps(payload)[:2000]
