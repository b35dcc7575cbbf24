"""Publishing claim tokens: each message asks a worker of the queue to claim up to `jobs_per_message`
queued jobs from the ledger (schema/contracts/tokens.py says why messages carry no job ids)."""

from __future__ import annotations

import base64
import json
import math
import os
import socket
import uuid
from typing import Protocol

from celery import Celery

from vlmbatch.worker.transport.celery_app import RUN_JOBS_TASK


class Publisher(Protocol):
    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        """Publish enough claim tokens for `jobs` queued jobs of `queue`; return the number of messages."""
        ...


def tokens_for(jobs: int, jobs_per_message: int) -> int:
    return math.ceil(max(0, jobs) / jobs_per_message)


class CeleryPublisher:
    def __init__(self, app: Celery, *, jobs_per_message: int) -> None:
        self._app = app
        self._per_message = jobs_per_message

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        messages = tokens_for(jobs, self._per_message)
        if not messages:
            return 0
        with self._app.producer_or_acquire() as producer:
            for _ in range(messages):
                self._app.send_task(
                    RUN_JOBS_TASK, args=[self._per_message], queue=queue, producer=producer, countdown=countdown
                )
        return messages


class RedisPublisher:
    """Publishes straight into the Celery queue's Redis list, hundreds of messages per round trip.

    Each message is exactly what Celery's `send_task` would push through kombu (task protocol 2, JSON
    body, base64 body encoding, the same envelope keys); only the per-message round trips and exchange
    look-ups are saved. Delayed messages (retries after a backoff) go through Celery's own path.
    """

    # Messages per LPUSH (a pipeline sends several LPUSHes in one round trip), and per pipeline: tokens for
    # a wiped queue of 10^7 jobs are 625,000 messages, built and sent a pipeline at a time (~2 MB).
    PUSH_BATCH = 500
    PIPELINE_MESSAGES = 1_000

    def __init__(self, app: Celery, *, jobs_per_message: int) -> None:
        import redis

        self._app = app
        self._per_message = jobs_per_message
        self._client = redis.Redis.from_url(app.conf.broker_url)
        self._fallback = CeleryPublisher(app, jobs_per_message=jobs_per_message)
        self._origin = f"{socket.gethostname()}:{os.getpid()}"

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        if countdown:
            return self._fallback.publish(queue, jobs, countdown=countdown)
        messages = tokens_for(jobs, self._per_message)
        for first in range(0, messages, self.PIPELINE_MESSAGES):
            pipe = self._client.pipeline(transaction=False)
            last = min(first + self.PIPELINE_MESSAGES, messages)
            for start in range(first, last, self.PUSH_BATCH):
                pipe.lpush(queue, *(self.envelope(queue) for _ in range(min(self.PUSH_BATCH, last - start))))
            pipe.execute()
        return messages

    def envelope(self, queue: str) -> str:
        """One Celery message asking a worker to claim up to `jobs_per_message` jobs, as kombu's Redis
        transport stores it."""
        task_id = str(uuid.uuid4())
        message = self._app.amqp.as_task_v2(
            task_id,
            RUN_JOBS_TASK,
            args=(self._per_message,),
            kwargs={},
            origin=self._origin,
            ignore_result=True,
            argsrepr=f"({self._per_message},)",
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

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        return 0
