"""Progress as a log line: what an overnight run prints when nobody watches a terminal.

`vlmbatch run ... > run.log 2>&1`, `nohup` and a Kubernetes pod have no terminal to draw a bar on; every
`progress_every` seconds they get one plain line (done/total, rate, output tokens/s, ETA, errors by
type). In the JSON log format the same numbers are fields of the record (`progress`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

log = logging.getLogger("vlmbatch.progress")


@dataclass(frozen=True)
class ProgressSnapshot:
    """One reading of a run's (or a worker's) progress. `total` None: open-ended (a worker's queue)."""

    done: int
    total: int | None
    jobs_per_second: float
    tokens_per_second: float | None
    eta_seconds: float | None
    errors: Mapping[str, int] = field(default_factory=dict)
    workers: int | None = None

    def line(self, label: str) -> str:
        parts = [f"{self.done:,}/{self.total:,} done" if self.total is not None else f"{self.done:,} done"]
        if self.total:
            parts[0] += f" ({100 * self.done / self.total:.1f}%)"
        parts.append(f"{self.jobs_per_second:.2f} jobs/s")
        if self.tokens_per_second is not None:
            parts.append(f"{self.tokens_per_second:,.0f} output tok/s")
        if self.total is not None:
            parts.append(f"ETA {_clock(self.eta_seconds)}")
        if self.workers is not None:
            parts.append(f"workers {self.workers}")
        errors = ", ".join(f"{kind} {n}" for kind, n in sorted(self.errors.items(), key=lambda e: (-e[1], e[0])))
        parts.append(f"errors: {errors}" if errors else "no errors")
        return f"{label}: " + ", ".join(parts)


def _clock(seconds: float | None) -> str:
    if seconds is None:
        return "--:--"
    hours, rest = divmod(round(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


def log_progress(label: str, snapshot: ProgressSnapshot) -> None:
    """One INFO record: the plain line as its message, the numbers as its `progress` field."""
    log.info("%s", snapshot.line(label), extra={"progress": {"label": label, **asdict(snapshot)}})


class Every:
    """True once every `seconds` (first at the first call), by an injected clock."""

    def __init__(self, seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._seconds = seconds
        self._clock = clock
        self._last: float | None = None

    def due(self) -> bool:
        now = self._clock()
        if self._last is None or now - self._last >= self._seconds:
            self._last = now
            return True
        return False
