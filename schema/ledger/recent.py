"""A run's latest finishes, for its page's charts: output tokens over time and trace lengths.

Read as the status rate is (schema/ledger/status.py): the latest RECENT_SAMPLE finished jobs on
ix_jobs_run_finished, each with its current attempt, so a page costs the same at 10^3 or 10^7 jobs.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from vlmbatch.schema.ledger.tables import Attempt, Job

RECENT_SAMPLE = 2000


@dataclass(frozen=True)
class Finish:
    finished_at: datetime
    completion_tokens: int
    reasoning_tokens: int | None


def recent_finishes(session: Session, run_id: int, *, limit: int = RECENT_SAMPLE) -> list[Finish]:
    """The run's latest `limit` finished jobs (oldest first) with their current attempt's token counts."""
    latest = (
        select(Job.finished_at, Job.current_attempt_id)
        .where(Job.run_id == run_id, Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(limit)
        .subquery()
    )
    # Newest first, as the index walk reads them (no Sort node over the joined rows); reversed here.
    rows = session.execute(
        select(latest.c.finished_at, Attempt.completion_tokens, Attempt.reasoning_tokens)
        .join(Attempt, Attempt.id == latest.c.current_attempt_id)
        .order_by(latest.c.finished_at.desc())
    ).all()
    return [Finish(at, tokens or 0, reasoning) for at, tokens, reasoning in reversed(rows)]
