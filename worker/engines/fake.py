"""A deterministic engine for control-plane tests and benchmarks: no model, same interface.

It answers `<think>…</think>answer` with word-level token counts, honours max_tokens (a long trace is
cut and reported as `length`) and its context (cut there, reported as `length`, as vLLM does), refuses
prompts over its context like vLLM does, and can take time per request so that concurrency is observable.
A question holding `loop_marker` loops (one phrase forever): it runs to its limit, or stops `repetition`
where vLLM's repetition detection would; a thinking budget caps the trace and forces `</think>`. Its
tokens are words with stable ids: it fills a request's `progress` as it "generates" (checkpoints) and
continues a request's continuation when that is the start of the completion it would give (a resumed
trace waits only for the rest). Never the only proof of a feature (STYLE.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import time
from dataclasses import dataclass, replace
from functools import lru_cache

from vlmbatch.schema.contracts.errors import JobCancelled, PromptTooLong
from vlmbatch.schema.contracts.models import RepetitionDetection
from vlmbatch.worker.engines.base import Completion, EngineStats, Generation, GenerationRequest, TraceProgress

# Prompt tokens the fake charges per image tile (InternVL: 256 per 448 px tile).
TOKENS_PER_TILE = 256
_TILE_PIXELS = 448 * 448


@dataclass(frozen=True)
class FakeBehaviour:
    # Words in each trace before `</think>`.
    trace_tokens: int = 24
    # Seconds each request takes before its first token, and generation speed (0: instant).
    latency_s: float = 0.0
    tokens_per_second: float = 0.0
    max_model_len: int = 32768
    # Answers handed out in turn, one per sample across all requests (tests of grading); None: derived
    # from the question and image sizes.
    answer_cycle: tuple[str, ...] | None = None
    # Keep every request in `FakeEngine.requests`, in the order they reached the engine (tests of
    # message layout and of request order); off by default so long benchmarks hold nothing per request.
    record_requests: bool = False
    # A question holding this text makes its samples loop (tests of repetition detection); None: never.
    loop_marker: str | None = None


# A request with a delay fills its progress in this many steps.
PROGRESS_STEPS = 20

# The phrase a looping sample repeats: LOOP_PERIOD distinct words.
LOOP_PHRASE = tuple(f"again{i}" for i in range(20))
LOOP_PERIOD = len(LOOP_PHRASE)


class FakeEngine:
    def __init__(self, model: str, behaviour: FakeBehaviour | None = None) -> None:
        self._model = model
        self._behaviour = behaviour or FakeBehaviour()
        self._in_flight: dict[str, asyncio.Event] = {}
        self.max_in_flight = 0
        self.requests_seen = 0
        self._tokens = 0
        self._answers_given = 0
        self.requests: list[GenerationRequest] = []

    @property
    def model(self) -> str:
        return self._model

    async def start(self) -> None:
        return None

    def stats(self) -> EngineStats:
        return EngineStats(running=len(self._in_flight), waiting=0, kv_cache_usage=None)

    def progress(self) -> int:
        return self._tokens

    async def abort(self, request_id: str) -> None:
        event = self._in_flight.get(request_id)
        if event is not None:
            event.set()

    async def shutdown(self) -> None:
        for event in self._in_flight.values():
            event.set()

    async def generate(self, request: GenerationRequest) -> Generation:
        b = self._behaviour
        prompt_tokens = (
            len(request.question.split())
            + len((request.system or "").split())
            + sum(TOKENS_PER_TILE * _tiles(image.width * image.height, request.max_tiles) for image in request.images)
        )
        if prompt_tokens + 1 > b.max_model_len:
            raise PromptTooLong(
                f"prompt of {prompt_tokens} tokens is longer than the context of {b.max_model_len} tokens"
            )
        aborted = asyncio.Event()
        self._in_flight[request.request_id] = aborted
        self.requests_seen += 1
        if b.record_requests:
            self.requests.append(request)
        self.max_in_flight = max(self.max_in_flight, len(self._in_flight))
        started = time.perf_counter()
        try:
            room = b.max_model_len - prompt_tokens
            completions = [_with_ids(self._complete(request, i, room)) for i in range(request.sampling.samples)]
            continued = _continued(request, completions)
            longest = max(c.num_tokens for c in completions) - continued
            delay = b.latency_s + (longest / b.tokens_per_second if b.tokens_per_second else 0.0)
            if delay > 0:
                await self._wait(aborted, delay, request, completions[0], continued)
            else:
                await asyncio.sleep(0)
            if aborted.is_set():
                raise JobCancelled(f"request {request.request_id} was aborted")
        finally:
            self._in_flight.pop(request.request_id, None)
        self._tokens += sum(c.num_tokens for c in completions) - continued
        return Generation(
            prompt_tokens=prompt_tokens,
            completions=completions,
            first_token_s=b.latency_s if b.latency_s else time.perf_counter() - started,
            trace_opened_by_prompt=True,
            continued_tokens=continued,
        )

    async def _wait(
        self, aborted: asyncio.Event, delay: float, request: GenerationRequest, first: Completion, continued: int
    ) -> None:
        """Wait `delay` (or until aborted), filling the request's progress with the first sample's tokens
        step by step, as a streaming engine would."""
        progress = request.progress if request.sampling.samples == 1 else None
        ids = first.token_ids or ()
        words = first.text.split(" ")
        if progress is not None and continued:
            progress.add(ids[:continued], " ".join(words[:continued]))
        steps = PROGRESS_STEPS if progress is not None else 1
        done = continued
        for step in range(1, steps + 1):
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(aborted.wait(), timeout=delay / steps)
            if aborted.is_set():
                return
            if progress is not None:
                upto = continued + (len(ids) - continued) * step // steps
                _fill(progress, ids[done:upto], words[done:upto])
                done = upto

    def _complete(self, request: GenerationRequest, sample: int, room: int) -> Completion:
        size = "x".join(f"{im.width}x{im.height}" for im in request.images)
        digest = hashlib.sha256(f"{request.question}|{sample}|{size}".encode()).hexdigest()
        s = request.sampling
        # vLLM stops at whichever comes first, the job's max_tokens or the context, and says `length` for both.
        limit = min(s.max_tokens, room)
        marker = self._behaviour.loop_marker
        if marker is not None and marker in request.question and not s.ignore_eos:
            return _loop(limit, s.repetition_detection)
        words = [f"w{digest[i % 32]}" for i in range(self._behaviour.trace_tokens)]
        words[:3] = ["looking", "at", size]
        budget = s.thinking_token_budget
        if budget is not None and len(words) >= budget:
            # vLLM forces `</think>` once the budget is spent, counting the newline R1V3's prompt puts after
            # `<think>`: the budget's last token is the `</think>`.
            words = words[: max(0, budget - 1)]
        if s.ignore_eos or len(words) + 2 > limit:
            trace = (words * (limit // max(1, len(words)) + 1))[:limit]
            return Completion(text=" ".join(trace), num_tokens=limit, finish_reason="length")
        if self._behaviour.answer_cycle:
            cycle = self._behaviour.answer_cycle
            answer = cycle[self._answers_given % len(cycle)]
            self._answers_given += 1
        elif request.constraint and request.constraint.choices:
            answer = request.constraint.choices[int(digest, 16) % len(request.constraint.choices)]
        else:
            answer = f"answer-{digest[:8]}"
        text = " ".join(words) + "</think>" + answer
        return Completion(text=text, num_tokens=len(words) + 2, finish_reason="stop", reasoning_tokens=len(words) + 1)


@lru_cache(maxsize=4096)
def _token_id(word: str) -> int:
    """A word's stable token id (31 bits: it packs as int32)."""
    return int(hashlib.sha256(word.encode()).hexdigest()[:7], 16)


