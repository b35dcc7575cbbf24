"""An engine that sends jobs to a running OpenAI-compatible vLLM server instead of holding one in the worker.

`VLMBATCH_ENGINE=openai` + `VLMBATCH_OPENAI_BASE_URL=http://host:8000/v1`. The server is started as R1V3's
model card says (`vllm serve … --trust-remote-code --limit-mm-per-prompt '{"image": N}'`) plus
`--trust-request-mm-kwargs`, which vLLM ≥0.32 requires for the per-request tile bound (`max_dynamic_patch`);
`start()` refuses a server without it, and one that does not serve `settings.model` (runs are keyed by model
name: use `--served-model-name`).

Behaviour mirrors worker.vllm_engine:
- Requests are streamed chat completions (images as base64 JPEG data URLs, `n` samples, R1V3 sampling,
  `structured_outputs` for constrained answers). Streaming gives the first-token time and keeps a 25-minute
  trace's connection busy through proxies; `stream_interval` keeps it to one chunk per ~64 tokens.
  At most `max_num_seqs` requests are open at once, over a keep-alive pool of that size.
- `return_token_ids` gives each sample's exact token count and the position of `</think>` (reasoning
  tokens). Without token ids (an older server), the usage total is split across samples by text length.
- Start the server with `--reasoning-parser deepseek_r1` (what the in-process engine's `reasoning_parser=auto`
  picks) so that a constrained answer is enforced only after the trace. Such a server returns the trace apart
  (`reasoning`): it is joined back as `reasoning</think>content`, so worker.output splits it exactly like the
  in-process engine's text. Without a parser the content is the raw text already.
- `trace_opened_by_prompt`: the server renders R1V3's chat template through `/tokenize` once at start,
  like the in-process probe; `VLMBATCH_TRACE_OPENED_BY_PROMPT` overrides it (servers without `/tokenize`).
- `abort()` cancels the HTTP request; vLLM aborts a request whose client disconnected.
- `stats()`/`progress()` come from the server's Prometheus `/metrics`, polled every few seconds, so the
  pipeline's hang watchdog works unchanged.

Errors. 400s: `PromptTooLong` when the message says the prompt exceeds the context, else `InputUnsupported`
with the server's message. Unreachable server (connection refused or dropped, 502/503/504) is retried with
backoff for `openai_retry_seconds` (a server restart or a brief overload passes unnoticed), then raises
`EngineDead`: the worker hands its jobs back and exits, its supervisor restarts it, and the new worker's
`start()` waits for the server (`openai_start_timeout_seconds`) before claiming anything. An outage thus costs
the jobs in flight one attempt each and no other job any. We chose this over a per-job transient error: the
taxonomy has no `engine.*` error that leaves the worker running, and failing every job in flight one by one
while the server is away would spend their retries for nothing. A 500 from a server whose `/health` is fine
is that request's failure (`InternalError`); a 401/403/404 (wrong key, or the model no longer served) is a
configuration the worker cannot fix: `EngineDead`.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from PIL.Image import Image
from prometheus_client.parser import text_string_to_metric_families

from vlmbatch.schema.errors import (
    ConfigurationError,
    EngineDead,
    InputUnsupported,
    InternalError,
    JobCancelled,
    JobError,
    PromptTooLong,
)
from vlmbatch.schema.settings import Settings
from vlmbatch.worker.engines.base import Completion, EngineStats, Generation, GenerationRequest

log = logging.getLogger(__name__)

THINK_OPEN = "<think>"
THINK_CLOSE = "</think>"
# vLLM's messages when a prompt does not fit the context (at render, or once images are expanded).
_TOO_LONG_MARKERS = ("maximum context length", "longer than the maximum model length")
_MM_KWARGS_REFUSED = "--trust-request-mm-kwargs"
_UNAVAILABLE_STATUS = frozenset({502, 503, 504})
# Tokens per streamed chunk: a sign of life every second or two of a trace, without per-token JSON.
STREAM_INTERVAL = 64
JPEG_QUALITY = 95
METRICS_INTERVAL_S = 2.0
# Below uvicorn's 5 s keep-alive (vLLM's default): never reuse a connection the server is closing.
_KEEPALIVE_EXPIRY_S = 4.0
_METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
_GENERATED = "vllm:generation_tokens_total"


class _ServerUnavailable(Exception):
    """The server could not be reached or could not take the request now (retried)."""


@dataclass
class _Telemetry:
    """What the server's /metrics said last, summed over its engines."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    generated_tokens: int = 0  # monotonic, across server restarts
    max_running: int = 0
    _last_counter: float = 0.0

    def update(self, metrics: dict[str, list[float]]) -> None:
        self.running = int(sum(metrics.get(_METRICS[0], [])))
        self.waiting = int(sum(metrics.get(_METRICS[1], [])))
        kv = metrics.get(_METRICS[2])
        self.kv_cache_usage = sum(kv) / len(kv) if kv else None
        self.max_running = max(self.max_running, self.running)
        counter = sum(metrics.get(_GENERATED, []))
        # A counter that went down belongs to a restarted server: everything it shows is new progress.
        self.generated_tokens += int(counter - self._last_counter if counter >= self._last_counter else counter)
        self._last_counter = counter


