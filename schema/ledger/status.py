"""Progress of a run: counts per state and per error type, throughput and ETA."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

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


@dataclass(frozen=True)
class Progress:
    report: StatusReport
    jobs_per_second: float
    eta_seconds: float | None

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
    recent, first = session.execute(select(func.count(), func.min(latest.c.finished_at))).one()
    rate = 0.0
    if recent and first is not None:
        # Under a full sample the window is short already: no floor that would cap the rate.
        floor = 1.0 if recent < RATE_SAMPLE else 1e-3
        rate = recent / max((now - first).total_seconds(), floor)
    remaining = report.counts[JobState.QUEUED.value] + report.counts[JobState.RUNNING.value]
    eta = remaining / rate if rate > 0 else None
    return Progress(report=report, jobs_per_second=rate, eta_seconds=eta if remaining else 0.0)
