"""The engine seam: the worker's only view of the model server.

An engine takes many requests at once (continuous batching): `generate` is a coroutine that many jobs
await concurrently on the pipeline's event loop, and a finished request frees its slot at once.
Implementations: `vllm_engine` (in-process vLLM), `openai` (a remote vLLM server), `fake` (deterministic, for
tests); `thread` runs any of them on an event loop of its own.
"""

from __future__ import annotations

import threading
from array import array
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from PIL.Image import Image

from vlmbatch.schema.contracts.models import SamplingSettings
from vlmbatch.schema.contracts.placement import UserLayout

# vLLM's messages when a prompt does not fit the context: at render, once images are expanded, or from
# its server (in-process and remote engines see the same texts).
PROMPT_TOO_LONG_MARKERS = ("maximum context length", "longer than the maximum model length", "exceeds")


@dataclass(frozen=True)
class AnswerConstraint:
    """Constrain the answer (after the trace) to one of `choices` or to JSON matching `json_schema`."""

    choices: tuple[str, ...] | None = None
    json_schema: dict[str, Any] | None = None


class TraceProgress:
    """A request's output so far, which the engine keeps current while it generates (one sample, n = 1):
    the worker reads it to write checkpoints. Engines that cannot stream leave it empty. Appended to on
    the engine's thread, read on the pipeline's (a lock: one step's ids and text go together). Compact for
    long traces: 4 bytes a token id, and the text's pieces joined whenever it is read."""

    def __init__(self) -> None:
        self._ids = array("i")
        self._pieces: list[str] = []
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._ids)

    def add(self, token_ids: Sequence[int], text: str) -> None:
        with self._lock:
            self._ids.extend(token_ids)
            if text:
                self._pieces.append(text)

    def snapshot(self) -> tuple[tuple[int, ...], str]:
        """The token ids and text as they are now."""
        with self._lock:
            return tuple(self._ids), self._text()

    @property
    def token_ids(self) -> list[int]:
        with self._lock:
            return self._ids.tolist()

    @property
    def text(self) -> str:
        with self._lock:
            return self._text()

    def _text(self) -> str:
        text = "".join(self._pieces)
        self._pieces[:] = [text] if text else []  # one piece from now on: a step's text is a few characters
        return text


@dataclass(frozen=True)
class Continuation:
    """The output an earlier attempt generated, which this request continues token for token: the
    prompt, then these tokens as the assistant's unfinished turn; `max_tokens` counts them."""

    token_ids: tuple[int, ...]
    text: str


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    images: Sequence[Image]
    question: str
    sampling: SamplingSettings
    # InternVL-style dynamic tiling bound, passed per request to the multimodal processor.
    max_tiles: int
    constraint: AnswerConstraint | None = None
    # The system turn, if any.
    system: str | None = None
    # The user turn in order: text pieces and indexes into `images` (schema.contracts.placement.user_layout); None:
    # the images first, then the question.
    layout: UserLayout | None = None
    # A per-request sampling seed (engines that cannot honour one refuse the request).
    seed: int | None = None
    # Continue this output instead of starting the trace again (engines that cannot: `continued` 0).
    continuation: Continuation | None = None
    # Where the engine keeps the output so far, for checkpoints (None: not wanted, final output only).
    progress: TraceProgress | None = None

    def user_parts(self) -> UserLayout:
        """The user turn in order, images as indexes into `images`."""
        if self.layout is not None:
            return self.layout
        return (*range(len(self.images)), self.question)


@dataclass(frozen=True)
class Completion:
    """One sample: the generated text (without the prompt) and how it ended."""

    text: str
    num_tokens: int
    # "stop" (end of sequence or stop string), "length" (hit max_tokens), "abort"; None if unknown.
    finish_reason: str | None
    # Tokens up to and including the end-of-trace marker, when the engine could count them exactly.
    reasoning_tokens: int | None = None
    # The output's token ids, when the engine has them (a continued request's include its continuation).
    token_ids: tuple[int, ...] | None = None


@dataclass(frozen=True)
class Generation:
    prompt_tokens: int
    completions: Sequence[Completion]
    # Seconds from submission to the first generated token, when the engine reports it.
    first_token_s: float | None = None
    # The rendered prompt itself opened a `<think>` trace (R1V3's chat template does).
    trace_opened_by_prompt: bool = False
    # Output tokens the request continued (GenerationRequest.continuation), counted in each completion;
    # 0 when the engine started the trace again.
    continued_tokens: int = 0


@dataclass(frozen=True)
class EngineStats:
    running: int
    waiting: int
    kv_cache_usage: float | None = None
    # Requests the engine preempted (KV cache full: their KV dropped, recomputed later), since it started.
    preemptions: int = 0
    # Why the engine is dead, when it knows it is (vLLM's `errored`): a request that reached it after its
    # core died may wait forever, so the heartbeat asks rather than waiting for an error to surface.
    dead: str | None = None


class Engine(Protocol):
    """Raises from `generate`: PromptTooLong, EngineOutOfMemory, EngineDead, JobCancelled (aborted)."""

    @property
    def model(self) -> str: ...

    async def start(self) -> None: ...

    async def generate(self, request: GenerationRequest) -> Generation: ...

    async def abort(self, request_id: str) -> None: ...

    def stats(self) -> EngineStats: ...

    def progress(self) -> int:
        """A counter that grows whenever the engine makes progress (tokens generated). The worker's
        watchdog declares the engine hung when it stops growing while requests are in flight."""
        ...

    async def shutdown(self) -> None: ...


def is_prompt_too_long(message: str) -> bool:
    """Whether an engine's refusal says the prompt does not fit the context (`prompt.too_long`)."""
    return any(marker in message for marker in PROMPT_TOO_LONG_MARKERS)
