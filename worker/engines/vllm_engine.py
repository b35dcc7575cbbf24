"""The real engine: one vLLM `AsyncLLM` per worker process, shared by every job in flight.

Requests are rendered with vLLM's own chat renderer (so any vLLM-supported VLM gets its own image
placeholder and chat template) and generated with `n` samples each; vLLM's scheduler batches them
continuously. A stat logger plugged into the engine reports running/waiting requests, KV-cache use and
generated tokens (the worker's hang watchdog and metrics read them).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import MutableMapping
from dataclasses import dataclass
from typing import Any

from vlmbatch.schema.contracts.errors import (
    ConfigurationError,
    EngineDead,
    EngineOutOfMemory,
    InputUnsupported,
    JobCancelled,
    PromptTooLong,
)
from vlmbatch.schema.contracts.reasoning import THINK_CLOSE, THINK_OPEN
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.base import (
    Completion,
    EngineStats,
    Generation,
    GenerationRequest,
    TraceProgress,
    is_prompt_too_long,
)
from vlmbatch.worker.engines.cpu_build import (
    KV_CACHE_CAP_BYTES,
    KV_CACHE_FRACTION,
    available_memory_bytes,
    default_kv_cache_bytes,
    prepare_cpu_environment,
    usable_cores,
)
from vlmbatch.worker.engines.engine_args import apply_engine_args, check_engine_settings, refusal
from vlmbatch.worker.engines.engine_args import engine_args as build_engine_args
from vlmbatch.worker.engines.engine_logs import log_tail, route_vllm_logs, stderr_into
from vlmbatch.worker.engines.start_failure import Machine, explain, weights_bytes

log = logging.getLogger(__name__)

# vLLM's parser for `<think>trace</think>answer` models (R1V3, DeepSeek-R1), chosen when the tokenizer has both.
AUTO_REASONING_PARSER = "deepseek_r1"


@dataclass
class _Telemetry:
    """What the engine's stat logger last saw. Written on the engine's loop, read from anywhere."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    generated_tokens: int = 0
    prompt_tokens: int = 0
    max_running: int = 0
    preemptions: int = 0


