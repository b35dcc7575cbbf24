"""Publishing job ids to the broker in messages of up to `jobs_per_message` ids, over one connection."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from celery import Celery

from worker.celery_app import RUN_JOBS_TASK


class Publisher(Protocol):
    def publish(self, queue: str, job_ids: Sequence[int], *, countdown: float | None = None) -> int:
        """Publish messages asking workers to claim `job_ids`; return the number of messages."""
        ...


class CeleryPublisher:
    def __init__(self, app: Celery, *, jobs_per_message: int) -> None:
        self._app = app
        self._per_message = jobs_per_message

    def publish(self, queue: str, job_ids: Sequence[int], *, countdown: float | None = None) -> int:
        if not job_ids:
            return 0
        messages = 0
        with self._app.producer_or_acquire() as producer:
            for start in range(0, len(job_ids), self._per_message):
                chunk = [int(i) for i in job_ids[start : start + self._per_message]]
                self._app.send_task(RUN_JOBS_TASK, args=[chunk], queue=queue, producer=producer, countdown=countdown)
                messages += 1
        return messages


class NullPublisher:
    """For the embedded worker, which reads the queue straight from the database."""

    def publish(self, queue: str, job_ids: Sequence[int], *, countdown: float | None = None) -> int:
        return 0
