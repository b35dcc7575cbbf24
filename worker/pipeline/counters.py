"""What one worker process has done: claims, written outcomes, fenced-off writes, hand-backs and tokens
(read by `vlmbatch run`'s summary), each outcome also counted in the Prometheus metrics."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

from vlmbatch.schema.ledger.outcomes import AttemptReport
from vlmbatch.worker.telemetry.metrics import WorkerMetrics


@dataclass
class Counters:
    claimed: int = 0
    written: int = 0
    fenced_off: int = 0
    handed_back: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)

    def record(self, report: AttemptReport, metrics: WorkerMetrics) -> None:
        """A committed outcome, in these counters and in the Prometheus metrics."""
        self.written += 1
        self.outcomes[report.outcome.value] += 1
        if report.error_type is not None:
            self.errors[report.error_type.value] += 1
        generated = sum(s.completion_tokens for s in report.samples)
        self.prompt_tokens += report.prompt_tokens or 0
        self.completion_tokens += generated
        metrics.jobs.labels(report.outcome.value, report.error_type.value if report.error_type else "").inc()
        metrics.prompt_tokens.inc(report.prompt_tokens or 0)
        metrics.generated_tokens.inc(generated)
