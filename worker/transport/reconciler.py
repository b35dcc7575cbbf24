"""The reconciler: puts back to work what a fault left behind. Run periodically by every worker and on
demand by `vlmbatch reconcile`.

1. Jobs whose lease expired (their worker died or froze) go back to the queue, or fail for good once they
   used their attempts (schema.reconcile).
2. Jobs `queued` in the database with no message in the broker (Redis lost them, or the producer died
   between commit and publish) are published again. A duplicate message is harmless: claims are fenced.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy import or_, select
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.reconcile import requeue_expired_leases
from vlmbatch.schema.states import JobState
from vlmbatch.schema.tables import Job, Run, utcnow
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
    cutoff = utcnow() - timedelta(seconds=grace_seconds)
    now = utcnow()
    waiting = (
        Job.state == JobState.QUEUED.value,
        Job.queued_at < cutoff,
        or_(Job.not_before.is_(None), Job.not_before <= now),
    )
    scope = (Job.run_id == run_id,) if run_id is not None else ()
    with sessions() as session:
        queues = list(
            session.scalars(select(Run.queue).distinct().join(Job, Job.run_id == Run.id).where(*waiting, *scope))
        )
    if not queues:
        return 0
    in_broker = job_ids_in_broker(broker_url, queues, unacked_stale_s=unacked_stale_seconds)
    if in_broker is None:
        return None
    republished = 0
    last_id = 0
    while True:
        with sessions() as session:
            page = session.execute(
                select(Job.id, Run.queue)
                .join(Run, Run.id == Job.run_id)
                .where(*waiting, *scope, Job.id > last_id)
                .order_by(Job.id)
                .limit(_PAGE)
            ).all()
        if not page:
            return republished
        last_id = page[-1][0]
        lost: dict[str, list[int]] = {}
        for job_id, queue in page:
            if job_id not in in_broker:
                lost.setdefault(queue, []).append(job_id)
        for queue, job_ids in lost.items():
            publisher.publish(queue, job_ids)
            republished += len(job_ids)
