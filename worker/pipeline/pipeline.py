"""The worker's pipeline: claimed jobs go fetch → decode → engine → fenced write, many at once.

Everything runs on one asyncio loop in a background thread. Blocking work never runs on it: object
fetches and image decodes go to an I/O thread pool, database calls to a small DB pool. The engine sees up
to `inflight_jobs` requests and a finished job frees its slot as soon as its outcome is committed, so no
job waits for the slowest trace of a batch (continuous batching end to end).

Feeds: `admit(job_ids)` from Celery tasks (the distributed path) or `feed_run(run_id)`, which claims
straight from the database (the embedded path of `vlmbatch run`).
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

from PIL.Image import Image
from sqlalchemy import func, select
from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.claims import ClaimedJob, claim_jobs, claim_next, renew_leases
from vlmbatch.schema.errors import EngineDead, ErrorType, InternalError, JobCancelled, JobError
from vlmbatch.schema.models import RunSettings
from vlmbatch.schema.outcomes import AttemptReport, Timings, retry_delay
from vlmbatch.schema.reconcile import requeue_expired_leases
from vlmbatch.schema.settings import Settings
from vlmbatch.schema.states import AttemptOutcome, JobState
from vlmbatch.schema.tables import Job, Run
from vlmbatch.worker.engines.base import Engine, GenerationRequest
from vlmbatch.worker.pipeline.answers import needs_more_samples, review
from vlmbatch.worker.pipeline.capacity import Capacity, TimeShare
from vlmbatch.worker.pipeline.inputs import ImageLoader, build_request
from vlmbatch.worker.pipeline.output import attempt_outcome, to_sample
from vlmbatch.worker.pipeline.watchdog import HangWatchdog
from vlmbatch.worker.pipeline.writing import write_reports_safely
from vlmbatch.worker.process.metrics import WorkerMetrics
from vlmbatch.worker.transport.publisher import Publisher

log = logging.getLogger(__name__)
T = TypeVar("T")

# Outcomes committed per database transaction, and how long the writer waits to fill a batch.
WRITE_BATCH = 256
WRITE_LINGER_S = 0.02
# Jobs claimed in one transaction at most, when several messages wait to be claimed.
CLAIM_BATCH = 1024
# The embedded feed polls the database this often when it has nothing to claim.
FEED_POLL_S = 0.25


class WorkerStopping(Exception):
    """The pipeline no longer takes work (shutting down, or its engine died)."""


@dataclass(frozen=True)
class RunContext:
    settings: RunSettings
    queue: str


@dataclass
class Counters:
    claimed: int = 0
    written: int = 0
    fenced_off: int = 0
    handed_back: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    outcomes: Counter[str] = field(default_factory=Counter)
    errors: Counter[str] = field(default_factory=Counter)


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
        self._sessions = sessions
        self._store = store
        self._publisher = publisher
        self.worker_id = worker_id
        self.counters = Counters()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlmbatch-pipeline", daemon=True)
        self._io = ThreadPoolExecutor(settings.fetch_threads, thread_name_prefix="vlmbatch-io")
        # Claims, outcome writes and lease renewals run side by side.
        self._db_pool = ThreadPoolExecutor(3, thread_name_prefix="vlmbatch-db")
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

    def admit(self, job_ids: Sequence[int]) -> int:
        """Claim `job_ids` into this worker once there is room; return how many were claimed.
        Raises WorkerStopping when the pipeline is shutting down."""
        return self._call(self._admit(list(job_ids)))

    def feed_run(self, run_id: int) -> Future[None]:
        """Work a run's queue straight from the database until none of its jobs is queued or running."""
        return asyncio.run_coroutine_threadsafe(self._feed_run(run_id), self._loop)

    def stop(self, *, grace_s: float = 0.0) -> None:
        """Stop taking work, let in-flight jobs finish for up to `grace_s`, hand the rest back."""
        if self._thread.is_alive():
            self._call(self._stop(grace_s))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=30)
        self._io.shutdown(wait=False, cancel_futures=True)
        self._db_pool.shutdown(wait=True)

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
        self._capacity = Capacity(self._settings.resolved_inflight_jobs())
        self._reports: asyncio.Queue[AttemptReport] = asyncio.Queue()
        await self._engine.start()
        self._claims: asyncio.Queue[tuple[list[int], asyncio.Future[int]]] = asyncio.Queue()
        self._background = [
            asyncio.create_task(self._write_loop(), name="writer"),
            asyncio.create_task(self._heartbeat_loop(), name="heartbeat"),
            asyncio.create_task(self._claim_loop(), name="claimer"),
        ]

    async def _stop(self, grace_s: float) -> None:
        self._closing = True
        deadline = time.monotonic() + grace_s
        while self._inflight and time.monotonic() < deadline and self._fatal is None:
            await asyncio.sleep(0.1)
        await self._hand_back_all(reason="worker stopped")
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        await self._engine.shutdown()

    def _declare_fatal(self, exc: BaseException) -> None:
        if self._fatal is not None:
            return
        log.error("engine died (%s); handing jobs back and stopping", exc)
        self._fatal = exc
        self._closing = True
        task = asyncio.create_task(self._hand_back_all(reason=f"engine died: {exc}"))
        task.add_done_callback(lambda _t: self.fatal_event.set())

    # -- admission -----------------------------------------------------------------------------------

    async def _admit(self, job_ids: list[int]) -> int:
        if self._closing:
            raise WorkerStopping("worker is stopping")
        self.last_admitted_at = time.monotonic()
        claimed = 0
        # A message may carry more ids than the whole capacity: claim it in capacity-sized parts.
        step = self._capacity.total
        for start in range(0, len(job_ids), step):
            part = job_ids[start : start + step]
            await self._capacity.take(len(part))
            if self._closing:
                await self._capacity.give(len(part))
                raise WorkerStopping("worker is stopping")
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._claims.put_nowait((part, done))
            claimed += await done
        return claimed

    async def _claim_loop(self) -> None:
        """Claims what the Celery tasks hand over, several messages per transaction: one round of
        claiming costs the database about the same for 16 jobs as for 500."""
        while True:
            batch = [await self._claims.get()]
            while not self._claims.empty() and sum(len(part) for part, _ in batch) < CLAIM_BATCH:
                batch.append(self._claims.get_nowait())
            ids = [job_id for part, _ in batch for job_id in part]
            try:
                jobs = await self._db(
                    partial(
                        claim_jobs,
                        job_ids=ids,
                        worker=self.worker_id,
                        lease_seconds=self._settings.lease_seconds,
                        model=self._engine.model,
                    )
                )
            except Exception as exc:
                for part, done in batch:
                    await self._capacity.give(len(part))
                    done.set_exception(exc)
                continue
            claimed = {job.job_id for job in jobs}
            for part, done in batch:
                mine = sum(1 for job_id in part if job_id in claimed)
                await self._capacity.give(len(part) - mine)
                done.set_result(mine)
            for job in jobs:
                await self._launch(job)

    async def _feed_run(self, run_id: int) -> None:
        batch = max(1, min(self._settings.jobs_per_message, self._capacity.total))
        while True:
            if self._fatal is not None:
                raise WorkerStopping(f"engine died: {self._fatal}")
            if self._closing:
                raise WorkerStopping("worker is stopping")
            taken = self._capacity.take_free(self._capacity.free)
            jobs: list[ClaimedJob] = []
            if taken:
                jobs = await self._db(
                    partial(
                        claim_next,
                        limit=taken,
                        worker=self.worker_id,
                        lease_seconds=self._settings.lease_seconds,
                        run_id=run_id,
                    )
                )
                await self._capacity.give(taken - len(jobs))
                for job in jobs:
                    await self._launch(job)
            if jobs:
                await self._capacity.wait_for_free(batch, timeout=FEED_POLL_S)
                continue
            mine = any(entry.job.run_id == run_id for entry in self._inflight.values())
            if not mine and await self._db(partial(_run_drained, run_id=run_id)):
                return
            await self._capacity.wait_for_free(self._capacity.total, timeout=FEED_POLL_S)

    async def _launch(self, job: ClaimedJob) -> None:
        self.counters.claimed += 1
        entry = _InFlight(job=job, request_id=f"job-{job.job_id}-attempt-{job.attempt_id}")
        self._inflight[job.attempt_id] = entry
        entry.task = asyncio.create_task(self._run_job(entry))

    # -- one job -------------------------------------------------------------------------------------

    async def _run_job(self, entry: _InFlight) -> None:
        job = entry.job
        queue_wait = (job.claimed_at - job.queued_at).total_seconds()
        fetch_s = decode_s = generation_s = first_token_s = gpu_seconds = None
        try:
            run = await self._run_context(job.run_id)
            images, fetch_s, decode_s = await self._load_images(job)
            request = self._request(entry, run, images)
            started = time.perf_counter()
            share = self._time_share.enter()
            try:
                generation = await self._engine.generate(request)
            finally:
                gpu_seconds = self._time_share.leave(share) * self._settings.tensor_parallel_size
            generation_s = time.perf_counter() - started
            first_token_s = generation.first_token_s
            samples = review(
                [
                    to_sample(i, c, opened_by_prompt=generation.trace_opened_by_prompt)
                    for i, c in enumerate(generation.completions)
                ],
                run.settings,
                job.reference,
            )
            accepted = sum(1 for s in samples if s.correct)
            outcome = attempt_outcome(samples)
            report = AttemptReport(
                job_id=job.job_id,
                attempt_id=job.attempt_id,
                outcome=outcome,
                samples=samples,
                accepted=accepted,
                resample=outcome is AttemptOutcome.SUCCEEDED
                and needs_more_samples(
                    run.settings,
                    accepted_before=job.accepted_samples,
                    accepted_now=accepted,
                    attempts_used=job.attempts_used,
                ),
                prompt_tokens=generation.prompt_tokens,
                timings=Timings(queue_wait, fetch_s, decode_s, generation_s, first_token_s, gpu_seconds),
            )
        except asyncio.CancelledError:
            raise
        except EngineDead as exc:
            self._declare_fatal(exc)
            return  # handed back by _hand_back_all
        except Exception as exc:
            if self._fatal is not None:
                return  # the engine's death surfaced as another error: handed back
            error = exc if isinstance(exc, JobError) else InternalError(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, JobError):
                log.exception(
                    "job %s attempt %s failed unexpectedly",
                    job.job_id,
                    job.attempt_id,
                    extra={"run_id": job.run_id, "job_id": job.job_id, "attempt_id": job.attempt_id},
                )
            run_ctx = self._runs.get(job.run_id)
            report = self._failure(
                job, error, run_ctx, Timings(queue_wait, fetch_s, decode_s, generation_s, first_token_s, gpu_seconds)
            )
        entry.reported = True
        await self._reports.put(report)

    def _failure(self, job: ClaimedJob, error: JobError, run: RunContext | None, timings: Timings) -> AttemptReport:
        outcome = AttemptOutcome.CANCELLED if isinstance(error, JobCancelled) else AttemptOutcome.FAILED
        retry_after = None
        if error.transient and run is not None and job.transient_failures < run.settings.max_transient_retries:
            retry_after = retry_delay(job.transient_failures + 1)
        return AttemptReport(
            job_id=job.job_id,
            attempt_id=job.attempt_id,
            outcome=outcome,
            error_type=error.error_type,
            error_message=error.message,
            timings=timings,
            retry_after_s=retry_after,
        )

    async def _run_context(self, run_id: int) -> RunContext:
        run = self._runs.get(run_id)
        if run is not None:
            return run
        # Jobs of a new run arrive hundreds at a time: load its settings once, not once per job.
        loading = self._runs_loading.get(run_id)
        if loading is None:
            loading = asyncio.ensure_future(self._db(partial(_load_run, run_id=run_id)))
            self._runs_loading[run_id] = loading
        try:
            run = await asyncio.shield(loading)
        finally:
            self._runs_loading.pop(run_id, None)
        self._runs[run_id] = run
        return run

    async def _load_images(self, job: ClaimedJob) -> tuple[list[Image], float, float]:
        loop = asyncio.get_running_loop()
        loaded = await asyncio.gather(*(loop.run_in_executor(self._io, self._loader.load, uri) for uri in job.images))
        images = [item.image for item in loaded]
        return images, sum(item.fetch_s for item in loaded), sum(item.decode_s for item in loaded)

    def _request(self, entry: _InFlight, run: RunContext, images: list[Image]) -> GenerationRequest:
        return build_request(
            request_id=entry.request_id,
            job=entry.job,
            settings=run.settings,
            images=images,
            worker_max_tiles=self._settings.max_tiles,
        )

    # -- writing -------------------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            batch = [await self._reports.get()]
            deadline = time.monotonic() + WRITE_LINGER_S
            while len(batch) < WRITE_BATCH:
                timeout = deadline - time.monotonic()
                if timeout <= 0:
                    break
                try:
                    batch.append(await asyncio.wait_for(self._reports.get(), timeout))
                except TimeoutError:
                    break
            try:
                await self._commit(batch)
            except Exception:
                # Never let the writer die: these jobs keep their leases until they expire, and the
                # reconciler gives them to another attempt.
                log.exception("could not write %d outcomes; their jobs will be retried", len(batch))
                for report in batch:
                    self._inflight.pop(report.attempt_id, None)
                await self._capacity.give(len(batch))

    async def _commit(self, batch: list[AttemptReport]) -> None:
        written = await self._blocking(partial(write_reports_safely, self._sessions, batch), retry=True)
        written_ids = {r.attempt_id for r in written}
        requeued: dict[tuple[str, float | None], list[int]] = {}
        for report in batch:
            entry = self._inflight.pop(report.attempt_id, None)
            if report.attempt_id not in written_ids:
                self.counters.fenced_off += 1
                self.metrics.fenced_writes.inc()
                continue
            self._count(report)
            run = self._runs.get(entry.job.run_id) if entry is not None else None
            if run is not None and (report.retry_after_s is not None or report.resample):
                # Back in the queue: a transient retry after its backoff, another sampling round at once.
                requeued.setdefault((run.queue, report.retry_after_s), []).append(report.job_id)
        await self._capacity.give(len(batch))
        for (queue, delay), job_ids in requeued.items():
            await self._publish(queue, job_ids, countdown=delay)

    def _count(self, report: AttemptReport) -> None:
        c = self.counters
        c.written += 1
        c.outcomes[report.outcome.value] += 1
        if report.error_type is not None:
            c.errors[report.error_type.value] += 1
        generated = sum(s.completion_tokens for s in report.samples)
        c.prompt_tokens += report.prompt_tokens or 0
        c.completion_tokens += generated
        m = self.metrics
        m.jobs.labels(report.outcome.value, report.error_type.value if report.error_type else "").inc()
        m.prompt_tokens.inc(report.prompt_tokens or 0)
        m.generated_tokens.inc(generated)

    async def _publish(self, queue: str, job_ids: list[int], *, countdown: float | None = None) -> None:
        try:
            await self._blocking(partial(self._publisher.publish, queue, job_ids, countdown=countdown))
        except Exception:  # the reconciler republishes queued jobs whose message was lost
            log.exception("could not publish %d requeued jobs; the reconciler will", len(job_ids))

    # -- leases --------------------------------------------------------------------------------------

    async def _heartbeat_loop(self) -> None:
        watchdog = HangWatchdog(self._settings.engine_hang_seconds)
        while True:
            await asyncio.sleep(self._settings.heartbeat_seconds)
            stats = self._engine.stats()
            hung_for = watchdog.observe(self._engine.progress(), busy=stats.running + stats.waiting > 0)
            if hung_for is not None:
                self._declare_fatal(
                    EngineDead(f"engine hung: no token for {hung_for:.0f}s with {stats.running} requests running")
                )
                return
            # Every attempt not yet committed, written-but-pending ones included: the job is ours until then.
            attempt_ids = list(self._inflight)
            if not attempt_ids:
                continue
            try:
                lost = await self._db(
                    partial(
                        renew_leases,
                        worker=self.worker_id,
                        attempt_ids=attempt_ids,
                        lease_seconds=self._settings.lease_seconds,
                    )
                )
            except DBAPIError:
                log.warning("lease renewal failed; retrying at the next heartbeat", exc_info=True)
                continue
            self.metrics.lease_renewals.inc(len(attempt_ids) - len(lost))
            self.metrics.leases_lost.inc(len(lost))
            for attempt_id in lost:
                entry = self._inflight.get(attempt_id)
                if entry is not None:  # cancelled, or taken back: free the engine's slot now
                    await self._engine.abort(entry.request_id)

    async def _hand_back_all(self, *, reason: str) -> None:
        """Return every unfinished job to the queue (or fail it once its attempts are used up)."""
        pending = [e for e in self._inflight.values() if not e.reported]
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
            error = ErrorType.ENGINE_DEAD if self._fatal is not None else None
            reports.append(
                AttemptReport(
                    job_id=job.job_id,
                    attempt_id=job.attempt_id,
                    outcome=AttemptOutcome.FAILED if exhausted else AttemptOutcome.ABANDONED,
                    error_type=error or (ErrorType.INTERNAL if exhausted else None),
                    error_message=reason,
                )
            )
        written = await self._blocking(partial(write_reports_safely, self._sessions, reports), retry=True)
        self.counters.handed_back += len(written)
        by_queue: dict[str, list[int]] = {}
        for report in written:
            handed = self._inflight.pop(report.attempt_id, None)
            if report.outcome is AttemptOutcome.ABANDONED and handed is not None:
                by_queue.setdefault(self._runs[handed.job.run_id].queue, []).append(report.job_id)
        for queue, job_ids in by_queue.items():
            await self._publish(queue, job_ids)

    # -- blocking helpers ----------------------------------------------------------------------------

    async def _db(self, fn: Callable[[Session], T]) -> T:
        """Run `fn(session)` in one transaction on the DB pool."""
        return await self._blocking(partial(_in_transaction, self._sessions, fn))

    async def _blocking(self, fn: Callable[[], T], *, retry: bool = False) -> T:
        """Run `fn()` on the DB pool; with `retry`, retry lost connections with backoff until it works
        (an outcome must not be dropped because the database restarted or failed over)."""
        loop = asyncio.get_running_loop()
        delay = 0.5
        while True:
            try:
                return await loop.run_in_executor(self._db_pool, fn)
            except (OperationalError, InterfaceError) as exc:
                if not retry:
                    raise
                log.warning("database call failed (%s); retrying in %.1fs", type(exc).__name__, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)


def _in_transaction(sessions: sessionmaker[Session], fn: Callable[[Session], T]) -> T:
    with sessions() as session, session.begin():
        return fn(session)


def _load_run(session: Session, *, run_id: int) -> RunContext:
    run = session.get(Run, run_id)
    if run is None:
        raise InternalError(f"run {run_id} does not exist")
    return RunContext(settings=RunSettings.model_validate(run.settings), queue=run.queue)


def _run_drained(session: Session, *, run_id: int) -> bool:
    """True when none of the run's jobs is queued or running (after taking back expired leases)."""
    requeue_expired_leases(session, run_id=run_id)
    pending = session.scalar(
        select(func.count())
        .select_from(Job)
        .where(Job.run_id == run_id, Job.state.in_([JobState.QUEUED.value, JobState.RUNNING.value]))
    )
    return not pending