class VllmEngine:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._llm: Any = None
        self._think_close_id: int | None = None
        self._opens_trace = False
        self.telemetry = _Telemetry()
        self.effective_engine_args: dict[str, Any] = {}

    @property
    def model(self) -> str:
        return self._settings.model

    async def start(self) -> None:
        """Build the engine (start-up takes seconds on CPU, minutes for a 38B model on a GPU). Raises
        ConfigurationError with one line naming the cause and the fix when it does not start."""
        s = self._settings
        check_engine_settings(s)
        if s.log_file is not None:  # before vLLM's first import: every vLLM process reads it then
            route_vllm_logs(os.environ, s.log_file, verbose=s.verbose)
        from vlmbatch.worker.engines.vllm_compat import install

        install()
        keep_vllm_offline(os.environ)
        from vllm.engine.arg_utils import AsyncEngineArgs
        from vllm.usage.usage_lib import UsageContext
        from vllm.v1.engine.async_llm import AsyncLLM

        cpu = _cpu_build()
        s, warnings = apply_engine_args(s, s.engine_args)
        for warning in warnings:
            log.warning("%s", warning)
        self._settings = s
        extra: dict[str, Any] = {"disable_log_stats": False}
        parser = self._reasoning_parser()
        if parser:
            extra["reasoning_parser"] = parser
            if parser == AUTO_REASONING_PARSER and "reasoning_config" not in s.engine_args:
                # The think markers by name: vLLM's thinking budgets (`--thinking-budget`) count the trace
                # between them and force the closing one.
                extra["reasoning_config"] = _reasoning_config()
        if s.tensor_parallel_size == 1 and "distributed_executor_backend" not in s.engine_args:
            # The model runs inside the engine-core process: one spawned interpreter fewer at start-up.
            extra["distributed_executor_backend"] = "uni"
        if cpu:
            self._cpu_defaults(extra)
        engine_args = build_engine_args(s, extra)
        # What the engine really gets (profile, flags and --engine-arg merged): kept and logged for the run.
        self.effective_engine_args = {k: v for k, v in engine_args.items() if k != "reasoning_config"}
        log.info("vLLM engine arguments: %s", self.effective_engine_args)
        started = time.perf_counter()
        log.info("loading model %s ...", s.model)
        args = AsyncEngineArgs(**engine_args)
        # The offline engine's defaults, not the online ones: vLLM sizes the step's token budget by usage
        # context (on an H200, max_num_batched_tokens 16384 for `LLM` against 2048 for an engine of its
        # own), and a batch of short answers about large images is all prefill. Measured on the H200, 64
        # images x 8 questions: 2048 ran at 0.56x raw `LLM.chat` (bench/RESULTS.md, table d). Creating
        # the config fills the defaults into `args`, so both calls name the context. Not on vLLM's CPU
        # build: there the offline default (4096) measured slower through the pipeline on 2 cores, whose
        # front end shares the cores with the engine (0.83 against 0.99 x raw, bench/RESULTS.md).
        usage = UsageContext.ENGINE_CONTEXT if cpu else UsageContext.LLM_CLASS
        quiet = None if s.verbose else s.log_file
        try:  # vLLM's own validation of the settings, before any process starts: one line if it refuses
            with stderr_into(quiet):
                args.create_engine_config(usage)
        except Exception as exc:
            raise self._start_failure(exc, cpu, refused=True) from exc
        try:
            with stderr_into(quiet):
                self._llm = AsyncLLM.from_engine_args(
                    args, usage_context=usage, stat_loggers=[_stat_logger_factory(self.telemetry)]
                )
        except Exception as exc:
            raise self._start_failure(exc, cpu, refused=False) from exc
        self._inspect_tokenizer()
        log.info(
            "model %s ready in %.0f s, KV cache %s tokens",
            s.model,
            time.perf_counter() - started,
            f"{self.kv_cache_tokens():,}" if self.kv_cache_tokens() else "?",
        )

    def kv_cache_tokens(self) -> int | None:
        """Tokens the engine's KV cache holds (vLLM reports its blocks once the engine runs)."""
        cache = getattr(getattr(self._llm, "vllm_config", None), "cache_config", None)
        blocks, size = getattr(cache, "num_gpu_blocks", None), getattr(cache, "block_size", None)
        return int(blocks * size) if blocks and size else None

    def _cpu_defaults(self, extra: dict[str, Any]) -> None:
        """What vLLM's CPU build needs and does not choose itself (worker/engines/cpu_build.py)."""
        s = self._settings
        ranks = s.tensor_parallel_size
        try:
            prepare_cpu_environment(os.environ, ranks=ranks, cores=usable_cores())
        except ValueError as exc:
            raise ConfigurationError(f"{exc}: pass a smaller --tensor-parallel-size") from exc
        if s.kv_cache_bytes is None and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            kv = default_kv_cache_bytes(available_memory_bytes(), ranks)
            if kv is not None:
                extra["kv_cache_memory_bytes"] = kv
                log.info(
                    "vLLM's CPU build: KV cache %.2f GiB per rank (%d%% of free memory, at most %d GiB, over "
                    "%d rank(s); --kv-cache-memory-bytes sets it)",
                    kv / 2**30,
                    int(KV_CACHE_FRACTION * 100),
                    KV_CACHE_CAP_BYTES // 2**30,
                    ranks,
                )

    def _start_failure(self, exc: Exception, cpu: bool, *, refused: bool) -> ConfigurationError:
        s = self._settings
        chain: list[str] = []
        cause: BaseException | None = exc
        while cause is not None and len(chain) < 5:
            chain.append(f"{type(cause).__name__}: {cause}")
            cause = cause.__cause__ or cause.__context__
        text = "\n".join(chain) + "\n" + log_tail(s.log_file)
        machine = Machine(
            weights_bytes=weights_bytes(s.model), gpu_bytes=_gpu_bytes(cpu), gpus=_gpu_count(cpu), cpu_build=cpu
        )
        what = "vLLM refused the engine settings" if refused else "the vLLM engine did not start"
        line = explain(
            text,
            model=s.model,
            max_model_len=s.max_model_len,
            tp=s.tensor_parallel_size,
            machine=machine,
            fallback=f"{what}: {refusal(exc)}",
            log_file=s.log_file,
        )
        return ConfigurationError(line)

    def _reasoning_parser(self) -> str | None:
        choice = self._settings.reasoning_parser
        if choice == "none":
            return None
        if choice != "auto":
            return choice
        from transformers import AutoTokenizer

        tokenizer = AutoTokenizer.from_pretrained(
            self._settings.model, trust_remote_code=self._settings.trust_remote_code
        )
        vocab = tokenizer.get_vocab()
        return AUTO_REASONING_PARSER if THINK_OPEN in vocab and THINK_CLOSE in vocab else None

    def _inspect_tokenizer(self) -> None:
        tokenizer = self._llm.tokenizer
        vocab = tokenizer.get_vocab()
        self._think_close_id = vocab.get(THINK_CLOSE)
        try:
            probe = tokenizer.apply_chat_template(
                [{"role": "user", "content": "?"}], tokenize=False, add_generation_prompt=True
            )
            self._opens_trace = str(probe).rstrip().endswith(THINK_OPEN)
        except Exception:  # a tokenizer without chat template: vLLM will refuse requests anyway
            self._opens_trace = False

    def stats(self) -> EngineStats:
        t = self.telemetry
        llm = self._llm
        dead = str(llm.dead_error) if llm is not None and llm.errored else None
        return EngineStats(
            running=t.running,
            waiting=t.waiting,
            kv_cache_usage=t.kv_cache_usage,
            preemptions=t.preemptions,
            dead=dead,
        )

    def progress(self) -> int:
        return self.telemetry.generated_tokens

    async def abort(self, request_id: str) -> None:
        if self._llm is not None:
            await self._llm.abort(request_id)

    async def shutdown(self) -> None:
        if self._llm is not None:
            self._llm.shutdown()
            self._llm = None

    async def generate(self, request: GenerationRequest) -> Generation:
        from vllm.exceptions import VLLMValidationError
        from vllm.v1.engine.exceptions import EngineDeadError

        if self._llm is None:
            raise EngineDead("the engine is not running")
        if self._llm.errored:
            raise EngineDead(f"the engine died earlier: {self._llm.dead_error}")
        started = time.perf_counter()
        try:
            engine_input = await self._render(request)
            continued = _continue(engine_input, request.continuation.token_ids) if request.continuation else 0
            streams = _streams(request, continued)
            final = await self._drain(request, engine_input, continued, streams)
        except EngineDeadError as exc:
            raise _dead(exc) from exc
        except asyncio.CancelledError:
            await self.abort(request.request_id)
            raise
        except (VLLMValidationError, ValueError) as exc:  # 0.32's VLLMValidationError is no ValueError
            raise _classify_validation(exc) from exc
        if final is None:
            raise EngineDead(f"request {request.request_id} ended without output")
        completions = self._completions(final, streams, continued)
        if all(c.finish_reason == "abort" for c in completions):
            raise JobCancelled(f"request {request.request_id} was aborted")
        metrics = getattr(final, "metrics", None)
        first_token = getattr(metrics, "first_token_latency", None)
        return Generation(
            prompt_tokens=len(final.prompt_token_ids or []) - continued,
            completions=completions,
            first_token_s=first_token if first_token is not None else time.perf_counter() - started,
            trace_opened_by_prompt=self._opens_trace,
            continued_tokens=continued,
        )

    async def _drain(
        self, request: GenerationRequest, engine_input: Any, continued: int, streams: dict[int, TraceProgress] | None
    ) -> Any:
        """Run the request to its end; the final output (None if there was none). Streamed outputs go
        into `streams` as they come."""
        final = None
        sampling = self._sampling(request, continued=continued, streamed=streams is not None)
        async for output in self._llm.generate(engine_input, sampling, request.request_id):
            final = output
            if streams is not None:
                for sample in output.outputs:
                    streams.setdefault(sample.index, TraceProgress()).add(sample.token_ids, sample.text)
        return final

    def _completions(self, final: Any, streams: dict[int, TraceProgress] | None, continued: int) -> list[Completion]:
        if streams is None:
            return [self._completion(c.token_ids, c.text, c.finish_reason) for c in final.outputs]
        finished = {c.index: c.finish_reason for c in final.outputs}
        return [
            self._completion(
                streams[i].token_ids,
                # A continued trace's text is decoded from all its ids: the earlier attempt's text was a
                # snapshot, and may end before its last token's characters.
                self._decode(streams[i].token_ids) if continued else "".join(streams[i].text_parts),
                finished.get(i),
            )
            for i in sorted(streams)
        ]

    def _decode(self, token_ids: list[int]) -> str:
        # As vLLM's detokenizer does by default (SamplingParams.skip_special_tokens).
        return str(self._llm.tokenizer.decode(token_ids, skip_special_tokens=True))

    async def _render(self, request: GenerationRequest) -> Any:
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
        renderer = self._llm.renderer
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

    def _sampling(self, request: GenerationRequest, *, continued: int = 0, streamed: bool = False) -> Any:
        from vllm import SamplingParams
        from vllm.sampling_params import RequestOutputKind

        s = request.sampling
        extra: dict[str, Any] = {}
        if request.seed is not None:
            if _cpu_build():
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
            # A continuation's tokens count against the job's max_tokens (the pipeline continues only
            # while some are left).
            max_tokens=s.max_tokens - continued,
            ignore_eos=s.ignore_eos,
            # DELTA: each step's new tokens only (a cumulative output would copy the whole trace every step).
            output_kind=RequestOutputKind.DELTA if streamed else RequestOutputKind.FINAL_ONLY,
            **extra,
        )

    def _completion(self, output_ids: Any, text: str, finish_reason: str | None) -> Completion:
        token_ids = list(output_ids)
        reasoning_tokens = None
        if self._think_close_id is not None and self._think_close_id in token_ids:
            reasoning_tokens = token_ids.index(self._think_close_id) + 1
        return Completion(
            text=text,
            num_tokens=len(token_ids),
            finish_reason=finish_reason,
            reasoning_tokens=reasoning_tokens,
            token_ids=tuple(token_ids),
        )


