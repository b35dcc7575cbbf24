"""OpenAI's batch object of a batch row, and its completion window.

The status is derived from the row and the run's counters (O(1) per batch, however large the run):
`failed` (input refused), `validating` (no run yet), `in_progress`, `finalizing` (files being written),
`completed`; after a cancel `cancelling` then `cancelled`; past the deadline with work unfinished
`expired` (reading `finalizing` until its files are written)."""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from vlmbatch.producer.api.errors import ApiError
from vlmbatch.producer.api.files import epoch
from vlmbatch.producer.api.ids import batch_id, file_id
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.api_batches import BatchRow
from vlmbatch.schema.ledger.runs import RunView, find_run
from vlmbatch.schema.ledger.status import run_status

# "24h" is OpenAI's one window; more hours are accepted (a team's overnight-plus-weekend batch). Shorter
# ones are refused: a large batch would expire before its first job ran.
MIN_WINDOW_HOURS = 24
MAX_WINDOW_HOURS = 24 * 30
_WINDOW = re.compile(r"([1-9][0-9]{0,3})h")


def completion_window(value: Any) -> timedelta:
    """The length of a `completion_window` such as "24h"; ApiError 400 for anything else."""
    found = _WINDOW.fullmatch(value) if isinstance(value, str) else None
    hours = int(found.group(1)) if found else 0
    if not MIN_WINDOW_HOURS <= hours <= MAX_WINDOW_HOURS:
        raise ApiError(
            400,
            f"completion_window {value!r}: whole hours from {MIN_WINDOW_HOURS}h to {MAX_WINDOW_HOURS}h, such as 24h",
            param="completion_window",
        )
    return timedelta(hours=hours)


def batch_object(session: Session, row: BatchRow) -> dict[str, Any]:
    """The batch object of `row` as OpenAI's API returns it."""
    run = find_run(session, run_id=row.run_id) if row.run_id is not None else None
    # A run cancelled by expiry is no cancel of the batch; one cancelled by `vlmbatch cancel` is.
    cancelling_at = row.cancelling_at
    if cancelling_at is None and row.expired_at is None and run is not None:
        cancelling_at = run.cancelled_at
    total = completed = failed = 0
    unfinished = False
    if run is not None:
        report = run_status(session, run.id)
        counts = report.counts
        # Lines rejected at submit are requests of the batch that failed (its error file has them).
        total = report.total + report.rejected
        completed = counts[JobState.SUCCEEDED.value] + counts[JobState.TRUNCATED.value]
        failed = counts[JobState.FAILED.value] + counts[JobState.CANCELLED.value] + report.rejected
        unfinished = bool(counts[JobState.QUEUED.value] or counts[JobState.RUNNING.value])
    status = _status(row, run, cancelling_at=cancelling_at, unfinished=unfinished)
    finished = epoch(row.finished_at)
    return {
        "id": batch_id(row.id),
        "object": "batch",
        "endpoint": row.endpoint,
        "errors": row.errors,
        "input_file_id": file_id(row.input_file_id),
        "completion_window": row.completion_window,
        "status": status,
        "output_file_id": file_id(row.output_file_id) if row.output_file_id is not None else None,
        "error_file_id": file_id(row.error_file_id) if row.error_file_id is not None else None,
        "created_at": epoch(row.created_at),
        "in_progress_at": epoch(run.created_at) if run is not None else None,
        "expires_at": epoch(row.expires_at),
        "finalizing_at": epoch(row.finalizing_at),
        "completed_at": finished if status == "completed" else None,
        "failed_at": epoch(row.failed_at),
        "expired_at": epoch(row.expired_at),
        "cancelling_at": epoch(cancelling_at),
        "cancelled_at": finished if status == "cancelled" else None,
        "request_counts": {"total": total, "completed": completed, "failed": failed},
        "metadata": row.metadata,
    }


def _status(row: BatchRow, run: RunView | None, *, cancelling_at: object, unfinished: bool) -> str:
    if row.failed_at is not None:
        return "failed"
    if row.expired_at is not None:
        return "expired" if row.finished_at is not None else "finalizing"
    if cancelling_at is not None:
        return "cancelled" if row.finished_at is not None else "cancelling"
    if run is None:
        return "validating"
    if row.finished_at is not None:
        return "completed"
    return "in_progress" if unfinished else "finalizing"
