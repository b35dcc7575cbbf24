"""What a vLLM server's Prometheus `/metrics` says about its load and progress (the pipeline's hang watchdog
and the engine's stats read it)."""

from __future__ import annotations

from dataclasses import dataclass

from prometheus_client.parser import text_string_to_metric_families

METRICS = ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc")
GENERATED = "vllm:generation_tokens_total"


@dataclass
class Telemetry:
    """What the server's /metrics said last, summed over its engines."""

    running: int = 0
    waiting: int = 0
    kv_cache_usage: float | None = None
    generated_tokens: int = 0  # monotonic, across server restarts
    max_running: int = 0
    _last_counter: float = 0.0

    def update(self, metrics: dict[str, list[float]]) -> None:
        self.running = int(sum(metrics.get(METRICS[0], [])))
        self.waiting = int(sum(metrics.get(METRICS[1], [])))
        kv = metrics.get(METRICS[2])
        self.kv_cache_usage = sum(kv) / len(kv) if kv else None
        self.max_running = max(self.max_running, self.running)
        counter = sum(metrics.get(GENERATED, []))
        # A counter that went down belongs to a restarted server: everything it shows is new progress.
        self.generated_tokens += int(counter - self._last_counter if counter >= self._last_counter else counter)
        self._last_counter = counter


def parse_metrics(text: str) -> dict[str, list[float]]:
    """The samples of the metrics we read from Prometheus text, one value per label set (engine)."""
    values: dict[str, list[float]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name in METRICS or sample.name == GENERATED:
                values.setdefault(sample.name, []).append(sample.value)
    return values
