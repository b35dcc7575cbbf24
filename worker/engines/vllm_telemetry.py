"""What vLLM's engine reports while it runs: running/waiting requests, KV-cache use, generated tokens and
preemptions, copied by a stat logger plugged into the engine (the worker's hang watchdog and metrics read
them)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass
class Telemetry:
    """What the engine's stat logger last saw. Written on the engine's loop, read from anywhere."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    generated_tokens: int = 0
    prompt_tokens: int = 0
    max_running: int = 0
    preemptions: int = 0


def stat_logger_factory(telemetry: Telemetry) -> Any:
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