def token_ids_of(text: str) -> tuple[int, ...]:
    """The token ids of a text this engine wrote (`</think>` and the answer are a token each): what a
    test compares a checkpoint's ids with."""
    trace, closed, answer = text.partition("</think>")
    words = trace.split(" ") if trace else []
    if closed:
        words += [closed, answer]
    return tuple(_token_id(w) for w in words)


def _with_ids(completion: Completion) -> Completion:
    """The completion with its words' token ids."""
    return replace(completion, token_ids=token_ids_of(completion.text))


def _continued(request: GenerationRequest, completions: list[Completion]) -> int:
    """The continuation's tokens, when they begin the one sample's completion (else 0: start again)."""
    continuation = request.continuation
    if continuation is None or len(completions) != 1:
        return 0
    ids = completions[0].token_ids or ()
    prefix = continuation.token_ids
    return len(prefix) if 0 < len(prefix) <= len(ids) and ids[: len(prefix)] == prefix else 0


def _fill(progress: TraceProgress, ids: tuple[int, ...], words: list[str]) -> None:
    if ids:
        progress.add(ids, " ".join(words) + " ")


def _loop(limit: int, detection: RepetitionDetection | None) -> Completion:
    """A sample that repeats LOOP_PHRASE from its first token: stopped where vLLM's detector first sees
    `min_count` copies of a period in its range (the phrase's periods are multiples of LOOP_PERIOD), else
    cut at `limit`."""
    stop_at = None
    if detection is not None:
        smallest = max(1, detection.min_pattern_size)
        periods = [p for p in range(LOOP_PERIOD, detection.max_pattern_size + 1, LOOP_PERIOD) if p >= smallest]
        if periods:
            stop_at = periods[0] * detection.min_count
    tokens = limit if stop_at is None else min(limit, stop_at)
    # vLLM checks the length limit before repetition: a loop caught on the last allowed token is `length`.
    reason = "repetition" if stop_at is not None and stop_at < limit else "length"
    trace = (LOOP_PHRASE * (tokens // LOOP_PERIOD + 1))[:tokens]
    return Completion(text=" ".join(trace), num_tokens=tokens, finish_reason=reason)


def _tiles(pixels: int, max_tiles: int) -> int:
    tiles = max(1, min(max_tiles, round(pixels / _TILE_PIXELS)))
    return tiles + (1 if tiles > 1 else 0)  # the thumbnail tile
