"""The hang watchdog: an engine with requests in flight that stops making progress is declared hung."""

from __future__ import annotations

import pytest

from vlmbatch.worker.pipeline import watchdog as watchdog_module
from vlmbatch.worker.pipeline.watchdog import HangWatchdog


def test_progress_or_idleness_resets_the_watch(monkeypatch: pytest.MonkeyPatch) -> None:
    clock = [0.0]
    monkeypatch.setattr(watchdog_module.time, "monotonic", lambda: clock[0])
    watchdog = HangWatchdog(limit_s=60)
    for now, value, busy, expected in [
        (0, 10, True, None),
        (30, 10, True, None),  # stuck for 30 s: not yet
        (59, 11, True, None),  # a token: the watch restarts
        (100, 11, True, None),  # stuck for 41 s
        (120, 11, False, None),  # nothing in flight: not a hang
        (200, 11, True, None),  # busy again: the watch starts here
        (250, 11, True, None),
        (261, 11, True, 61.0),  # stuck for 61 s with requests in flight: hung
    ]:
        clock[0] = float(now)
        assert watchdog.observe(value, busy=busy) == expected, now
