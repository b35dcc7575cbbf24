"""A worker's progress line: every `progress_every` seconds, what this worker finished since it started,
at what rate, and its errors by type (worker/telemetry/progress_log.py writes it, as text or JSON)."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from vlmbatch.worker.pipeline.counters import Counters
from vlmbatch.worker.telemetry.progress_log import ProgressSnapshot, log_progress


class WorkerProgress:
    def __init__(
        self,
        label: str,
        counters: Counters,
        *,
        every_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._label = label
        self._counters = counters
        self._every_s = every_s
        self._clock = clock
        self._last = (clock(), 0, 0)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="vlmbatch-progress", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        while not self._stop.wait(self._every_s):
            log_progress(self._label, self.snapshot())

    def snapshot(self) -> ProgressSnapshot:
        """Jobs written and tokens generated since the last snapshot, as rates."""
        now, written, tokens = self._clock(), self._counters.written, self._counters.completion_tokens
        then, written_then, tokens_then = self._last
        self._last = (now, written, tokens)
        elapsed = max(now - then, 1e-9)
        return ProgressSnapshot(
            done=written,
            total=None,
            jobs_per_second=(written - written_then) / elapsed,
            tokens_per_second=(tokens - tokens_then) / elapsed,
            eta_seconds=None,
            errors=dict(self._counters.errors),
        )
