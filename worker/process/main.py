"""Entry points of a worker process: the Celery worker (`vlmbatch worker`) and the embedded run
(`vlmbatch run`), both around one pipeline and one engine built before any job is taken."""

from __future__ import annotations

import logging
import os
import signal
import threading
from collections.abc import Callable

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.worker.pipeline.pipeline import Pipeline
from vlmbatch.worker.pipeline.supervision import BackgroundTaskDied
from vlmbatch.worker.process.maintenance import Maintenance
from vlmbatch.worker.process.progress import WorkerProgress
from vlmbatch.worker.process.runtime import build_pipeline
from vlmbatch.worker.process.tasks import register_tasks
from vlmbatch.worker.transport.celery_app import make_celery, task_concurrency
from vlmbatch.worker.transport.publisher import NullPublisher, publisher_for

log = logging.getLogger(__name__)

# Exit statuses that ask the supervisor for a restart (docs/ARCHITECTURE.md, "Worker engine").
EXIT_ENGINE_DEAD = 3
EXIT_CONSUMER_STALLED = 4
# A background task of the pipeline (writer, heartbeat, claimer) died (worker/pipeline/supervision.py).
EXIT_TASK_DIED = 5


def run_celery_worker(settings: Settings, *, loglevel: str = "INFO") -> int:
    """Consume the broker queue until told to stop; return the process exit status."""
    log.info(
        "worker %s: model %s, tensor_parallel_size %d, CUDA_VISIBLE_DEVICES=%s, queue %s",
        settings.resolved_worker_id(),
        settings.model,
        settings.tensor_parallel_size,
        os.environ.get("CUDA_VISIBLE_DEVICES", "(all)"),
        settings.queue,
    )
    db_engine, sessions = open_ledger(settings.resolved_database_url(), auto_migrate=settings.auto_migrate)
    app = make_celery(settings)
    publisher = publisher_for(app, jobs_per_message=settings.jobs_per_message)
    pipeline = build_pipeline(settings, sessions=sessions, publisher=publisher)
    pipeline.start()
    if settings.metrics_port:
        pipeline.metrics.serve(settings.metrics_port)
    register_tasks(app, pipeline)
    maintenance = Maintenance(
        settings=settings, sessions=sessions, db_engine=db_engine, publisher=publisher, pipeline=pipeline
    )
    worker = app.Worker(
        pool="threads",
        concurrency=task_concurrency(settings),
        queues=[settings.queue],
        loglevel=loglevel,
        hostname=f"vlmbatch@{pipeline.worker_id}",
        # Heartbeats (every 2 s per worker) and task events (one per message of 16 jobs) are what Flower
        # shows the fleet from; gossip and mingle are worker-to-worker chatter nothing here uses.
        without_gossip=True,
        without_mingle=True,
        without_heartbeat=False,
        optimization="fair",
        # The banner is for people; JSON log pipelines get only log records.
        quiet=settings.log_format == "json",
    )
    if settings.log_format == "json":
        _say_through_logging()
    for event in (pipeline.fatal_event, maintenance.stalled):
        threading.Thread(target=_stop_when_set, args=(event,), daemon=True, name="stop-watch").start()
    maintenance.start()
    progress = WorkerProgress(f"worker {pipeline.worker_id}", pipeline.counters, every_s=settings.progress_every)
    progress.start()
    try:
        worker.start()
    finally:
        progress.stop()
        maintenance.stop()
        pipeline.stop(grace_s=0.0 if pipeline.fatal else settings.shutdown_grace_seconds)
    return exit_status(
        fatal=pipeline.fatal,
        stalled=maintenance.stalled.is_set(),
        celery_exitcode=int(getattr(worker, "exitcode", 0) or 0),
    )


def exit_status(*, fatal: BaseException | None, stalled: bool, celery_exitcode: int) -> int:
    """The worker process's exit status: non-zero whenever its supervisor must restart it."""
    if isinstance(fatal, BackgroundTaskDied):
        log.error("exiting with status %d: %s", EXIT_TASK_DIED, fatal)
        return EXIT_TASK_DIED
    if fatal is not None:
        log.error("exiting with status %d after engine death: %s", EXIT_ENGINE_DEAD, fatal)
        return EXIT_ENGINE_DEAD
    if stalled:
        return EXIT_CONSUMER_STALLED
    # Celery sets a non-zero exit code when its consumer hit an unrecoverable error (e.g. a broker that
    # went away mid-reconnect): the supervisor must restart this worker.
    return celery_exitcode


def _say_through_logging() -> None:
    """Celery prints its shutdown notices ("worker: Warm shutdown") straight to the process's stdout, where a
    JSON log pipeline would choke on them; it has no setting for that, so its printer is replaced."""
    import celery.apps.worker

    celery_log = logging.getLogger("celery.apps.worker")

    def say(message: str, file: object = None) -> None:
        celery_log.info(message)

    celery.apps.worker.safe_say = say  # type: ignore[attr-defined]  # not in the type stubs


def _stop_when_set(event: threading.Event) -> None:
    event.wait()
    # Celery's warm shutdown: stop consuming, let the (short) claim tasks finish.
    os.kill(os.getpid(), signal.SIGTERM)


def start_embedded(settings: Settings) -> Pipeline:
    """The pipeline and its engine for `vlmbatch run`, started (the engine loads here)."""
    _, sessions = open_ledger(settings.resolved_database_url(), auto_migrate=settings.auto_migrate)
    pipeline = build_pipeline(settings, sessions=sessions, publisher=NullPublisher())
    pipeline.start()
    if settings.metrics_port:
        pipeline.metrics.serve(settings.metrics_port, host="127.0.0.1")
    return pipeline


def run_embedded(
    settings: Settings,
    *,
    run_id: int,
    on_tick: Callable[[Pipeline], None] | None = None,
    tick_s: float = 1.0,
    pipeline: Pipeline | None = None,
) -> Pipeline:
    """Work one run's queue in this process until none of its jobs is queued or running."""
    if pipeline is None:
        pipeline = start_embedded(settings)
    done = pipeline.feed_run(run_id)
    try:
        while True:
            try:
                done.result(timeout=tick_s)
                break
            except TimeoutError:
                if on_tick is not None:
                    on_tick(pipeline)
    finally:
        pipeline.stop(grace_s=0.0)
    return pipeline
