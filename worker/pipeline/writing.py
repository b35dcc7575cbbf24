"""Committing attempt outcomes: reports batched from the queue the attempts fill, a batch in one
transaction, and one refused outcome never blocks the rest."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Sequence

from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.breaker import BreakerPolicy, Trip
from vlmbatch.schema.ledger.database import transaction
from vlmbatch.schema.ledger.outcomes import AttemptReport, record_outcomes

log = logging.getLogger(__name__)

# Outcomes committed per database transaction, and how long the writer waits to fill a batch.
WRITE_BATCH = 256
WRITE_LINGER_S = 0.02


class OutcomeWriter:
    """Collects attempt reports and hands them to `commit` in batches of up to WRITE_BATCH, waiting at most
    WRITE_LINGER_S for a batch to fill (a lone report is not held back)."""

    def __init__(
        self,
        *,
        commit: Callable[[list[AttemptReport]], Awaitable[None]],
        commit_failed: Callable[[list[AttemptReport]], Awaitable[None]],
    ) -> None:
        self._commit = commit
        self._commit_failed = commit_failed
        self._reports: asyncio.Queue[AttemptReport] = asyncio.Queue()

    async def put(self, report: AttemptReport) -> None:
        await self._reports.put(report)

    async def run(self) -> None:
        while True:
            batch = await self._next_batch()
            try:
                await self._commit(batch)
            except Exception:
                # Never let the writer die: these jobs keep their leases until they expire, and the
                # reconciler gives them to another attempt.
                log.exception("could not write %d outcomes; their jobs will be retried", len(batch))
                await self._commit_failed(batch)
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


def write_reports_safely(
    sessions: sessionmaker[Session],
    reports: Sequence[AttemptReport],
    *,
    breaker: BreakerPolicy | None = None,
    trips: list[Trip] | None = None,
) -> list[AttemptReport]:
    """Commit `reports` in one transaction; return those written (the others were fenced off). The runs
    whose circuit breaker they trip (`breaker`: its policy) are added to `trips`.

    A report the database refuses for its content (not for a lost connection, which the caller retries)
    must not block the others: the batch is then written report by report, and a refused one is stored
    as an `internal` failure of its attempt, with the reason, instead of its samples."""
    found: list[Trip] = []
    try:
        with transaction(sessions) as session:
            written = record_outcomes(session, reports, breaker=breaker, trips=found)
        if trips is not None:
            trips.extend(found)  # only once committed
        return written
    except (OperationalError, InterfaceError):
        raise
    except DBAPIError:
        if len(reports) == 1:
            return _write_as_failure(sessions, reports[0], breaker=breaker, trips=trips)
    written = []
    for report in reports:
        written.extend(write_reports_safely(sessions, [report], breaker=breaker, trips=trips))
    return written


def _write_as_failure(
    sessions: sessionmaker[Session],
    report: AttemptReport,
    *,
    breaker: BreakerPolicy | None,
    trips: list[Trip] | None,
) -> list[AttemptReport]:
    try:
        with transaction(sessions) as session:
            record_outcomes(session, [report], breaker=breaker)
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
            return record_outcomes(session, [failure], breaker=breaker, trips=trips)
    return [report]
