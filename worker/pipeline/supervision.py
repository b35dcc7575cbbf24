"""Supervising the pipeline's background tasks (outcome writer, heartbeat, claimer).

Each one must run as long as the worker does: a writer that died stops every commit, a heartbeat that
died lets every lease expire under a worker that goes on generating. So a task that ends while the
worker is not stopping, by an exception or by returning, is fatal: the worker hands its jobs back and
exits non-zero for its supervisor to restart it.
"""

from __future__ import annotations

import asyncio

from vlmbatch.worker.pipeline.inflight import StopState


class BackgroundTaskDied(Exception):
    """A background task of the pipeline ended while the worker was running."""


def supervise(task: asyncio.Task[None], state: StopState) -> None:
    """Declare a BackgroundTaskDied fatal when `task` ends while the worker is not stopping."""

    def ended(done: asyncio.Task[None]) -> None:
        if done.cancelled() or state.closing:
            return
        error = done.exception()
        reason = f"{type(error).__name__}: {error}" if error is not None else "it returned"
        died = BackgroundTaskDied(f"the {done.get_name()} task stopped ({reason})")
        died.__cause__ = error
        state.declare_fatal(died)

    task.add_done_callback(ended)
