"""Supervising the pipeline's background tasks (outcome writer, heartbeat, claimer).

Each one must run as long as the worker does: a writer that died stops every commit, a heartbeat that
died lets every lease expire under a worker that goes on generating. So a task that ends while the
worker is not stopping, by an exception or by returning, is fatal: the worker hands its jobs back and
exits non-zero for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable


class BackgroundTaskDied(Exception):
    """A background task of the pipeline ended while the worker was running."""


def supervise(
    task: asyncio.Task[None], *, on_death: Callable[[BaseException], None], stopping: Callable[[], bool]
) -> None:
    """Call `on_death` with a BackgroundTaskDied when `task` ends while `stopping()` is false."""

    def ended(done: asyncio.Task[None]) -> None:
        if done.cancelled() or stopping():
            return
        error = done.exception()
        reason = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        died = BackgroundTaskDied(f"the {done.get_name()} task stopped ({reason})")
        died.__cause__ = error
        on_death(died)

    task.add_done_callback(ended)
