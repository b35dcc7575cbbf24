"""The reconciler: puts back to work what a fault left behind. Run periodically by every worker (one at a
time on PostgreSQL) and on demand by `vlmbatch reconcile`.

1. Jobs whose lease expired (their claim's lease and their worker's heartbeat row both lapsed: it died or
   froze) go back to the queue, or fail for good once they
   used their attempts (schema.ledger.reconcile). Their claim tokens are published at once. Rows of workers
   silent for an hour are deleted.
2. Queued jobs that no claim token covers (Redis lost its data, the producer died between commit and
   publish, a worker died holding tokens) get tokens. Messages carry no job ids (schema/contracts/
   tokens.py), so this compares two counts per queue: the queued jobs of its runs, from their counters,
   and the jobs its tokens can still claim (broker_scan.jobs_covered: list lengths, and the few
   unacknowledged tokens of live workers). The deficit is published; spare tokens are harmless.

What a pass costs: step 1 reads only running jobs (ix_jobs_running_attempt, as many as the fleet's slots);
step 2 reads a few counter rows per run with queued jobs and never a message body of the waiting queue:
flat in the number of jobs in the ledger and in the queue.

A run whose submit published within the grace time is left out of the demand: a long submit inserts its
jobs (and counts them) well before it publishes their tokens (`runs.published_at`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import timedelta

from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import queued_by_queue
from vlmbatch.schema.ledger.enqueue import refresh_midrun_statistics
from vlmbatch.schema.ledger.liveness import prune_workers
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.worker.transport.broker_scan import jobs_covered
from vlmbatch.worker.transport.publisher import Publisher

# A run that published more recently than this may still have tokens to publish.
DEFAULT_GRACE_SECONDS = 30.0
# A message delivered but unacknowledged for longer than this counts as lost with its dead worker.
DEFAULT_UNACKED_STALE_SECONDS = 300.0

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ReconcileReport:
    leases_requeued: int
    leases_failed: int
    # Queued jobs that no claim token covered, now covered; None when the broker cannot be inspected
    # (only leases were reconciled).
    republished: int | None


def reconcile(
    *,
    sessions: sessionmaker[Session],
    publisher: Publisher,
    broker_url: str,
    jobs_per_message: int,
    run_id: int | None = None,
    grace_seconds: float = DEFAULT_GRACE_SECONDS,
    unacked_stale_seconds: float = DEFAULT_UNACKED_STALE_SECONDS,
) -> ReconcileReport:
    with sessions() as session, session.begin():
        # First, so that this pass's own queries (and every hot query until the next) plan on statistics
        # that know how far the runs have got.
        analyzed = refresh_midrun_statistics(session)
    if analyzed:
        log.info("statistics refreshed for %s (changed since their last ANALYZE)", ", ".join(analyzed))
    with sessions() as session, session.begin():
        expired = requeue_expired_leases(session, run_id=run_id)
        prune_workers(session, now=database_now(session))
    for queue, job_ids in expired.by_queue.items():
        publisher.publish(queue, len(job_ids))
    with sessions() as session:
        now = database_now(session)
        demand = queued_by_queue(session, run_id=run_id, cutoff=now - timedelta(seconds=grace_seconds))
    republished = 0
    for queue, queued in demand.items():
        covered = jobs_covered(
            broker_url, queue, jobs_per_message=jobs_per_message, unacked_stale_s=unacked_stale_seconds
        )
        if covered is None:
            return ReconcileReport(expired.count, len(expired.failed), None)
        if queued > covered:
            publisher.publish(queue, queued - covered)
            republished += queued - covered
    return ReconcileReport(expired.count, len(expired.failed), republished)
