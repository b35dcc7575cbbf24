"""What becomes of an attempt once it ends: its report committed (batched from the queue the attempts
fill, a batch in one transaction, one refused outcome never blocking the rest), or, when the worker gives
up on it, its job handed back. `Outcomes` owns both: it takes the attempt out of the registry, gives its
slot back, and publishes claim tokens for the jobs that went back to the queue."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from functools import partial

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.database import transaction
from vlmbatch.schema.ledger.outcomes import AttemptReport, record_outcomes
from vlmbatch.worker.engines.base import Engine
from vlmbatch.worker.pipeline.attempt import RunContexts
from vlmbatch.worker.pipeline.capacity import Capacity
from vlmbatch.worker.pipeline.counters import Counters
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inflight import Attempts, StopState
from vlmbatch.worker.telemetry.metrics import WorkerMetrics
from vlmbatch.worker.transport.publisher import Publisher

log = logging.getLogger(__name__)

# Outcomes committed per database transaction, and how long the writer waits to fill a batch.
WRITE_BATCH = 256
WRITE_LINGER_S = 0.02


class Outcomes:
    """Commits reports and hands jobs back, keeping the registry, the capacity and the queue in step."""

    def __init__(
        self,
        *,
        db: DatabasePool,
        engine: Engine,
        attempts: Attempts,
        runs: RunContexts,
        capacity: Capacity,
        publisher: Publisher,
        state: StopState,
        counters: Counters,
        metrics: WorkerMetrics,
    ) -> None:
        self._db = db
        self._engine = engine
        self._attempts = attempts
        self._runs = runs
        self._capacity = capacity
        self._publisher = publisher
        self._state = state
        self._counters = counters
        self._metrics = metrics

    async def commit(self, batch: list[AttemptReport]) -> None:
        """Write a batch of reports (fenced: a superseded attempt's report changes nothing), free their
        slots, and publish tokens for the jobs they put back in the queue."""
        written = await self._db.blocking(partial(write_reports_safely, self._db.sessions, batch), retry=True)
        written_ids = {r.attempt_id for r in written}
        requeued: dict[tuple[str, float | None], list[int]] = {}
        for report in batch:
            entry = self._attempts.pop(report.attempt_id)
            if report.attempt_id not in written_ids:
                self._counters.fenced_off += 1
                self._metrics.fenced_writes.inc()
                continue
            self._counters.record(report, self._metrics)
            run = self._runs.known(entry.job.run_id) if entry is not None else None
            if run is not None and (report.retry_after_s is not None or report.resample):
                # Back in the queue: a transient retry after its backoff, another sampling round at once.
                requeued.setdefault((run.queue, report.retry_after_s), []).append(report.job_id)
        await self._capacity.give(len(batch))
        for (queue, delay), job_ids in requeued.items():
            await self._publish(queue, len(job_ids), countdown=delay)

    async def drop_uncommitted(self, batch: list[AttemptReport]) -> None:
        """A batch the database would not take: its jobs keep their leases until they expire, and the
        reconciler gives them to another attempt."""
        for report in batch:
            self._attempts.pop(report.attempt_id)
        await self._capacity.give(len(batch))

    async def hand_back_all(self, *, reason: str, include_reported: bool = False) -> None:
        """Return every unfinished job to the queue (or fail it once its attempts are used up); with
        `include_reported`, also those whose outcome the (dead) writer never committed."""
        pending = self._attempts.unfinished(include_reported=include_reported)
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
            run = await self._runs.get(job.run_id)
            exhausted = job.attempts_used >= run.settings.max_attempts
            error = ErrorType.ENGINE_DEAD if self._state.engine_died else None
            reports.append(
                AttemptReport(
                    job_id=job.job_id,
                    attempt_id=job.attempt_id,
                    outcome=AttemptOutcome.FAILED if exhausted else AttemptOutcome.ABANDONED,
                    error_type=error or (ErrorType.INTERNAL if exhausted else None),
                    error_message=reason,
                )
            )
        written = await self._db.blocking(partial(write_reports_safely, self._db.sessions, reports), retry=True)
        self._counters.handed_back += len(written)
        by_queue: dict[str, list[int]] = {}
        for report in written:
            handed = self._attempts.pop(report.attempt_id)
            if report.outcome is AttemptOutcome.ABANDONED and handed is not None:
                run = await self._runs.get(handed.job.run_id)
                by_queue.setdefault(run.queue, []).append(report.job_id)
        for queue, job_ids in by_queue.items():
            await self._publish(queue, len(job_ids))

    async def _publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> None:
        try:
            await self._db.blocking(partial(self._publisher.publish, queue, jobs, countdown=countdown))
        except Exception:  # the reconciler publishes tokens for queued jobs that have none
            log.exception("could not publish tokens for %d requeued jobs; the reconciler will", jobs)


class OutcomeWriter:
    """Collects attempt reports and hands them to `Outcomes.commit` in batches of up to WRITE_BATCH, waiting
    at most WRITE_LINGER_S for a batch to fill (a lone report is not held back)."""

    def __init__(self, outcomes: Outcomes) -> None:
        self._outcomes = outcomes
        self._reports: asyncio.Queue[AttemptReport] = asyncio.Queue()

    async def put(self, report: AttemptReport) -> None:
        await self._reports.put(report)

    async def run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._outcomes.commit(batch)
            except Exception:
                # Never let the writer die: these jobs keep their leases until they expire, and the
                # reconciler gives them to another attempt.
                log.exception("could not write %d outcomes; their jobs will be retried", len(batch))
                await self._outcomes.drop_uncommitted(batch)
            finally:
                for _ in batch:
                    self._reports.task_done()

    @property
    def pending(self) -> int:
        """Reports put but not yet committed (or given up on)."""
        return self._reports.qsize()

    async def drain(self) -> None:
        """Return once every report put so far is committed or given up on (a stopping worker must not
        drop finished generations). Only while `run` is running: the caller watches that task too."""
        await self._reports.join()

    async def _next_batch(self) -> list[AttemptReport]:
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
        return batch


def write_reports_safely(sessions: sessionmaker[Session], reports: Sequence[AttemptReport]) -> list[AttemptReport]:
    """Commit `reports` in one transaction; return those written (the others were fenced off).

    A report the database refuses for its content (not for a lost connection, which the caller retries)
    must not block the others: the batch is then written report by report, and a refused one is stored
    as an `internal` failure of its attempt, with the reason, instead of its samples."""
    try:
        with transaction(sessions) as session:
            return record_outcomes(session, reports)
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError:
        if len(reports) == 1:
            return _write_as_failure(sessions, reports[0])
    written: list[AttemptReport] = []
    for report in reports:
        written.extend(write_reports_safely(sessions, [report]))
    return written


def _write_as_failure(sessions: sessionmaker[Session], report: AttemptReport) -> list[AttemptReport]:
    try:
        with transaction(sessions) as session:
            record_outcomes(session, [report])
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError as exc:
        log.error("the database refused the outcome of attempt %s: %s", report.attempt_id, exc.orig)
        failure = AttemptReport(
            job_id=report.job_id,
            attempt_id=report.attempt_id,
            outcome=AttemptOutcome.FAILED,
            error_type=ErrorType.INTERNAL,
            error_message=f"the result could not be stored: {type(exc.orig).__name__}: {exc.orig}"[:2000],
            prompt_tokens=report.prompt_tokens,
            timings=report.timings,
        )
        with transaction(sessions) as session:
            return record_outcomes(session, [failure])
    return [report]