def keep_vllm_offline(environ: MutableMapping[str, str]) -> None:
    """vLLM sends usage statistics to its authors' server from every engine unless told not to; a worker
    reaches no network a job did not ask for. A value the user set is kept."""
    environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    environ.setdefault("VLLM_DO_NOT_TRACK", "1")


def _streams(request: GenerationRequest, continued: int) -> dict[int, TraceProgress] | None:
    """Where the streamed outputs go, by sample index; None: final outputs only, as before checkpoints.
    Streamed only when someone reads the output so far (checkpoints) or a continuation must be put back
    in front of it. A continued trace so far is the whole trace: its continuation comes first."""
    if request.progress is None and not continued:
        return None
    progress = request.progress or TraceProgress()
    if continued and request.continuation is not None:
        progress.add(request.continuation.token_ids, request.continuation.text)
    return {0: progress}


def _continue(engine_input: Any, token_ids: tuple[int, ...]) -> int:
    """Put an earlier attempt's output after the rendered prompt, as the assistant's unfinished turn: the
    ids themselves, never their text tokenised again (the same tokens, so the same draw at temperature 0).
    The images' placeholders lie before it, so the prompt's prefix (and its cached KV) is unchanged.
    Returns the tokens added."""
    prompt = engine_input.get("prompt_token_ids") if isinstance(engine_input, dict) else None
    if prompt is None or not token_ids:
        return 0
    engine_input["prompt_token_ids"] = [*prompt, *token_ids]
    return len(token_ids)


