"""Steering a run among the others of its queue: pause, resume, priority and weight.

A paused run's queued jobs are claimed by no worker (the claim checks it, schema.ledger.claims) and need
no claim tokens (the reconciler leaves them out of its demand); what is running finishes. A pause is
the user's (`vlmbatch pause`) or its circuit breaker's (schema/ledger/breaker.py): the reason says which.
`runs.held` is another thing: a Batch API batch still validating, released once, never by a resume.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.breaker import TRIPPED, breaker_state, reset
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.shares import rejoin
from vlmbatch.schema.ledger.tables import Run

PAUSED_BY_USER = "paused by `vlmbatch pause`"


@dataclass(frozen=True)
class RunControl:
    """A run's place among its queue's runs, and whether (since when, why) it is paused."""

    priority: int
    weight: int
    paused_at: datetime | None
    pause_reason: str | None
    # Times its circuit breaker tripped, over the run's life.
    breaker_trips: int

    @property
    def paused(self) -> bool:
        return self.paused_at is not None

    @property
    def tripped(self) -> bool:
        return bool(self.pause_reason and self.pause_reason.startswith(TRIPPED))


def run_control(session: Session, run: Run) -> RunControl:
    breaker = breaker_state(session, run.id)
    return RunControl(
        priority=run.priority,
        weight=run.weight,
        paused_at=run.paused_at,
        pause_reason=run.pause_reason,
        breaker_trips=breaker.trips if breaker is not None else 0,
    )


def run_paused(session: Session, *, run_id: int) -> bool:
    return session.scalar(select(Run.paused_at).where(Run.id == run_id)) is not None


def pause_run(session: Session, *, run_id: int, reason: str = PAUSED_BY_USER) -> bool:
    """Pause the run (in the caller's transaction); False when it was paused already (its first reason
    and time stay)."""
    result = session.execute(
        update(Run)
        .where(Run.id == run_id, Run.paused_at.is_(None))
        .values(paused_at=database_now(session), pause_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return bool(getattr(result, "rowcount", 0))


def resume_run(session: Session, *, run_id: int) -> int:
    """Resume the run and close its breaker (in the caller's transaction); return its queued jobs, for
    which the caller publishes claim tokens. Its share starts level with the active runs'."""
    reset(session, run_id=run_id)  # breaker row before runs row: the outcome writer's lock order
    session.execute(
        update(Run)
        .where(Run.id == run_id)
        .values(paused_at=None, pause_reason=None)
        .execution_options(synchronize_session=False)
    )
    rejoin(session, run_id=run_id)
    return read_counts(session, run_id).by_state[JobState.QUEUED.value]


def set_schedule(session: Session, *, run_id: int, priority: int | None = None, weight: int | None = None) -> None:
    """Change the run's priority and/or weight (in the caller's transaction); it rejoins its queue's share."""
    values: dict[str, int] = {}
    if priority is not None:
        values["priority"] = priority
    if weight is not None:
        values["weight"] = weight
    if values:
        session.execute(
            update(Run).where(Run.id == run_id).values(**values).execution_options(synchronize_session=False)
        )
        rejoin(session, run_id=run_id)
