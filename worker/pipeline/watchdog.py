"""Telling a hung engine from a busy one."""

from __future__ import annotations

import time


class HangWatchdog:
    """Tells when an engine with requests in flight has made no progress for `limit_s` seconds."""

    def __init__(self, limit_s: float) -> None:
        self._limit = limit_s
        self._last_value: int | None = None
        self._since: float | None = None

    def observe(self, value: int, *, busy: bool) -> float | None:
        """Record the engine's progress counter; return how long it has been stuck, once over the limit.
        The watch starts at the first busy observation without progress: an idle engine is not stuck."""
        now = time.monotonic()
        if not busy or value != self._last_value or self._since is None:
            self._last_value = value
            self._since = now if busy else None
            return None
        stuck = now - self._since
        return stuck if stuck >= self._limit else None
