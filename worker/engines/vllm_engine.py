"""The real engine: one vLLM `AsyncLLM` per worker process, shared by every job in flight.

Requests are rendered with vLLM's own chat renderer (so any vLLM-supported VLM gets its own image
placeholder and chat template) and generated with `n` samples each; vLLM's scheduler batches them
continuously. A stat logger plugged into the engine reports running/waiting requests, KV-cache use and
generated tokens (the worker's hang watchdog and metrics read them). A request's rendering, sampling and
errors are in `vllm_requests`; the stat logger is in `vllm_telemetry`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import MutableMapping
from typing import Any

from vlmbatch.schema.contracts.errors import ConfigurationError, EngineDead, JobCancelled
from vlmbatch.schema.contracts.reasoning import THINK_CLOSE, THINK_OPEN
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.worker.engines.base import Completion, EngineStats, Generation, GenerationRequest, TraceProgress
from vlmbatch.worker.engines.cpu_build import (
    KV_CACHE_CAP_BYTES,
    KV_CACHE_FRACTION,
    available_memory_bytes,
    default_kv_cache_bytes,
    is_cpu_build,
    prepare_cpu_environment,
    usable_cores,
)
from vlmbatch.worker.engines.engine_args import apply_engine_args, check_engine_settings, refusal
from vlmbatch.worker.engines.engine_args import engine_args as build_engine_args
from vlmbatch.worker.engines.engine_logs import log_tail, route_vllm_logs, stderr_into
from vlmbatch.worker.engines.start_failure import Machine, explain, weights_bytes
from vlmbatch.worker.engines.vllm_requests import (
    classify_validation,
    completion,
    continue_prompt,
    dead,
    render,
    sampling_params,
    streams,
)
from vlmbatch.worker.engines.vllm_telemetry import Telemetry, stat_logger_factory

log = logging.getLogger(__name__)

# vLLM's parser for `<think>trace</think>answer` models (R1V3, DeepSeek-R1), chosen when the tokenizer has both.
AUTO_REASONING_PARSER = "deepseek_r1"


class VllmEngine:
    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._llm: Any = None
        self._think_close_id: int | None = None
        self._opens_trace = False
        self.telemetry = Telemetry()
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

        cpu = is_cpu_build()
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
                    args, usage_context=usage, stat_loggers=[stat_logger_factory(self.telemetry)]
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
            engine_input = await render(self._llm, request)
            continued = continue_prompt(engine_input, request.continuation.token_ids) if request.continuation else 0
            streamed = streams(request, continued)
            final = await self._drain(request, engine_input, continued, streamed)
        except EngineDeadError as exc:
            raise dead(exc) from exc
        except asyncio.CancelledError:
            await self.abort(request.request_id)
            raise
        except (VLLMValidationError, ValueError) as exc:  # 0.32's VLLMValidationError is no ValueError
            raise classify_validation(exc) from exc
        if final is None:
            raise EngineDead(f"request {request.request_id} ended without output")
        completions = self._completions(final, streamed, continued)
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
        self, request: GenerationRequest, engine_input: Any, continued: int, streamed: dict[int, TraceProgress] | None
    ) -> Any:
        """Run the request to its end; the final output (None if there was none). Streamed outputs go
        into `streamed` as they come."""
        final = None
        sampling = sampling_params(request, continued=continued, streamed=streamed is not None)
        async for output in self._llm.generate(engine_input, sampling, request.request_id):
            final = output
            if streamed is not None:
                for sample in output.outputs:
                    streamed.setdefault(sample.index, TraceProgress()).add(sample.token_ids, sample.text)
        return final

    def _completions(self, final: Any, streamed: dict[int, TraceProgress] | None, continued: int) -> list[Completion]:
        close = self._think_close_id
        if streamed is None:
            return [completion(c.token_ids, c.text, c.finish_reason, think_close_id=close) for c in final.outputs]
        finished = {c.index: c.finish_reason for c in final.outputs}
        return [
            completion(
                streamed[i].token_ids,
                # A continued trace's text is decoded from all its ids: the earlier attempt's text was a
                # snapshot, and may end before its last token's characters.
                self._decode(streamed[i].token_ids) if continued else streamed[i].text,
                finished.get(i),
                think_close_id=close,
            )
            for i in sorted(streamed)
        ]

    def _decode(self, token_ids: list[int]) -> str:
        # As vLLM's detokenizer does by default (SamplingParams.skip_special_tokens).
        return str(self._llm.tokenizer.decode(token_ids, skip_special_tokens=True))


def keep_vllm_offline(environ: MutableMapping[str, str]) -> None:
    """vLLM sends usage statistics to its authors' server from every engine unless told not to; a worker
    reaches no network a job did not ask for. A value the user set is kept."""
    environ.setdefault("VLLM_NO_USAGE_STATS", "1")
    environ.setdefault("VLLM_DO_NOT_TRACK", "1")


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
