"""A run's circuit breaker: a run whose attempts keep failing for a reason that is not one row's pauses
itself, with the reason and its first error, instead of draining its queue into errors overnight.

What counts (`classify`): failures of the store (storage.denied: credentials; storage.transient: network),
of the engine (engine.dead, once per death and run however many jobs it handed back; engine.oom; an
engine that does not start) and internal errors count towards both rules; input.unsupported and
prompt.too_long (one row's, unless every job has them: a wrong model or template) count towards the streak
only; every other outcome, per-row errors included (input.unreadable, input.too_large, input.not_found of
a bad URL...), breaks the streak and is a good attempt in the window. A hand-back without an error (the
worker stopped) and a cancel count for nothing.

The rules (`BreakerPolicy`, settings `VLMBATCH_BREAKER_*`): `streak` such failures in a row, or at least
`min_failures` of them making `ratio` of the last `window` attempts (a sliding window kept as two tumbling
halves). Each batch of outcomes reads one `run_breakers` row per run it touches, and writes it only when
something failed lately: O(1) per attempt, no scan. The window starts at a run's first failure.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import Enum

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.dialect import insert_for, lock_for_update
from vlmbatch.schema.ledger.shares import active_runs
from vlmbatch.schema.ledger.tables import Run, RunBreaker

SYSTEMIC = frozenset(
    {
        ErrorType.STORAGE_DENIED,
        ErrorType.STORAGE_TRANSIENT,
        ErrorType.ENGINE_DEAD,
        ErrorType.ENGINE_OOM,
        ErrorType.INTERNAL,
    }
)
# One row's errors, unless every job has them.
SYSTEMATIC_WHEN_EVERY_JOB = frozenset({ErrorType.INPUT_UNSUPPORTED, ErrorType.PROMPT_TOO_LONG})
# The pause reason of a tripped breaker starts with this (status and the run page show it whole).
TRIPPED = "circuit breaker"
ENGINE_START = "engine.start"


@dataclass(frozen=True)
class BreakerPolicy:
    """When a run's breaker trips. The defaults: 50 failures in a row, or 20% of the last 500 attempts
    with at least 50 failures. `enabled=False` never trips (counts are still kept)."""

    streak: int = 50
    window: int = 500
    ratio: float = 0.2
    min_failures: int = 50
    enabled: bool = True


class Verdict(Enum):
    NEUTRAL = "neutral"
    GOOD = "good"
    STREAK = "streak"  # towards the streak only
    FAILURE = "failure"  # towards the streak and the window


@dataclass(frozen=True)
class Event:
    """One attempt's outcome, as the breaker of its run sees it."""

    run_id: int
    verdict: Verdict
    error_type: str | None = None
    message: str | None = None


@dataclass(frozen=True)
class Trip:
    run_id: int
    reason: str


def classify(outcome: AttemptOutcome, error_type: ErrorType | None) -> Verdict:
    """How an attempt's outcome counts."""
    if outcome is AttemptOutcome.CANCELLED or (error_type is None and outcome is AttemptOutcome.ABANDONED):
        return Verdict.NEUTRAL
    if error_type in SYSTEMIC:
        return Verdict.FAILURE
    if error_type in SYSTEMATIC_WHEN_EVERY_JOB:
        return Verdict.STREAK
    return Verdict.GOOD


def record_events(session: Session, events: Sequence[Event], *, policy: BreakerPolicy, now: datetime) -> list[Trip]:
    """Count `events` into their runs' breakers (in the caller's transaction, after its job and counter
    writes); pause the runs whose breaker trips, and return those trips."""
    by_run: dict[int, list[Event]] = {}
    dead: set[int] = set()
    for event in events:
        if event.verdict is Verdict.NEUTRAL:
            continue
        if event.error_type == ErrorType.ENGINE_DEAD.value:
            # One engine's death hands all its jobs back in one batch: one failure, not hundreds (a single
            # OOM on one worker of a fleet must not pause the run; a crash loop does, death after death).
            if event.run_id in dead:
                continue
            dead.add(event.run_id)
        by_run.setdefault(event.run_id, []).append(event)
    if not by_run:
        return []
    rows = {row.run_id: row for row in session.scalars(select(RunBreaker).where(RunBreaker.run_id.in_(sorted(by_run))))}
    # A clean breaker seeing only good attempts stays as it is: no write on the common path.
    touched = sorted(
        run_id
        for run_id, run_events in by_run.items()
        if any(e.verdict is not Verdict.GOOD for e in run_events) or _dirty(rows.get(run_id))
    )
    if not touched:
        return []
    _ensure_rows(session, touched)
    locked = select(RunBreaker).where(RunBreaker.run_id.in_(touched)).order_by(RunBreaker.run_id)
    locked = lock_for_update(locked, session)
    trips = []
    for row in session.scalars(locked.execution_options(populate_existing=True)):
        rule = _count(row, by_run[row.run_id], policy)
        if rule is not None and policy.enabled and row.tripped_at is None:
            trips.append(_trip(session, row, rule, now))
    session.flush()
    return trips


