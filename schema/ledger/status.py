"""Progress of a run: counts per state and per error type, throughput and ETA."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.models import StatusReport
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.tables import Job, Run

# Throughput is measured over this trailing window: long enough to smooth bursts, short enough to react.
RATE_WINDOW = timedelta(minutes=5)
# Finishes a rate is measured on at most, however fast the fleet.
RATE_SAMPLE = 2000
# No ETA once nothing has finished for this long: a rate of old finishes would promise an end that recedes.
STALLED_AFTER = timedelta(seconds=60)


@dataclass(frozen=True)
class Progress:
    report: StatusReport
    jobs_per_second: float
    eta_seconds: float | None
    # Seconds from the run's creation to its last finish, once every job is done (else None).
    duration_seconds: float | None = None

    @property
    def mean_jobs_per_second(self) -> float | None:
        """A finished run's jobs over its duration."""
        if self.duration_seconds is None:
            return None
        return self.done / max(self.duration_seconds, 1e-3)

    @property
    def done(self) -> int:
        counts = self.report.counts
        return sum(counts[s.value] for s in JobState if s.terminal)

    @property
    def finished(self) -> bool:
        return self.done == self.report.total


def run_status(session: Session, run_id: int) -> StatusReport:
    """Counts per state and per error type, read from the run's counters (schema.ledger.counters), not the jobs."""
    counts = StatusReport.empty_counts()
    kept = read_counts(session, run_id)
    counts.update(kept.by_state)
    rejected = session.scalar(select(Run.rejected).where(Run.id == run_id)) or 0
    return StatusReport(run=run_id, total=kept.total, counts=counts, errors=kept.errors, rejected=rejected)


def run_progress(session: Session, run_id: int) -> Progress:
    report = run_status(session, run_id)
    now = database_now(session)
    since = now - RATE_WINDOW
    # The latest RATE_SAMPLE finishes at most (read backwards on ix_jobs_run_finished): a fleet finishing
    # thousands of jobs a second would otherwise make every status call count millions of rows.
    latest = (
        select(Job.finished_at)
        .where(Job.run_id == run_id, Job.finished_at >= since)
        .order_by(Job.finished_at.desc())
        .limit(RATE_SAMPLE)
        .subquery()
    )
    recent, first, last = session.execute(
        select(func.count(), func.min(latest.c.finished_at), func.max(latest.c.finished_at))
    ).one()
    rate = 0.0
    if recent and first is not None:
        # Under a full sample the window is short already: no floor that would cap the rate.
        floor = 1.0 if recent < RATE_SAMPLE else 1e-3
        rate = recent / max((now - first).total_seconds(), floor)
    remaining = report.counts[JobState.QUEUED.value] + report.counts[JobState.RUNNING.value]
    moving = rate > 0 and last is not None and now - _aware(last, now) < STALLED_AFTER
    eta = remaining / rate if moving else None
    if remaining:
        return Progress(report=report, jobs_per_second=rate, eta_seconds=eta)
    return Progress(report=report, jobs_per_second=rate, eta_seconds=0.0, duration_seconds=_duration(session, run_id))


def _aware(moment: datetime, like: datetime) -> datetime:
    # SQLite hands back naive datetimes (UTC by the ledger's convention).
    return moment.replace(tzinfo=like.tzinfo) if moment.tzinfo is None else moment


def _duration(session: Session, run_id: int) -> float | None:
    """From the run's creation to its last finish (ix_jobs_run_finished: one index probe)."""
    created = session.scalar(select(Run.created_at).where(Run.id == run_id))
    last = session.scalar(select(func.max(Job.finished_at)).where(Job.run_id == run_id, Job.finished_at.is_not(None)))
    if created is None or last is None:
        return None
    return max((_aware(last, created) - _aware(created, last)).total_seconds(), 0.0)


@dataclass(frozen=True)
class RunListing:
    """A line of `vlmbatch status` without a run: what the run is."""

    run_id: int
    name: str
    created_at: datetime
    model: str
    question: str | None


def list_runs(session: Session) -> list[RunListing]:
    """Every run, oldest first, with its first job's question (one index probe per run)."""
    first_question = (
        select(Job.question).where(Job.run_id == Run.id).order_by(Job.id).limit(1).correlate(Run).scalar_subquery()
    )
    rows = session.execute(select(Run.id, Run.name, Run.created_at, Run.model, first_question).order_by(Run.id))
    return [RunListing(*row) for row in rows]
