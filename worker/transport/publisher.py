"""Publishing job ids to the broker in messages of up to `jobs_per_message` ids, over one connection."""

from __future__ import annotations

import base64
import json
import os
import socket
import uuid
from collections.abc import Sequence
from typing import Protocol

from celery import Celery

from vlmbatch.worker.transport.celery_app import RUN_JOBS_TASK


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


class RedisPublisher:
    """Publishes straight into the Celery queue's Redis list, hundreds of messages per round trip.

    Each message is exactly what Celery's `send_task` would push through kombu (task protocol 2, JSON
    body, base64 body encoding, the same envelope keys); only the per-message round trips and exchange
    look-ups are saved. Delayed messages (retries after a backoff) go through Celery's own path.
    """

    # Messages per LPUSH (a pipeline sends several LPUSHes in one round trip).
    PUSH_BATCH = 500

    def __init__(self, app: Celery, *, jobs_per_message: int) -> None:
        import redis

        self._app = app
        self._per_message = jobs_per_message
        self._client = redis.Redis.from_url(app.conf.broker_url)
        self._fallback = CeleryPublisher(app, jobs_per_message=jobs_per_message)
        self._origin = f"{socket.gethostname()}:{os.getpid()}"

    def publish(self, queue: str, job_ids: Sequence[int], *, countdown: float | None = None) -> int:
        if countdown:
            return self._fallback.publish(queue, job_ids, countdown=countdown)
        envelopes = [
            self.envelope(queue, [int(i) for i in job_ids[start : start + self._per_message]])
            for start in range(0, len(job_ids), self._per_message)
        ]
        pipe = self._client.pipeline(transaction=False)
        for start in range(0, len(envelopes), self.PUSH_BATCH):
            pipe.lpush(queue, *envelopes[start : start + self.PUSH_BATCH])
        pipe.execute()
        return len(envelopes)

    def envelope(self, queue: str, job_ids: list[int]) -> str:
        """One Celery message asking a worker to claim `job_ids`, as kombu's Redis transport stores it."""
        task_id = str(uuid.uuid4())
        message = self._app.amqp.as_task_v2(
            task_id,
            RUN_JOBS_TASK,
            args=(job_ids,),
            kwargs={},
            origin=self._origin,
            ignore_result=True,
            # What Celery would show, without its (slow) safe repr of every argument.
            argsrepr=f"[{job_ids}]",
            kwargsrepr="{}",
        )
        body = json.dumps(message.body)
        return json.dumps(
            {
                "body": base64.b64encode(body.encode()).decode(),
                "content-encoding": "utf-8",
                "content-type": "application/json",
                "headers": message.headers,
                "properties": {
                    **message.properties,
                    "delivery_mode": 2,
                    "delivery_info": {"exchange": "", "routing_key": queue},
                    "priority": 0,
                    "body_encoding": "base64",
                    "delivery_tag": str(uuid.uuid4()),
                },
            }
        )


def publisher_for(app: Celery, *, jobs_per_message: int) -> Publisher:
    """The fastest publisher the broker allows: direct Redis lists, or Celery's own path."""
    if str(app.conf.broker_url).startswith(("redis://", "rediss://")):
        return RedisPublisher(app, jobs_per_message=jobs_per_message)
    return CeleryPublisher(app, jobs_per_message=jobs_per_message)


class NullPublisher:
    """For the embedded worker, which reads the queue straight from the database."""

    def publish(self, queue: str, job_ids: Sequence[int], *, countdown: float | None = None) -> int:
        return 0