def _dirty(row: RunBreaker | None) -> bool:
    return row is not None and bool(row.streak or row.failures or row.previous_failures or row.first_error)


def _ensure_rows(session: Session, run_ids: Iterable[int]) -> None:
    insert = insert_for(session, RunBreaker)
    values = [
        {
            "run_id": r,
            "streak": 0,
            "attempts": 0,
            "failures": 0,
            "previous_attempts": 0,
            "previous_failures": 0,
            "trips": 0,
        }
        for r in run_ids
    ]
    session.execute(insert.values(values).on_conflict_do_nothing(index_elements=["run_id"]))


def _count(row: RunBreaker, events: Sequence[Event], policy: BreakerPolicy) -> str | None:
    """Add the events to the row; the rule that now says trip, if one does."""
    for event in events:
        if event.verdict is Verdict.GOOD:
            row.streak = 0
        else:
            row.streak += 1
            if row.first_error is None:
                row.first_error_type = event.error_type
                row.first_error = (event.message or "")[:2000]
        row.attempts += 1
        row.failures += event.verdict is Verdict.FAILURE
        if row.attempts >= policy.window:  # the current half is full: it becomes the previous one
            row.previous_attempts, row.previous_failures = row.attempts, row.failures
            row.attempts = row.failures = 0
    if not (row.streak or row.failures or row.previous_failures):
        row.first_error_type = row.first_error = None  # healthy again: the next failure is the first
    if row.streak >= policy.streak:
        return f"{row.streak} failures in a row"
    kept = 1.0 - row.attempts / policy.window  # how much of the previous half is still in the window
    attempts = row.attempts + row.previous_attempts * kept
    failures = row.failures + row.previous_failures * kept
    if failures >= policy.min_failures and failures >= policy.ratio * attempts:
        return f"{failures:.0f} failures in the last {attempts:.0f} attempts"
    return None


def _trip(session: Session, row: RunBreaker, rule: str, now: datetime) -> Trip:
    row.tripped_at = now
    row.trips += 1
    what = f"{row.first_error_type}: {row.first_error}" if row.first_error_type else (row.first_error or "")
    reason = f"{TRIPPED}: {rule}, not about one row's input; first error {what}"
    # After the breaker row: the one order a runs row is locked in on the outcome path.
    session.execute(
        update(Run)
        .where(Run.id == row.run_id, Run.paused_at.is_(None))
        .values(paused_at=now, pause_reason=reason)
        .execution_options(synchronize_session=False)
    )
    return Trip(run_id=row.run_id, reason=reason)


def reset(session: Session, *, run_id: int) -> None:
    """Close the run's breaker again (a resume): its counts start over, its trips stay counted."""
    session.execute(
        update(RunBreaker)
        .where(RunBreaker.run_id == run_id)
        .values(
            streak=0,
            attempts=0,
            failures=0,
            previous_attempts=0,
            previous_failures=0,
            first_error_type=None,
            first_error=None,
            tripped_at=None,
        )
        .execution_options(synchronize_session=False)
    )


def breaker_state(session: Session, run_id: int) -> RunBreaker | None:
    return session.get(RunBreaker, run_id)


def engine_failed_to_start(
    session: Session, *, queue: str, model: str, message: str, policy: BreakerPolicy
) -> list[Trip]:
    """A worker's engine did not start (a model that does not load): one failure for the breaker of each
    run it would have served (its queue's active runs of its model). Returns the runs it trips."""
    runs = active_runs(session, queue=queue, model=model)
    events = [Event(r.run_id, Verdict.FAILURE, ENGINE_START, message) for r in runs]
    return record_events(session, events, policy=policy, now=database_now(session))
