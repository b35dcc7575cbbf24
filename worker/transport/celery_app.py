"""The Celery application: JSON-only messages that are claim tokens (schema/contracts/tokens.py: "claim up
to N queued jobs of this queue"; the database holds everything else).

Reliability comes from the ledger, not the broker: a message only asks a worker to claim jobs. Once
claimed, a job is protected by its lease (docs/ARCHITECTURE.md); a lost or duplicated message is harmless because
jobs stay queued in the ledger until claimed, the reconciler publishes tokens for queued jobs that have
none, and claims are fenced.
"""

from __future__ import annotations

import math
from pathlib import Path

from celery import Celery

from vlmbatch.schema.contracts.settings import Settings

RUN_JOBS_TASK = "vlmbatch.run_jobs"


def make_celery(settings: Settings, *, name: str = "vlmbatch") -> Celery:
    """A Celery app configured from `settings`; tasks are registered by the worker (worker.process.tasks)."""
    broker_url = settings.resolved_broker_url()
    if broker_url.startswith("sqla+sqlite:///"):  # the embedded broker: a SQLite file next to the ledger
        Path(broker_url.removeprefix("sqla+sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    app = Celery(name, broker=broker_url, set_as_current=False)
    app.conf.update(
        task_serializer="json",
        accept_content=["json"],  # pickle refused: a message can never run code
        result_serializer="json",
        task_ignore_result=True,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_default_queue=settings.queue,
        task_create_missing_queues=True,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=None,
        broker_transport_options=transport_options(settings),
        worker_prefetch_multiplier=prefetch_multiplier(settings),
        worker_cancel_long_running_tasks_on_connection_loss=True,
        worker_hijack_root_logger=False,
        # Flower lists tasks from these events; a message carries many jobs, so their rate stays low.
        worker_send_task_events=True,
        task_send_sent_event=True,
        enable_utc=True,
    )
    return app


def transport_options(settings: Settings) -> dict[str, object]:
    url = settings.resolved_broker_url()
    if url.startswith(("redis://", "rediss://", "sentinel://")):
        # Redis redelivers an unacknowledged message after this long; it must outlast the longest
        # generation even though our tasks ack once their jobs are claimed (see module docstring).
        return {"visibility_timeout": settings.visibility_timeout_seconds}
    return {}  # kombu's SQLAlchemy transport passes its options to create_engine


def prefetch_multiplier(settings: Settings) -> int:
    """Messages reserved per task slot so that the reserved jobs roughly fill the engine's slots."""
    per_slot_jobs = settings.jobs_per_message * task_concurrency(settings)
    return max(1, math.ceil(settings.max_num_seqs / per_slot_jobs))


def task_concurrency(settings: Settings) -> int:
    """Celery threads per worker: each waits for pipeline capacity, claims, hands over and acks."""
    return 4