def _cpu_build() -> bool:
    from vllm.platforms import current_platform

    return bool(current_platform.is_cpu())


def _reasoning_config() -> Any:
    from vllm.config import ReasoningConfig

    return ReasoningConfig(reasoning_start_str=THINK_OPEN, reasoning_end_str=THINK_CLOSE)


def _gpu_bytes(cpu: bool) -> int | None:
    if cpu:
        return None
    try:
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory) if torch.cuda.is_available() else None
    except Exception:  # no driver: the message says so; sizes are only a hint
        return None


def _gpu_count(cpu: bool) -> int:
    if cpu:
        return 0
    try:
        import torch

        return int(torch.cuda.device_count())
    except Exception:
        return 0


def _structured(choices: tuple[str, ...] | None, json_schema: dict[str, Any] | None) -> Any:
    from vllm.sampling_params import StructuredOutputsParams

    if choices:
        return StructuredOutputsParams(choice=list(choices))
    return StructuredOutputsParams(json=json_schema)


def _dead(exc: BaseException) -> Exception:
    text = f"{exc} {exc.__cause__ or ''}".lower()
    if "out of memory" in text:
        return EngineOutOfMemory(f"engine ran out of memory: {exc}")
    return EngineDead(f"engine died: {exc}")


def _classify_validation(exc: Exception) -> Exception:
    text = str(exc)
    if is_prompt_too_long(text):
        return PromptTooLong(text)
    return InputUnsupported(f"the engine refused the request: {text}")


def _stat_logger_factory(telemetry: _Telemetry) -> Any:
    """A vLLM StatLoggerBase subclass that copies what it records into `telemetry`."""
    from vllm.v1.metrics.loggers import StatLoggerBase

    class TelemetryLogger(StatLoggerBase):
        def __init__(self, vllm_config: Any, engine_index: int = 0) -> None:
            self.engine_index = engine_index

        def record(
            self,
            scheduler_stats: Any,
            iteration_stats: Any,
            mm_cache_stats: Any = None,
            engine_idx: int = 0,
        ) -> None:
            if scheduler_stats is not None:
                telemetry.running = scheduler_stats.num_running_reqs
                telemetry.waiting = scheduler_stats.num_waiting_reqs
                telemetry.kv_cache_usage = scheduler_stats.kv_cache_usage
                telemetry.max_running = max(telemetry.max_running, telemetry.running)
            if iteration_stats is not None:
                telemetry.generated_tokens += iteration_stats.num_generation_tokens
                telemetry.prompt_tokens += iteration_stats.num_prompt_tokens
                telemetry.preemptions += getattr(iteration_stats, "num_preempted_reqs", 0)

        def log_engine_initialized(self) -> None:
            return None

    return TelemetryLogger
