"""Running claimed jobs: each attempt is a task of its own on the pipeline's loop, from its images (shared
between the attempts that use the same ones, loaded on the I/O threads) to its report, which goes to
the outcome writer. An engine that dies mid-attempt stops the worker (StopState); the attempt then
reports nothing and is handed back with the others."""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from functools import partial

from vlmbatch.media.local_roots import LocalRoots
from vlmbatch.schema.contracts.errors import EngineDead, InternalError, JobError
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.schema.ledger.outcomes import AttemptReport
from vlmbatch.worker.engines.base import Engine, TraceProgress
from vlmbatch.worker.pipeline.attempt import AttemptClock, RunContexts, failure_report, run_attempt
from vlmbatch.worker.pipeline.capacity import TimeShare
from vlmbatch.worker.pipeline.counters import Counters
from vlmbatch.worker.pipeline.inflight import Attempts, InFlight, StopState
from vlmbatch.worker.pipeline.inputs import ImageLoader, LoadedImage, SharedImages
from vlmbatch.worker.pipeline.writing import OutcomeWriter
from vlmbatch.worker.telemetry.log_format import log_context

log = logging.getLogger(__name__)


class AttemptRunner:
    def __init__(
        self,
        *,
        settings: Settings,
        engine: Engine,
        attempts: Attempts,
        state: StopState,
        runs: RunContexts,
        loader: ImageLoader,
        io: ThreadPoolExecutor,
        writer: OutcomeWriter,
        counters: Counters,
    ) -> None:
        self._settings = settings
        self._engine = engine
        self._attempts = attempts
        self._state = state
        self._runs = runs
        self._loader = loader
        self._io = io
        self._writer = writer
        self._counters = counters
        self._time_share = TimeShare()
        self._images = SharedImages(self._load_image)

    async def launch(self, job: ClaimedJob) -> None:
        """Start the attempt of a job just claimed."""
        self._counters.claimed += 1
        progress = TraceProgress() if self._settings.checkpoint_seconds > 0 else None
        entry = self._attempts.add(job, progress=progress, now=time.monotonic())
        entry.task = asyncio.create_task(self._run(entry))

    async def _run(self, entry: InFlight) -> None:
        job = entry.job
        # This task's log records (and its image loads') carry the job's ids.
        with log_context(run_id=job.run_id, job_id=job.job_id, attempt_id=job.attempt_id):
            report = await self._attempt(entry)
            if report is not None:
                log.debug("attempt %s %s %s", job.attempt_id, report.outcome.value, report.error_type or "")
        if report is not None:
            entry.reported = True
            await self._writer.put(report)

    async def _attempt(self, entry: InFlight) -> AttemptReport | None:
        """The attempt's report, or None when the engine died (the job is then handed back)."""
        job = entry.job
        clock = AttemptClock(queue_wait_s=(job.claimed_at - job.queued_at).total_seconds())
        uris = set(job.images)
        self._images.hold(uris)
        try:
            run = await self._runs.get(job.run_id)
            return await run_attempt(
                job,
                request_id=entry.request_id,
                run=run,
                clock=clock,
                load=partial(self._load_shared, roots=run.local_roots),
                engine=self._engine,
                time_share=self._time_share,
                tensor_parallel_size=self._settings.tensor_parallel_size,
                worker_max_tiles=self._settings.max_tiles,
                progress=entry.progress,
            )
        except asyncio.CancelledError:
            raise
        except EngineDead as exc:
            self._state.declare_fatal(exc)
            return None
        except Exception as exc:
            if self._state.fatal is not None:
                return None  # the engine's death surfaced as another error: handed back
            error = exc if isinstance(exc, JobError) else InternalError(f"{type(exc).__name__}: {exc}")
            if not isinstance(exc, JobError):
                log.exception("job %s attempt %s failed unexpectedly", job.job_id, job.attempt_id)
            known = self._runs.known(job.run_id)
            return failure_report(job, error, known.settings if known else None, clock.timings())
        finally:
            self._images.release(uris)

    async def _load_shared(self, uri: str, *, roots: LocalRoots) -> LoadedImage:
        # Checked per job, before the shared load: one run's roots must not let another run's job in.
        roots.check(uri)
        return await self._images.load(uri)

    async def _load_image(self, uri: str) -> LoadedImage:
        context = contextvars.copy_context()  # the I/O thread logs with this job's ids
        return await asyncio.get_running_loop().run_in_executor(self._io, context.run, self._loader.load, uri)
