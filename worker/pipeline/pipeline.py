"""The worker's pipeline: claimed jobs go fetch → decode → engine → fenced write, many at once.

Everything runs on one asyncio loop in a background thread. Blocking work never runs on it: object
fetches and image decodes go to an I/O thread pool, database calls to a small DB pool. The engine sees up
to `inflight_jobs` requests and a finished job frees its slot as soon as its outcome is committed, so no
job waits for the slowest trace of a batch (continuous batching end to end).

The parts, one module each: `admission` (claiming, both feeds), `attempt` (one job's attempt and its
report), `writing` (batched, fenced commits), `leases` (heartbeat and hang watchdog), `capacity` (slots and
engine-time shares), `supervision` (a background task that dies stops the worker). This module owns the
jobs in flight and the lifecycle: start, drain, hand back.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from dataclasses import dataclass
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.local_roots import LocalRoots
from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.contracts.errors import EngineDead, ErrorType, InternalError, JobError
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.schema.ledger.liveness import retire
from vlmbatch.schema.ledger.outcomes import AttemptReport
from vlmbatch.worker.engines.base import Engine
from vlmbatch.worker.pipeline.admission import Admission, WorkerStopping
from vlmbatch.worker.pipeline.attempt import AttemptClock, RunContext, failure_report, load_run_context, run_attempt
from vlmbatch.worker.pipeline.capacity import Capacity, TimeShare
from vlmbatch.worker.pipeline.counters import Counters
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inputs import ImageLoader, LoadedImage, SharedImages
from vlmbatch.worker.pipeline.leases import Heartbeat
from vlmbatch.worker.pipeline.supervision import supervise
from vlmbatch.worker.pipeline.tripping import BreakerWatch
from vlmbatch.worker.pipeline.writing import OutcomeWriter
from vlmbatch.worker.telemetry.log_format import log_context
from vlmbatch.worker.telemetry.metrics import WorkerMetrics
from vlmbatch.worker.transport.publisher import Publisher

__all__ = ["Counters", "Pipeline", "WorkerStopping"]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _InFlight:
    job: ClaimedJob
    request_id: str
    task: asyncio.Task[None] | None = None
    reported: bool = False


class Pipeline:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        sessions: sessionmaker[Session],
        store: ObjectStore,
        publisher: Publisher,
        worker_id: str,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._publisher = publisher
        self.worker_id = worker_id
        self.counters = Counters()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlmbatch-pipeline", daemon=True)
        self._io = ThreadPoolExecutor(settings.fetch_threads, thread_name_prefix="vlmbatch-io")
        self._db = DatabasePool(sessions)
        self._inflight: dict[int, _InFlight] = {}
        self._runs: dict[int, RunContext] = {}
        self._runs_loading: dict[int, asyncio.Future[RunContext]] = {}
        self._closing = False
        self._fatal: BaseException | None = None
        self.fatal_event = threading.Event()
        self._background: list[asyncio.Task[None]] = []
        self.last_admitted_at = time.monotonic()
        self._time_share = TimeShare()
        self.metrics = WorkerMetrics()
        self._loader = ImageLoader(settings=settings, store=store, metrics=self.metrics)
        self._images = SharedImages(self._load_image)
        self._capacity = Capacity(settings.resolved_inflight_jobs())
        self._breakers = BreakerWatch(settings=settings, db=self._db, metrics=self.metrics)
        self.metrics.watch(
            in_flight=lambda: len(self._inflight),
            running=lambda: self._engine.stats().running,
            waiting=lambda: self._engine.stats().waiting,
            kv_cache_usage=lambda: self._engine.stats().kv_cache_usage or 0.0,
        )

    # -- called from other threads -------------------------------------------------------------------

    def start(self) -> None:
        """Start the loop thread and the engine (once per process, never per task)."""
        self._thread.start()
        self._call(self._start())

    def admit(self, jobs: int) -> int:
        """Claim up to `jobs` queued jobs of this worker's queue once there is room (a claim token); return
        how many were claimed. Raises WorkerStopping when the pipeline is shutting down."""
        self.last_admitted_at = time.monotonic()
        try:
            return self._call(self._admission.admit(jobs))
        except CancelledError as exc:  # the pipeline stopped while this claim waited for room
            raise WorkerStopping("worker is stopping") from exc

    def feed_run(self, run_id: int) -> Future[None]:
        """Work a run's queue straight from the database until none of its jobs is queued or running."""
        return asyncio.run_coroutine_threadsafe(self._admission.feed_run(run_id), self._loop)

    def stop(self, *, grace_s: float = 0.0) -> None:
        """Stop taking work, let in-flight jobs finish for up to `grace_s`, hand the rest back."""
        if self._thread.is_alive():
            self._call(self._stop(grace_s))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._io.shutdown(wait=False, cancel_futures=True)
        self._db.shutdown()

    @property
    def fatal(self) -> BaseException | None:
        return self._fatal

    @property
    def in_flight(self) -> int:
        return len(self._inflight)

    def has_room(self) -> bool:
        """Whether a whole message's worth of jobs could be claimed now."""
        return self._capacity.free >= min(self._settings.jobs_per_message, self._capacity.total)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def _start(self) -> None:
        self._writer = OutcomeWriter(commit=self._commit, commit_failed=self._drop_uncommitted)
        self._admission = Admission(
            settings=self._settings,
            worker_id=self.worker_id,
            model=self._engine.model,
            capacity=self._capacity,
            db=self._db,
            launch=self._launch,
            stopping=self._stopping_reason,
            holds_jobs_of=lambda run_id: any(e.job.run_id == run_id for e in self._inflight.values()),
        )
        heartbeat = Heartbeat(
            settings=self._settings,
            worker_id=self.worker_id,
            engine=self._engine,
            db=self._db,
            metrics=self.metrics,
            attempts_in_flight=lambda: list(self._inflight),
            lease_lost=self._lease_lost,
            engine_hung=self._declare_fatal,
        )
        try:
            await self._engine.start()
        except Exception as exc:
            await self._breakers.engine_failed(exc, model=self._engine.model)
            raise
        self._writer_task = asyncio.create_task(self._writer.run(), name="writer")
        self._background = [
            self._writer_task,
            asyncio.create_task(heartbeat.run(), name="heartbeat"),
            asyncio.create_task(self._admission.claim_loop(), name="claimer"),
        ]
        for task in self._background:
            supervise(task, on_death=self._declare_fatal, stopping=lambda: self._closing)

    def _stopping_reason(self) -> str | None:
        if self._fatal is not None:
            return f"engine died: {self._fatal}" if isinstance(self._fatal, EngineDead) else str(self._fatal)
        return "worker is stopping" if self._closing else None

    async def _stop(self, grace_s: float) -> None:
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self._inflight and time.monotonic() < deadline and self._fatal is None:
            await asyncio.sleep(0.1)
        await self._give_up(reason="worker stopped")
        # The background tasks and anything else still on the loop (a feed whose caller went away).
        others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in others:
            task.cancel()
        await asyncio.gather(*others, return_exceptions=True)
        # After the heartbeat stopped, so that no beat brings the row back.
        try:
            await self._db.transaction(partial(retire, worker=self.worker_id))
        except Exception:  # its row lapses by itself within a lease
            log.warning("could not delete this worker's heartbeat row", exc_info=True)
        await self._engine.shutdown()

    async def _drain_writer(self) -> None:
        """Commit every outcome already handed to the writer; if the writer is dead, hand those jobs back."""
        if not self._writer_task.done():
            drained = asyncio.ensure_future(self._writer.drain())
            await asyncio.wait({drained, self._writer_task}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        if self._writer_task.done():
            await self._hand_back_all(reason="the outcome writer stopped", include_reported=True)

    def _declare_fatal(self, exc: BaseException) -> None:
        if self._fatal is not None:
            return
        what = f"engine died ({exc})" if isinstance(exc, EngineDead) else str(exc)
        log.error("%s; handing jobs back and stopping", what)
        self._fatal = exc
        self._closing = True
        task = asyncio.create_task(self._give_up(reason=what))
        task.add_done_callback(lambda _t: self.fatal_event.set())

    async def _give_up(self, *, reason: str) -> None:
        """Hand the unfinished jobs back; outcomes the writer holds are still committed if it lives."""
        try:
            await self._hand_back_all(reason=reason)
            await self._drain_writer()
        except Exception:  # bounded database retries ran out: the leases expire and the reconciler acts
            log.exception("could not hand the jobs back; their leases will expire")

    # -- one job -------------------------------------------------------------------------------------

    async def _launch(self, job: ClaimedJob) -> None:
        self.counters.claimed += 1
        entry = _InFlight(job=job, request_id=f"job-{job.job_id}-attempt-{job.attempt_id}")
        self._inflight[job.attempt_id] = entry
        entry.task = asyncio.create_task(self._run_job(entry))

    async def _run_job(self, entry: _InFlight) -> None:
        job = entry.job
        # This task's log records (and its image loads') carry the job's ids.
        with log_context(run_id=job.run_id, job_id=job.job_id, attempt_id=job.attempt_id):
            report = await self._attempt(entry)
            if report is not None:
                log.debug("attempt %s %s %s", job.attempt_id, report.outcome.value, report.error_type or "")
        if report is not None:
            entry.reported = True
            await self._writer.put(report)

    async def _attempt(self, entry: _InFlight) -> AttemptReport | None:
        """The attempt's report, or None when the engine died (the job is then handed back)."""
        job = entry.job
        clock = AttemptClock(queue_wait_s=(job.claimed_at - job.queued_at).total_seconds())
        uris = set(job.images)
        self._images.hold(uris)
        try:
            run_context = await self._run_context(job.run_id)
            report = await run_attempt(
                job,
                request_id=entry.request_id,
                run=run_context,
                clock=clock,
                load=partial(self._load_shared, roots=run_context.local_roots),
                engine=self._engine,
                time_share=self._time_share,
                tensor_parallel_size=self._settings.tensor_parallel_size,
                worker_max_tiles=self._settings.max_tiles,
            )
        except asyncio.CancelledError:
            raise
        except EngineDead as exc:
            self._declare_fatal(exc)
            return None  # handed back by _hand_back_all
        except Exception as exc:
            if self._fatal is not None:
                return None  # the engine's death surfaced as another error: handed back
            error = exc if isinstance(exc, JobError) else InternalError(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, JobError):
                log.exception("job %s attempt %s failed unexpectedly", job.job_id, job.attempt_id)
            run = self._runs.get(job.run_id)
            report = failure_report(job, error, run.settings if run else None, clock.timings())
        finally:
            self._images.release(uris)
        return report

    async def _load_shared(self, uri: str, *, roots: LocalRoots) -> LoadedImage:
        # Checked per job, before the shared load: one run's roots must not let another run's job in.
        roots.check(uri)
        return await self._images.load(uri)

    async def _load_image(self, uri: str) -> LoadedImage:
        context = contextvars.copy_context()  # the I/O thread logs with this job's ids
        return await asyncio.get_running_loop().run_in_executor(self._io, context.run, self._loader.load, uri)

    async def _run_context(self, run_id: int) -> RunContext:
        run = self._runs.get(run_id)
        if run is not None:
            return run
        # Jobs of a new run arrive hundreds at a time: load its settings once, not once per job.
        loading = self._runs_loading.get(run_id)
        if loading is None:
            extra_roots = self._settings.resolved_local_roots()
            loading = asyncio.ensure_future(
                self._db.transaction(partial(load_run_context, run_id=run_id, extra_roots=extra_roots))
            )
            self._runs_loading[run_id] = loading
        try:
            run = await asyncio.shield(loading)
        finally:
            self._runs_loading.pop(run_id, None)
        self._runs[run_id] = run
        return run

    async def _lease_lost(self, attempt_id: int) -> None:
        entry = self._inflight.get(attempt_id)
        if entry is not None:  # cancelled, or taken back: free the engine's slot now
            await self._engine.abort(entry.request_id)

    # -- writing -------------------------------------------------------------------------------------

    async def _commit(self, batch: list[AttemptReport]) -> None:
        written = await self._breakers.write(batch)
        written_ids = {r.attempt_id for r in written}
        requeued: dict[tuple[str, float | None], list[int]] = {}
        for report in batch:
            entry = self._inflight.pop(report.attempt_id, None)
            if report.attempt_id not in written_ids:
                self.counters.fenced_off += 1
                self.metrics.fenced_writes.inc()
                continue
            self.counters.record(report, self.metrics)
            run = self._runs.get(entry.job.run_id) if entry is not None else None
            if run is not None and (report.retry_after_s is not None or report.resample):
                # Back in the queue: a transient retry after its backoff, another sampling round at once.
                requeued.setdefault((run.queue, report.retry_after_s), []).append(report.job_id)
        await self._capacity.give(len(batch))
        for (queue, delay), job_ids in requeued.items():
            await self._publish(queue, len(job_ids), countdown=delay)

    async def _drop_uncommitted(self, batch: list[AttemptReport]) -> None:
        for report in batch:
            self._inflight.pop(report.attempt_id, None)
        await self._capacity.give(len(batch))

    async def _publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> None:
        try:
            await self._db.blocking(partial(self._publisher.publish, queue, jobs, countdown=countdown))
        except Exception:  # the reconciler publishes tokens for queued jobs that have none
            log.exception("could not publish tokens for %d requeued jobs; the reconciler will", jobs)

    # -- handing back --------------------------------------------------------------------------------

    async def _hand_back_all(self, *, reason: str, include_reported: bool = False) -> None:
        """Return every unfinished job to the queue (or fail it once its attempts are used up); with
        `include_reported`, also those whose outcome the (dead) writer never committed."""
        pending = [e for e in self._inflight.values() if include_reported or not e.reported]
        for entry in pending:
            entry.reported = True
            if entry.task is not None and not entry.task.done():
                entry.task.cancel()
                await self._engine.abort(entry.request_id)
        if not pending:
            return
        reports = []
        for entry in pending:
            job = entry.job
            run = self._runs.get(job.run_id) or await self._run_context(job.run_id)
            exhausted = job.attempts_used >= run.settings.max_attempts
            error = ErrorType.ENGINE_DEAD if isinstance(self._fatal, EngineDead) else None
            reports.append(
                AttemptReport(
                    job_id=job.job_id,
                    attempt_id=job.attempt_id,
                    outcome=AttemptOutcome.FAILED if exhausted else AttemptOutcome.ABANDONED,
                    error_type=error or (ErrorType.INTERNAL if exhausted else None),
                    error_message=reason,
                )
            )
        written = await self._breakers.write(reports)
        self.counters.handed_back += len(written)
        by_queue: dict[str, list[int]] = {}
        for report in written:
            handed = self._inflight.pop(report.attempt_id, None)
            if report.outcome is AttemptOutcome.ABANDONED and handed is not None:
                by_queue.setdefault(self._runs[handed.job.run_id].queue, []).append(report.job_id)
        for queue, job_ids in by_queue.items():
            await self._publish(queue, len(job_ids))