@dataclass
class _Sample:
    reasoning: str = ""
    content: str = ""
    token_ids: list[int] = field(default_factory=list)
    has_token_ids: bool = False
    finish_reason: str | None = None


class OpenAIEngine:
    def __init__(self, settings: Settings, *, metrics_interval_s: float = METRICS_INTERVAL_S) -> None:
        if not settings.openai_base_url:
            raise ConfigurationError("VLMBATCH_ENGINE=openai needs VLMBATCH_OPENAI_BASE_URL (http://host:8000/v1)")
        self._settings = settings
        self._api = settings.openai_base_url.rstrip("/")
        # /health, /metrics and /tokenize live at the server's root, beside /v1.
        self._root = self._api.removesuffix("/v1")
        self._metrics_interval_s = metrics_interval_s
        self._client: httpx.AsyncClient | None = None
        self._slots = asyncio.Semaphore(settings.max_num_seqs)
        # request id → its HTTP task (None until it is sent); ids aborted before they finished.
        self._requests: dict[str, asyncio.Task[Generation] | None] = {}
        self._aborted: set[str] = set()
        self._poller: asyncio.Task[None] | None = None
        # Until the server's template says otherwise: R1V3's opens the trace in the prompt.
        self._opens_trace = True if settings.trace_opened_by_prompt is None else settings.trace_opened_by_prompt
        self._think_close_id: int | None = None
        self._max_model_len: int | None = None
        self.telemetry = _Telemetry()

    @property
    def model(self) -> str:
        return self._settings.model

    # -- lifecycle -------------------------------------------------------------------------------------

    async def start(self) -> None:
        """Wait for the server, check it serves `settings.model` and accepts per-request tile bounds.

        Raises EngineDead if it does not answer within `openai_start_timeout_seconds`, ConfigurationError if
        it serves another model, refuses our key, or was started without `--trust-request-mm-kwargs`.
        """
        s = self._settings
        headers = {"Authorization": f"Bearer {s.openai_api_key.get_secret_value()}"} if s.openai_api_key else {}
        pool = s.max_num_seqs + 2  # the generation slots, plus room for /metrics and /health
        self._client = httpx.AsyncClient(
            headers=headers,
            limits=httpx.Limits(
                max_connections=pool, max_keepalive_connections=pool, keepalive_expiry=_KEEPALIVE_EXPIRY_S
            ),
            # `read` bounds the silence between chunks: a request may sit in the server's queue that long.
            timeout=httpx.Timeout(connect=10.0, read=s.openai_timeout_seconds, write=60.0, pool=60.0),
        )
        started = time.perf_counter()
        card = await self._wait_for_model()
        self._max_model_len = card.get("max_model_len")
        await self._probe_template()
        self._poller = asyncio.create_task(self._poll_metrics(), name="openai-metrics")
        log.info(
            "vLLM server at %s serves %s (ready after %.1fs; trace opened by prompt: %s)",
            self._root,
            s.model,
            time.perf_counter() - started,
            self._opens_trace,
        )

    async def shutdown(self) -> None:
        for request_id in list(self._requests):
            await self.abort(request_id)
        if self._poller is not None:
            self._poller.cancel()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def _wait_for_model(self) -> dict[str, Any]:
        s = self._settings
        deadline = time.monotonic() + s.openai_start_timeout_seconds
        url = f"{self._api}/models"
        while True:
            try:
                response = await self._http.get(url)
            except httpx.TransportError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            else:
                if response.status_code == 200:
                    break
                if response.status_code < 500:  # a wrong URL or key does not fix itself: say so now
                    raise ConfigurationError(f"{url} answered {response.status_code}: {_error_message(response)}")
                problem = f"HTTP {response.status_code}"
            if time.monotonic() > deadline:
                raise EngineDead(
                    f"the vLLM server at {self._root} did not answer within "
                    f"{s.openai_start_timeout_seconds:.0f}s: {problem}"
                )
            await asyncio.sleep(1.0)
        cards = {card["id"]: card for card in response.json().get("data", [])}
        if s.model not in cards:
            raise ConfigurationError(
                f"the vLLM server at {self._root} serves {sorted(cards)}, not {s.model!r}: start it with "
                f"--served-model-name {s.model} or set VLMBATCH_MODEL to the served name"
            )
        return dict(cards[s.model])

    async def _probe_template(self) -> None:
        """Render the chat template on the server (as the in-process engine does locally): does the
        generation prompt open `<think>`, and which token closes it? Also proves the server takes
        per-request mm_processor_kwargs, which every job sends."""
        s = self._settings
        chat = {
            "model": s.model,
            "messages": [{"role": "user", "content": "?"}],
            "add_generation_prompt": True,
            "mm_processor_kwargs": {"max_dynamic_patch": s.max_tiles},
        }
        response = await self._http.post(f"{self._root}/tokenize", json=chat)
        if response.status_code == 404:  # a server without the tokenizer endpoints: trust the setting
            log.warning("%s has no /tokenize; trace opened by prompt: %s (setting)", self._root, self._opens_trace)
            return
        prompt_ids = _probe_answer(response)["tokens"]
        rendered = await self._http.post(f"{self._root}/detokenize", json={"model": s.model, "tokens": prompt_ids})
        if s.trace_opened_by_prompt is None:
            self._opens_trace = str(_probe_answer(rendered)["prompt"]).rstrip().endswith(THINK_OPEN)
        close = await self._http.post(
            f"{self._root}/tokenize", json={"model": s.model, "prompt": THINK_CLOSE, "add_special_tokens": False}
        )
        tokens = _probe_answer(close)["tokens"]
        self._think_close_id = tokens[0] if len(tokens) == 1 else None

    @property
    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            raise EngineDead("the engine is not running")
        return self._client

    # -- telemetry -------------------------------------------------------------------------------------

    def stats(self) -> EngineStats:
        t = self.telemetry
        if not self._requests:
            # The counts are the whole server's (other workers share it): a worker waiting on nothing must
            # not have its hang watchdog judge someone else's requests.
            return EngineStats(running=0, waiting=0, kv_cache_usage=t.kv_cache_usage)
        return EngineStats(running=t.running, waiting=t.waiting, kv_cache_usage=t.kv_cache_usage)

    def progress(self) -> int:
        return self.telemetry.generated_tokens

    async def _poll_metrics(self) -> None:
        while True:
            try:
                response = await self._http.get(f"{self._root}/metrics")
                response.raise_for_status()
                self.telemetry.update(parse_metrics(response.text))
            except httpx.HTTPError as exc:  # stale numbers: the watchdog sees no progress if it lasts
                log.debug("reading %s/metrics failed: %s", self._root, exc)
            await asyncio.sleep(self._metrics_interval_s)

    # -- requests --------------------------------------------------------------------------------------

    async def abort(self, request_id: str) -> None:
        if request_id not in self._requests:
            return
        self._aborted.add(request_id)
        task = self._requests[request_id]
        if task is not None:
            task.cancel()  # closes the connection: vLLM aborts the request

    async def generate(self, request: GenerationRequest) -> Generation:
        rid = request.request_id
        if self._client is None:
            raise EngineDead("the engine is not running")
        self._requests[rid] = None
        try:
            # JPEG encoding takes up to a second for a large image: off the event loop.
            body = await asyncio.to_thread(self._body, request)
            async with self._slots:
                if rid in self._aborted:
                    raise JobCancelled(f"request {rid} was aborted")
                task = asyncio.create_task(self._send_with_retry(request, body))
                self._requests[rid] = task
                try:
                    return await task
                except asyncio.CancelledError:
                    current = asyncio.current_task()
                    if rid in self._aborted and (current is None or not current.cancelling()):
                        raise JobCancelled(f"request {rid} was aborted") from None
                    raise
        finally:
            self._requests.pop(rid, None)
            self._aborted.discard(rid)

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        content: list[dict[str, Any]] = [
            {"type": "image_url", "image_url": {"url": data_url(image)}} for image in request.images
        ]
        content.append({"type": "text", "text": request.question})
        max_tokens = s.max_tokens if self._max_model_len is None else min(s.max_tokens, self._max_model_len)
        body: dict[str, Any] = {
            "model": self._settings.model,
            "messages": [{"role": "user", "content": content}],
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
        constraint = request.constraint
        if constraint is not None:
            structured = (
                {"choice": list(constraint.choices)} if constraint.choices else {"json": constraint.json_schema}
            )
            body["structured_outputs"] = structured
        return body

    async def _send_with_retry(self, request: GenerationRequest, body: dict[str, Any]) -> Generation:
        deadline = time.monotonic() + self._settings.openai_retry_seconds
        delay, tries = 0.5, 0
        while True:
            try:
                return await self._send(request, body)
            except _ServerUnavailable as exc:
                if time.monotonic() + delay > deadline:
                    raise EngineDead(f"the vLLM server at {self._root} is unavailable: {exc}") from exc
                log.warning("request %s: %s; retrying in %.1fs", request.request_id, exc, delay)
                await asyncio.sleep(delay)
                delay, tries = min(delay * 2, 10.0), tries + 1
                # A fresh id: the server may not have dropped the first one yet.
                body = {**body, "request_id": f"{request.request_id}-retry{tries}"}

    async def _send(self, request: GenerationRequest, body: dict[str, Any]) -> Generation:
        started = time.perf_counter()
        try:
            async with self._http.stream("POST", f"{self._api}/chat/completions", json=body) as response:
                if response.status_code != 200:
                    await response.aread()
                    raise await self._refusal(response.status_code, _error_message(response))
                return await self._read_stream(response, request, started)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ReadTimeout):  # silent for openai_timeout_seconds: hung
                raise EngineDead(f"no data from {self._root} for {self._settings.openai_timeout_seconds:.0f}s") from exc
            raise _ServerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _ServerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _read_stream(self, response: httpx.Response, request: GenerationRequest, started: float) -> Generation:
        samples = [_Sample() for _ in range(request.sampling.samples)]
        first_token_s: float | None = None
        usage: dict[str, int] = {}
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue  # blank separators and SSE keep-alive comments
            payload = line[5:].strip()
            if payload == "[DONE]":
                break
            chunk = json.loads(payload)
            if "error" in chunk:  # an error after the 200 (e.g. the prompt grew too long once images expanded)
                error = chunk["error"]
                raise await self._refusal(int(error.get("code") or 500), str(error.get("message", "")))
            if first_token_s is None:  # vLLM sends the first chunk with the first token
                first_token_s = time.perf_counter() - started
            usage = chunk.get("usage") or usage
            for choice in chunk.get("choices") or []:
                _absorb(samples[choice["index"]], choice)
        if any(sample.finish_reason is None for sample in samples):
            raise _ServerUnavailable(f"the stream of {request.request_id} ended before every sample finished")
        if all(sample.finish_reason == "abort" for sample in samples):
            raise JobCancelled(f"request {request.request_id} was aborted by the server")
        return Generation(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completions=self._completions(samples, int(usage.get("completion_tokens", 0))),
            first_token_s=first_token_s,
            trace_opened_by_prompt=self._opens_trace,
        )

    def _completions(self, samples: list[_Sample], total_tokens: int) -> list[Completion]:
        texts = [raw_text(s, think_close_id=self._think_close_id) for s in samples]
        if all(s.has_token_ids for s in samples):
            counts = [len(s.token_ids) for s in samples]
        else:  # no per-sample counts from this server: split the total by text length
            lengths = [max(1, len(text)) for text in texts]
            counts = [round(total_tokens * n / sum(lengths)) for n in lengths]
        completions = []
        for sample, text, count in zip(samples, texts, counts, strict=True):
            reasoning_tokens = None
            if sample.has_token_ids and self._think_close_id in sample.token_ids:
                reasoning_tokens = sample.token_ids.index(self._think_close_id) + 1
            completions.append(
                Completion(
                    text=text, num_tokens=count, finish_reason=sample.finish_reason, reasoning_tokens=reasoning_tokens
                )
            )
        return completions

    async def _refusal(self, status: int, message: str) -> Exception:
        """The job error (or retryable unavailability) for an HTTP error from the server."""
        if status in (400, 422):
            if _MM_KWARGS_REFUSED in message:  # the server was restarted without the flag: not this job's fault
                return EngineDead(f"the vLLM server refuses per-request tile bounds: {message}")
            if any(marker in message for marker in _TOO_LONG_MARKERS):
                return PromptTooLong(message)
            return InputUnsupported(f"the server refused the request: {message}")
        if status in (401, 403, 404):
            return EngineDead(f"the vLLM server at {self._root} answered {status}: {message}")
        if status in _UNAVAILABLE_STATUS or not await self._healthy():
            return _ServerUnavailable(f"HTTP {status}: {message}")
        return InternalError(f"the server failed the request (HTTP {status}): {message}")

    async def _healthy(self) -> bool:
        try:
            return (await self._http.get(f"{self._root}/health")).status_code == 200
        except (httpx.HTTPError, JobError):
            return False


