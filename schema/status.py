"""Progress of a run: counts per state and per error type, throughput and ETA."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.models import StatusReport
from vlmbatch.schema.states import JobState
from vlmbatch.schema.tables import Job, utcnow

# Throughput is measured over this trailing window: long enough to smooth bursts, short enough to react.
RATE_WINDOW = timedelta(minutes=5)


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
    counts = StatusReport.empty_counts()
    for state, n in session.execute(select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)):
        counts[state] = n
    errors = {
        error_type: n
        for error_type, n in session.execute(
            select(Job.error_type, func.count())
            .where(Job.run_id == run_id, Job.state == JobState.FAILED.value)
            .group_by(Job.error_type)
            .order_by(func.count().desc())
        )
        if error_type is not None
    }
    return StatusReport(run=run_id, total=sum(counts.values()), counts=counts, errors=errors)


def run_progress(session: Session, run_id: int) -> Progress:
    report = run_status(session, run_id)
    now = utcnow()
    since = now - RATE_WINDOW
    recent, first = session.execute(
        select(func.count(), func.min(Job.finished_at)).where(Job.run_id == run_id, Job.finished_at >= since)
    ).one()
    rate = 0.0
    if recent and first is not None:
        elapsed = max((now - first).total_seconds(), 1.0)
        rate = recent / elapsed
    remaining = report.counts[JobState.QUEUED.value] + report.counts[JobState.RUNNING.value]
    eta = remaining / rate if rate > 0 else None
    return Progress(report=report, jobs_per_second=rate, eta_seconds=eta if remaining else 0.0)
