"""The reconciler: puts back to work what a fault left behind. Run periodically by every worker and on
demand by `vlmbatch reconcile`.

1. Jobs whose lease expired (their worker died or froze) go back to the queue, or fail for good once they
   used their attempts (schema.reconcile).
2. Jobs `queued` in the database with no message in the broker (Redis lost them, or the producer died
   between commit and publish) are published again. A duplicate message is harmless: claims are fenced.

What a pass costs. Step 1 reads only running jobs (ix_jobs_running_attempt). Step 2 looks only at runs
whose counters show queued jobs and whose last submit published more than the grace time ago (a long
submit publishes its jobs well after inserting them: `runs.published_at`), pages their queued jobs on
ix_jobs_run_state_id, and counts as present the messages waiting in the queue and those delivered to a
live worker (workers stamp what they hold: broker_scan.touch_unacked). It still reads every waiting
message of those queues: O(queue), not O(lost work).

The way to O(lost work), not built yet: messages become claim tokens ("claim up to N queued jobs of
queue Q") and workers claim the oldest queued jobs from the ledger with FOR UPDATE SKIP LOCKED on
ix_jobs_run_state_id; a lost or duplicated token then loses or duplicates no work, and the reconciler
compares two counts (queued jobs from the run counters, against tokens waiting (LLEN) plus in flight
(the unacknowledged hash)) and publishes the deficit. The queue length still tracks the work remaining
(KEDA), Flower still shows tasks. It changes what every message means (claims, retries with a delay,
resubmission, the message security checks and the chaos suite all follow), so it lands on its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.clock import database_now
from vlmbatch.schema.keyset import Keyset
from vlmbatch.schema.reconcile import requeue_expired_leases
from vlmbatch.schema.states import JobState
from vlmbatch.schema.tables import Job, Run, RunCount
from vlmbatch.worker.transport.broker_scan import job_ids_in_broker
from vlmbatch.worker.transport.publisher import Publisher

# A job queued more recently than this may have its message in flight between commit and publish.
DEFAULT_GRACE_SECONDS = 30.0
# A message delivered but unacknowledged for longer than this counts as lost with its dead worker.
DEFAULT_UNACKED_STALE_SECONDS = 300.0
_PAGE = 10_000


@dataclass(frozen=True)
class ReconcileReport:
    leases_requeued: int
    leases_failed: int
    # None when the broker cannot be inspected (only leases were reconciled).
    republished: int | None


def reconcile(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    broker_url: str,
    run_id: int | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    unacked_stale_seconds: float = DEFAULT_UNACKED_STALE_SECONDS,
) -> ReconcileReport:
    with sessions() as session, session.begin():
        expired = requeue_expired_leases(session, run_id=run_id)
    for queue, job_ids in expired.by_queue.items():
        publisher.publish(queue, job_ids)
    republished = _republish_lost(
        sessions=sessions,
        publisher=publisher,
        broker_url=broker_url,
        run_id=run_id,
        grace_seconds=grace_seconds,
        unacked_stale_seconds=unacked_stale_seconds,
    )
    return ReconcileReport(expired.count, len(expired.failed), republished)


def _republish_lost(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    broker_url: str,
    run_id: int | None,
    grace_seconds: float,
    unacked_stale_seconds: float,
) -> int | None:
    with sessions() as session:
        now = database_now(session)
        waiting = _runs_waiting(session, run_id=run_id, cutoff=now - timedelta(seconds=grace_seconds))
    if not waiting:
        return 0
    in_broker = job_ids_in_broker(broker_url, set(waiting.values()), unacked_stale_s=unacked_stale_seconds)
    if in_broker is None:
        return None
    republished = 0
    # Run by run, in pages of ix_jobs_run_state_id: each page costs the same however long the queue.
    for waiting_run, queue in waiting.items():
        last_id = 0
        while True:
            keys = Keyset([(Job.run_id, waiting_run), (Job.state, JobState.QUEUED.value)])
            stmt = select(Job.id).where(
                Job.queued_at < now - timedelta(seconds=grace_seconds),
                or_(Job.not_before.is_(None), Job.not_before <= now),
            )
            with sessions() as session:
                stmt = keys.page(stmt, dialect=session.get_bind().dialect.name, after=last_id)
                page = list(session.scalars(stmt.limit(_PAGE)))
            if not page:
                break
            last_id = page[-1]
            lost = [job_id for job_id in page if job_id not in in_broker]
            publisher.publish(queue, lost)
            republished += len(lost)
    return republished


def _runs_waiting(session: Session, *, run_id: int | None, cutoff: datetime) -> dict[int, str]:
    """Runs (id → queue) with queued jobs (by their counters) and no submit published in the grace time:
    a run still being submitted publishes its jobs well after inserting them."""
    stmt = (
        select(Run.id, Run.queue)
        .join(RunCount, RunCount.run_id == Run.id)
        .where(RunCount.state == JobState.QUEUED.value, or_(Run.published_at.is_(None), Run.published_at < cutoff))
        .group_by(Run.id, Run.queue)
        .having(func.sum(RunCount.jobs) > 0)
    )
    if run_id is not None:
        stmt = stmt.where(Run.id == run_id)
    return {run: queue for run, queue in session.execute(stmt)}
