"""The Batch API's batch rows (producer/api/batches.py drives them): created, read, and moved through
their lifecycle by conditional updates, so that of a cancel, an expiry, a failure and the finish that race
for an open batch exactly one wins."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import ColumnElement, CursorResult, select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.resubmit import cancel_run
from vlmbatch.schema.ledger.runs import release_run
from vlmbatch.schema.ledger.tables import ApiBatch, Run


@dataclass(frozen=True)
class BatchRow:
    """A batch as the ledger holds it: its run once its submit was accepted, its files once written, and
    the moments of its lifecycle (OpenAI's batch object shows them)."""

    id: int
    run_id: int | None
    input_file_id: int
    endpoint: str
    completion_window: str
    metadata: dict[str, Any] | None
    errors: dict[str, Any] | None
    output_file_id: int | None
    error_file_id: int | None
    created_at: datetime
    expires_at: datetime | None
    failed_at: datetime | None
    finalizing_at: datetime | None
    finished_at: datetime | None
    expired_at: datetime | None
    cancelling_at: datetime | None

    @property
    def is_open(self) -> bool:
        """Not cancelled, expired, failed or finished."""
        return (
            self.cancelling_at is None
            and self.expired_at is None
            and self.failed_at is None
            and self.finished_at is None
        )

    @classmethod
    def from_row(cls, row: ApiBatch) -> BatchRow:
        return cls(
            id=row.id,
            run_id=row.run_id,
            input_file_id=row.input_file_id,
            endpoint=row.endpoint,
            completion_window=row.completion_window,
            metadata=row.metadata_,
            errors=row.errors,
            output_file_id=row.output_file_id,
            error_file_id=row.error_file_id,
            created_at=row.created_at,
            expires_at=row.expires_at,
            failed_at=row.failed_at,
            finalizing_at=row.finalizing_at,
            finished_at=row.finished_at,
            expired_at=row.expired_at,
            cancelling_at=row.cancelling_at,
        )


def create_batch(
    session: Session,
    *,
    input_file_id: int,
    endpoint: str,
    completion_window: str,
    metadata: dict[str, Any] | None,
    window: timedelta,
) -> int:
    """Record a new batch of the file `input_file_id`, due `window` from now (the database's clock); its id."""
    now = database_now(session)
    row = ApiBatch(
        input_file_id=input_file_id,
        endpoint=endpoint,
        completion_window=completion_window,
        metadata_=metadata,
        created_at=now,
        expires_at=now + window,
    )
    session.add(row)
    session.flush()
    return row.id


def get_batch(session: Session, *, batch_id: int) -> BatchRow | None:
    """The batch `batch_id`; None when there is none."""
    row = session.get(ApiBatch, batch_id)
    return None if row is None else BatchRow.from_row(row)


def batch_ids(session: Session, *, before: int | None, limit: int) -> list[int]:
    """Up to `limit` batch ids, newest first (below `before`, when given)."""
    query = select(ApiBatch.id).order_by(ApiBatch.id.desc()).limit(limit)
    if before is not None:
        query = query.where(ApiBatch.id < before)
    return list(session.scalars(query))


def due_batch_ids(session: Session) -> list[int]:
    """The open batches whose deadline has passed."""
    return list(session.scalars(select(ApiBatch.id).where(_open(), ApiBatch.expires_at <= database_now(session))))


def cancel_batch(session: Session, *, batch_id: int) -> None:
    """Mark an open batch as cancelling and cancel its run's unfinished jobs, if it has a run (one
    accepted after the mark cancels its jobs itself: `accept_batch`)."""
    session.execute(
        update(ApiBatch).where(_open(), ApiBatch.id == batch_id).values(cancelling_at=database_now(session))
    )
    # Read after the mark: a submit that was accepted first has set the run (it publishes it);
    # one accepted after sees the mark and cancels its jobs itself.
    row = session.get(ApiBatch, batch_id)
    if row is not None and row.run_id is not None and row.expired_at is None:
        cancel_run(session, run_id=row.run_id)


def expire_batch(session: Session, *, batch_id: int, now: datetime) -> bool:
    """Mark the batch expired at `now` and cancel its run's unfinished jobs, if it is still open; whether
    it was. (Without a run, the submit under way cancels what it inserts: `accept_batch`.)"""
    marked = session.execute(update(ApiBatch).where(_open(), ApiBatch.id == batch_id).values(expired_at=now))
    if _rowcount(marked) != 1:
        return False  # cancelled, failed or finished meanwhile
    run_id = session.scalar(select(ApiBatch.run_id).where(ApiBatch.id == batch_id))
    if run_id is not None:
        cancel_run(session, run_id=run_id)
    return True


def fail_batch(session: Session, *, batch_id: int, errors: list[dict[str, Any]]) -> None:
    """End the batch `failed`, with OpenAI's `errors` list."""
    row = session.get(ApiBatch, batch_id)
    assert row is not None
    row.errors = {"object": "list", "data": errors}
    row.failed_at = database_now(session)


def accept_batch(session: Session, *, batch_id: int, run_id: int) -> bool:
    """Give the batch its run and release it, unless the batch was cancelled or expired while validating;
    then (in the same transaction, so no message can go out in between) every job of the run is cancelled.
    Whether it was accepted."""
    accepted = session.execute(
        update(ApiBatch)
        .where(ApiBatch.id == batch_id, ApiBatch.cancelling_at.is_(None), ApiBatch.expired_at.is_(None))
        .values(run_id=run_id)
    )
    if _rowcount(accepted) == 1:
        release_run(session, run_id=run_id)
        return True
    cancel_run(session, run_id=run_id)
    session.execute(update(ApiBatch).where(ApiBatch.id == batch_id).values(run_id=run_id))
    return False


def end_unaccepted_batch(session: Session, *, batch_id: int, run_name: str) -> None:
    """End a batch cancelled or expired before its submit was accepted: with the run named `run_name` that
    a submit cut short left, its jobs cancelled, or as it is (finished, with no files)."""
    row = session.get(ApiBatch, batch_id)
    assert row is not None
    run = session.scalar(select(Run).where(Run.name == run_name))
    if run is not None:
        cancel_run(session, run_id=run.id)
        row.run_id = run.id
    else:
        row.finished_at = database_now(session)


def mark_finalizing(session: Session, *, batch_id: int) -> None:
    """Note that the batch's output files are being written."""
    session.execute(update(ApiBatch).where(ApiBatch.id == batch_id).values(finalizing_at=database_now(session)))


def finish_batch(session: Session, *, batch_id: int, output_file_id: int | None, error_file_id: int | None) -> None:
    """Give the batch its output and error files and finish it, unless it finished already."""
    session.execute(
        update(ApiBatch)
        .where(ApiBatch.id == batch_id, ApiBatch.finished_at.is_(None))
        .values(output_file_id=output_file_id, error_file_id=error_file_id, finished_at=database_now(session))
    )


def _open() -> ColumnElement[bool]:
    """Batches still open: not cancelled, expired, failed or finished."""
    return (
        ApiBatch.cancelling_at.is_(None)
        & ApiBatch.expired_at.is_(None)
        & ApiBatch.failed_at.is_(None)
        & ApiBatch.finished_at.is_(None)
    )


def _rowcount(result: Any) -> int:
    assert isinstance(result, CursorResult)
    return int(result.rowcount)
