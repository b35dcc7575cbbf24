"""How `run` and `status --watch` show progress: a bar on a terminal, that log lines never draw over; one
plain line every `--progress-every` seconds anywhere else (worker/telemetry/progress_log.py)."""

from __future__ import annotations

import sys
from collections import deque
from collections.abc import Callable
from typing import TextIO

from vlmbatch.producer.cli.render import progress_line
from vlmbatch.schema.ledger.status import Progress
from vlmbatch.worker.telemetry.progress_log import Every, ProgressSnapshot, log_progress

# Output tokens/s is measured over this trailing window of ticks.
TOKEN_WINDOW_S = 30.0


class BarStream:
    """Standard error with a progress bar on its last line: whatever else is written (a log line) first
    clears the bar, which the next tick draws again below it."""

    def __init__(self, real: TextIO | None = None) -> None:
        self._real = real if real is not None else sys.stderr
        self._bar_shown = False

    def write(self, text: str) -> int:
        if self._bar_shown and text:
            self._real.write("\r\x1b[2K")
            self._bar_shown = False
        return self._real.write(text)

    def flush(self) -> None:
        self._real.flush()

    def isatty(self) -> bool:
        return self._real.isatty()

    def draw(self, bar: str) -> None:
        self._real.write("\r\x1b[2K" + bar)
        self._real.flush()
        self._bar_shown = True

    def end_bar(self) -> None:
        if self._bar_shown:
            self._real.write("\n")
            self._real.flush()
            self._bar_shown = False


class TokenRate:
    """Output tokens per second over the last TOKEN_WINDOW_S seconds, from a running total."""

    def __init__(self, clock: Callable[[], float]) -> None:
        self._clock = clock
        self._seen: deque[tuple[float, int]] = deque()

    def update(self, total_tokens: int) -> float | None:
        now = self._clock()
        self._seen.append((now, total_tokens))
        # Drop the oldest reading while the next one still spans the window: two distinct times remain.
        while len(self._seen) > 2 and now - self._seen[1][0] >= TOKEN_WINDOW_S:
            self._seen.popleft()
        (t0, n0), (t1, n1) = self._seen[0], self._seen[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else None


class ProgressDisplay:
    """Progress of one run: `update()` on every tick; draws the bar (terminal) or, when due, logs a line."""

    def __init__(
        self, name: str, *, stream: BarStream, interactive: bool, every: Every, clock: Callable[[], float]
    ) -> None:
        self._name = name
        self._stream = stream
        self._interactive = interactive
        self._every = every
        self._tokens = TokenRate(clock)

    def update(self, progress: Progress, *, tokens: int | None = None, workers: int | None = None) -> None:
        rate = self._tokens.update(tokens) if tokens is not None else None
        if self._interactive:
            extra = f" | {rate:,.0f} tok/s" if rate is not None else ""
            extra += f" | workers {workers}" if workers is not None else ""
            self._stream.draw(progress_line(self._name, progress) + extra)
        elif self._every.due() or progress.finished:
            log_progress(self._name, snapshot(progress, tokens_per_second=rate, workers=workers))

    def close(self) -> None:
        self._stream.end_bar()


def snapshot(progress: Progress, *, tokens_per_second: float | None, workers: int | None = None) -> ProgressSnapshot:
    report = progress.report
    return ProgressSnapshot(
        done=progress.done,
        total=report.total,
        jobs_per_second=progress.jobs_per_second,
        tokens_per_second=tokens_per_second,
        eta_seconds=progress.eta_seconds,
        errors=dict(report.errors),
        workers=workers,
    )
