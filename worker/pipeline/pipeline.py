"""The worker's pipeline: claimed jobs go fetch → decode → engine → fenced write, many at once.

Everything runs on one asyncio loop in a background thread. Blocking work never runs on it: object
fetches and image decodes go to an I/O thread pool, database calls to a small DB pool. The engine sees up
to `inflight_jobs` requests and a finished job frees its slot as soon as its outcome is committed, so no
job waits for the slowest trace of a batch (continuous batching end to end).

This module is the composition root: it builds the parts, each the owner of one concern, and runs the
lifecycle (start, stop, give up). The parts (docs/ARCHITECTURE.md, "The pipeline"):
- `inflight`: the registry of attempts in flight and the stop state every part consults;
- `admission`: claiming (the Celery tokens' feed and the embedded run's feed) into free capacity;
- `running`: one task per attempt, `attempt` its steps (images, request, report) and the run contexts;
- `writing`: batched, fenced commits and hand-backs, which free slots and requeue;
- `leases`: the heartbeat and the hang watchdog; `capacity`: slots; `supervision`: background tasks.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import CancelledError, Future, ThreadPoolExecutor
from functools import partial
from typing import Any, TypeVar

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.media.stores import ObjectStore
from vlmbatch.schema.contracts.errors import EngineDead
from vlmbatch.schema.contracts.model_identity import identify
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.liveness import retire
from vlmbatch.worker.engines.base import Engine
from vlmbatch.worker.pipeline.admission import Admission, WorkerStopping
from vlmbatch.worker.pipeline.attempt import RunContexts
from vlmbatch.worker.pipeline.capacity import Capacity
from vlmbatch.worker.pipeline.checkpointing import Checkpointer
from vlmbatch.worker.pipeline.counters import Counters
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inflight import Attempts, StopState
from vlmbatch.worker.pipeline.inputs import ImageLoader
from vlmbatch.worker.pipeline.leases import Heartbeat
from vlmbatch.worker.pipeline.running import AttemptRunner
from vlmbatch.worker.pipeline.supervision import supervise
from vlmbatch.worker.pipeline.tripping import BreakerWatch
from vlmbatch.worker.pipeline.writing import Outcomes, OutcomeWriter
from vlmbatch.worker.telemetry.metrics import WorkerMetrics
from vlmbatch.worker.transport.publisher import Publisher

__all__ = ["Counters", "Pipeline", "WorkerStopping"]

log = logging.getLogger(__name__)
T = TypeVar("T")


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
        self._identity = identify(engine.model)
        self.worker_id = worker_id
        self.counters = Counters()
        self.metrics = WorkerMetrics()
        self.fatal_event = threading.Event()
        self.last_admitted_at = time.monotonic()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="vlmbatch-pipeline", daemon=True)
        self._io = ThreadPoolExecutor(settings.fetch_threads, thread_name_prefix="vlmbatch-io")
        self._db = DatabasePool(sessions)
        self._attempts = Attempts()
        self._state = StopState()
        self._capacity = Capacity(settings.resolved_inflight_jobs())
        self._breakers = BreakerWatch(settings=settings, db=self._db, metrics=self.metrics)
        self._runs = RunContexts(db=self._db, extra_roots=settings.resolved_local_roots())
        self._outcomes = Outcomes(
            db=self._db,
            engine=engine,
            attempts=self._attempts,
            runs=self._runs,
            capacity=self._capacity,
            publisher=publisher,
            state=self._state,
            counters=self.counters,
            metrics=self.metrics,
            breakers=self._breakers,
        )
        self._writer = OutcomeWriter(self._outcomes)
        self._checkpointer = Checkpointer(settings=settings, attempts=self._attempts, db=self._db)
        self._runner = AttemptRunner(
            settings=settings,
            engine=engine,
            attempts=self._attempts,
            state=self._state,
            runs=self._runs,
            loader=ImageLoader(settings=settings, store=store, metrics=self.metrics),
            io=self._io,
            writer=self._writer,
            counters=self.counters,
        )
        self._admission = Admission(
            settings=settings,
            worker_id=worker_id,
            model=engine.model,
            fingerprint=self._identity.fingerprint,
            capacity=self._capacity,
            db=self._db,
            attempts=self._attempts,
            state=self._state,
            runner=self._runner,
        )
        self.metrics.watch(
            in_flight=lambda: len(self._attempts),
            running=lambda: self._engine.stats().running,
            waiting=lambda: self._engine.stats().waiting,
            kv_cache_usage=lambda: self._engine.stats().kv_cache_usage or 0.0,
            preemptions=lambda: self._engine.stats().preemptions,
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
        return self._state.fatal

    @property
    def in_flight(self) -> int:
        return len(self._attempts)

    def has_room(self) -> bool:
        """Whether a whole message's worth of jobs could be claimed now."""
        return self._capacity.free >= min(self._settings.jobs_per_message, self._capacity.total)

    def _call(self, coro: Coroutine[Any, Any, T]) -> T:
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result()

    # -- lifecycle -----------------------------------------------------------------------------------

    async def _start(self) -> None:
        heartbeat = Heartbeat(
            settings=self._settings,
            identity=self._identity,
            worker_id=self.worker_id,
            engine=self._engine,
            db=self._db,
            metrics=self.metrics,
            attempts=self._attempts,
            state=self._state,
        )
        # Alive from the start, not from the first beat after a model load of minutes: `status` counts
        # this worker while its engine loads.
        await heartbeat.renew()
        beating = asyncio.create_task(heartbeat.run(), name="heartbeat")
        try:
            await self._engine.start()
        except BaseException as exc:
            beating.cancel()
            if isinstance(exc, Exception):  # the circuit breaker counts a failed start for the queue's runs
                await self._breakers.engine_failed(exc, model=self._engine.model)
            raise
        self._writer_task = asyncio.create_task(self._writer.run(), name="writer")
        background = [
            self._writer_task,
            beating,
            asyncio.create_task(self._admission.claim_loop(), name="claimer"),
            asyncio.create_task(self._checkpointer.run(), name="checkpointer"),
        ]
        for task in background:
            supervise(task, self._state)
        self._fatal_watch = asyncio.create_task(self._give_up_when_fatal(), name="fatal-watch")

    async def _stop(self, grace_s: float) -> None:
        self._state.stop()
        # At once, before the grace: a spot instance's notice may end in a kill before the grace does.
        await self._checkpoint_all()
        deadline = time.monotonic() + grace_s
        while len(self._attempts) and time.monotonic() < deadline and self._state.fatal is None:
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

    async def _give_up_when_fatal(self) -> None:
        """Once a fatal error is declared (engine dead or hung, a background task ended): hand the jobs
        back, then tell the process (`fatal_event`) to exit non-zero."""
        error = await self._state.wait_fatal()
        what = f"engine died ({error})" if isinstance(error, EngineDead) else str(error)
        log.error("%s; handing jobs back and stopping", what)
        try:
            await self._give_up(reason=what)
        finally:
            self.fatal_event.set()

    async def _give_up(self, *, reason: str) -> None:
        """Checkpoint every unfinished attempt at once, then hand the jobs back (the next attempts continue
        the traces); outcomes the writer holds are still committed if it lives."""
        await self._admission.quiesce()  # a claim in flight commits `running` jobs: they are handed back too
        await self._checkpoint_all()
        try:
            await self._outcomes.hand_back_all(reason=reason)
            await self._drain_writer()
        except Exception:  # bounded database retries ran out: the leases expire and the reconciler acts
            log.exception("could not hand the jobs back; their leases will expire")

    async def _checkpoint_all(self) -> None:
        """Checkpoint every attempt in flight whose trace grew, in one transaction."""
        if not self._checkpointer.enabled:
            return
        try:
            await self._checkpointer.checkpoint(everything=True)
        except Exception:  # the next attempts start from the last interval's checkpoints instead
            log.warning("could not checkpoint the attempts in flight", exc_info=True)

    async def _drain_writer(self) -> None:
        """Commit every outcome already handed to the writer; if the writer is dead, hand those jobs back."""
        if not self._writer_task.done():
            drained = asyncio.ensure_future(self._writer.drain())
            await asyncio.wait({drained, self._writer_task}, return_when=asyncio.FIRST_COMPLETED)
            drained.cancel()
        if self._writer_task.done():
            await self._outcomes.hand_back_all(reason="the outcome writer stopped", include_reported=True)
