"""The `openai` engine: jobs sent to a running vLLM server (the package docstring has the design)."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any

import httpx

from vlmbatch.schema.contracts.errors import (
    ConfigurationError,
    EngineDead,
    InputUnsupported,
    InternalError,
    JobCancelled,
    JobError,
    PromptTooLong,
)
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.base import EngineStats, Generation, GenerationRequest, is_prompt_too_long
from vlmbatch.worker.engines.openai.probe import MM_KWARGS_REFUSED, probe_template, wait_for_model
from vlmbatch.worker.engines.openai.protocol import Sample, absorb, chat_body, completions, error_message
from vlmbatch.worker.engines.openai.telemetry import Telemetry, parse_metrics

log = logging.getLogger(__name__)

_UNAVAILABLE_STATUS = frozenset({502, 503, 504})
METRICS_INTERVAL_S = 2.0
# Below uvicorn's 5 s keep-alive (vLLM's default): never reuse a connection the server is closing.
_KEEPALIVE_EXPIRY_S = 4.0


class _ServerUnavailable(Exception):
    """The server could not be reached or could not take the request now (retried)."""


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
        self.telemetry = Telemetry()

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
        card = await wait_for_model(self._http, api=self._api, root=self._root, settings=s)
        self._max_model_len = card.get("max_model_len")
        facts = await probe_template(self._http, root=self._root, settings=s, opens_trace=self._opens_trace)
        self._opens_trace, self._think_close_id = facts.opens_trace, facts.think_close_id
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
            body = await asyncio.to_thread(
                chat_body, request, model=self._settings.model, max_model_len=self._max_model_len
            )
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
                    raise await self._refusal(response.status_code, error_message(response))
                return await self._read_stream(response, request, started)
        except httpx.TimeoutException as exc:
            if isinstance(exc, httpx.ReadTimeout):  # silent for openai_timeout_seconds: hung
                raise EngineDead(f"no data from {self._root} for {self._settings.openai_timeout_seconds:.0f}s") from exc
            raise _ServerUnavailable(f"{type(exc).__name__}: {exc}") from exc
        except (httpx.TransportError, httpx.DecodingError) as exc:
            raise _ServerUnavailable(f"{type(exc).__name__}: {exc}") from exc

    async def _read_stream(self, response: httpx.Response, request: GenerationRequest, started: float) -> Generation:
        samples = [Sample() for _ in range(request.sampling.samples)]
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
                absorb(samples[choice["index"]], choice)
        if any(sample.finish_reason is None for sample in samples):
            raise _ServerUnavailable(f"the stream of {request.request_id} ended before every sample finished")
        if all(sample.finish_reason == "abort" for sample in samples):
            raise JobCancelled(f"request {request.request_id} was aborted by the server")
        return Generation(
            prompt_tokens=int(usage.get("prompt_tokens", 0)),
            completions=completions(
                samples, int(usage.get("completion_tokens", 0)), think_close_id=self._think_close_id
            ),
            first_token_s=first_token_s,
            trace_opened_by_prompt=self._opens_trace,
        )

    async def _refusal(self, status: int, message: str) -> Exception:
        """The job error (or retryable unavailability) for an HTTP error from the server."""
        if status in (400, 422):
            if MM_KWARGS_REFUSED in message:  # the server was restarted without the flag: not this job's fault
                return EngineDead(f"the vLLM server refuses per-request tile bounds: {message}")
            if is_prompt_too_long(message):
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