def _probe_answer(response: httpx.Response) -> dict[str, Any]:
    """The JSON of a start-up probe; a refusal is a server set up in a way this worker cannot use."""
    if response.status_code != 200:
        message = _error_message(response)
        if _MM_KWARGS_REFUSED in message:
            raise ConfigurationError(f"start the vLLM server with --trust-request-mm-kwargs: {message}")
        raise ConfigurationError(f"{response.request.url} answered {response.status_code}: {message}")
    answer: dict[str, Any] = response.json()
    return answer


def _absorb(sample: _Sample, choice: dict[str, Any]) -> None:
    delta = choice.get("delta") or {}
    # `reasoning` since vLLM 0.31; `reasoning_content` before.
    sample.reasoning += delta.get("reasoning") or delta.get("reasoning_content") or ""
    sample.content += delta.get("content") or ""
    if choice.get("token_ids") is not None:
        sample.has_token_ids = True
        sample.token_ids.extend(choice["token_ids"])
    if choice.get("finish_reason"):
        sample.finish_reason = choice["finish_reason"]


def raw_text(sample: _Sample, *, think_close_id: int | None) -> str:
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
    """An image as a base64 data URL: JPEG for RGB (what worker.images decodes to), PNG for anything else."""
    buffer = io.BytesIO()
    if image.mode == "RGB":
        # 4:4:4 at quality 95: visually lossless, and ~10x smaller and faster than PNG for photographs.
        image.save(buffer, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
        mime = "image/jpeg"
    else:
        image.save(buffer, format="PNG")
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buffer.getvalue()).decode('ascii')}"


def parse_metrics(text: str) -> dict[str, list[float]]:
    """The samples of the metrics we read from Prometheus text, one value per label set (engine)."""
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in _METRICS or sample.name == _GENERATED:
                values.setdefault(sample.name, []).append(sample.value)
    return values


def _error_message(response: httpx.Response) -> str:
    """vLLM's `{"error": {"message": …}}`, or the body itself."""
    try:
        payload = response.json()
    except ValueError:
        return response.text[:2000]
    error = payload.get("error") if isinstance(payload, dict) else None
    if isinstance(error, dict):
        return str(error.get("message", ""))
    return json.dumps(payload)[:2000]
