"""Invariants of the ledger that tests check from the database alone (the chaos verdict among them)."""

from __future__ import annotations

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import TERMINAL_STATES, AttemptOutcome
from vlmbatch.schema.ledger.tables import Attempt, Job


def running_attempts_on_terminal_jobs(session: Session) -> int:
    """Attempts still `running` on a job that already ended: an attempt runs only while its job does."""
    return (
        session.scalar(
            select(func.count())
            .select_from(Attempt)
            .join(Job, Job.id == Attempt.job_id)
            .where(
                Attempt.outcome == AttemptOutcome.RUNNING.value,
                Job.state.in_([s.value for s in TERMINAL_STATES]),
            )
        )
        or 0
    )
