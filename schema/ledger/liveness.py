"""Worker liveness: each worker beats one row of `workers`, and its running jobs live as long as it does.

A heartbeat used to renew every running job's `lease_expires_at`: one new row version, and on bulk-loaded
pages new entries in every index of `jobs`, per job per beat (15 s of database time per beat for 10,000
leases on a 10^6-job ledger, bench/RESULTS.md). As in procrastinate's worker heartbeats, a beat now
writes the worker's own row and reads its running jobs (ix_jobs_running_owner): O(its slots), and no job
row is written. The reconciler takes a job back once its claim's lease and its worker's row have both
lapsed (schema/ledger/reconcile.py), all by the database's clock.

Per-job leases also freed a job that a live worker no longer ran (it restarted under the same name, or
lost the attempt); the beat keeps that: jobs the ledger says the worker runs but the worker does not,
claimed over a lease ago, are taken back by the beat itself.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.dialect import insert_for, lock_for_claim
from vlmbatch.schema.ledger.reconcile import take_back
from vlmbatch.schema.ledger.tables import Job, Run, Worker

ORPHANED = "lease held by {owner}, which no longer runs this attempt (restarted, or lost it)"
# Rows of workers silent this long are deleted: no row reads as "not alive", so this is only tidying.
PRUNE_AFTER = timedelta(hours=1)


def beat(
    session: Session,
    *,
    worker: str,
    lease_seconds: float,
    now: datetime,
    model: str | None = None,
    fingerprint: str | None = None,
) -> None:
    """Mark `worker` (serving `model`) alive until `now + lease_seconds`."""
    expires = now + timedelta(seconds=lease_seconds)
    renewal: dict[str, object] = {"beat_at": now, "expires_at": expires}
    if model is not None:
        renewal |= {"model": model, "model_fingerprint": fingerprint}
    upsert = insert_for(session, Worker)
    session.execute(
        upsert.values(name=worker, started_at=now, **renewal).on_conflict_do_update(
            index_elements=[Worker.name], set_=renewal
        )
    )


def renew_leases(
    session: Session,
    *,
    worker: str,
    attempt_ids: Sequence[int],
    lease_seconds: float,
    model: str | None = None,
    fingerprint: str | None = None,
) -> set[int]:
    """One heartbeat of `worker`, whose attempts in flight are `attempt_ids`: keep its jobs alive; take
    back the jobs it holds in the ledger but no longer runs; return the attempt ids it no longer holds
    (lease taken back by the reconciler, job cancelled or finished elsewhere)."""
    now = database_now(session)
    beat(session, worker=worker, lease_seconds=lease_seconds, now=now, model=model, fingerprint=fingerprint)
    in_flight = set(attempt_ids)
    running = session.execute(
        select(Job.id, Job.current_attempt_id, Job.lease_expires_at).where(
            Job.state == JobState.RUNNING.value, Job.lease_owner == worker
        )
    ).all()
    held = {attempt for _, attempt, _ in running if attempt in in_flight}
    # Claimed over a lease ago and not in flight: not a claim whose jobs are still being handed over.
    orphans = [job for job, attempt, expires in running if attempt not in in_flight and (expires or now) < now]
    if orphans:
        _take_back_orphans(session, worker=worker, job_ids=orphans, now=now)
    return in_flight - held


def _take_back_orphans(session: Session, *, worker: str, job_ids: list[int], now: datetime) -> None:
    stmt = (
        select(Job, Run.queue, Run.settings)
        .join(Run, Run.id == Job.run_id)
        .where(
            Job.id.in_(job_ids),
            Job.state == JobState.RUNNING.value,
            Job.lease_owner == worker,
            Job.lease_expires_at < now,
        )
        .order_by(Job.id)  # the ledger's lock order (schema/ledger/locks.py)
    )
    stmt = lock_for_claim(stmt, session, of=Job)
    # Requeued jobs need no message here: the reconciler publishes tokens for queued jobs none covers.
    take_back(session, session.execute(stmt).tuples(), now=now, reason=ORPHANED)


def retire(session: Session, *, worker: str) -> None:
    """A stopping worker's last word, once it handed its jobs back: its row goes, so that `status` stops
    counting it and whatever it could not hand back expires with its claims' leases."""
    session.execute(delete(Worker).where(Worker.name == worker))


def prune_workers(session: Session, *, now: datetime) -> int:
    """Delete the rows of workers silent for PRUNE_AFTER; return how many."""
    pruned = cast(CursorResult[Any], session.execute(delete(Worker).where(Worker.expires_at < now - PRUNE_AFTER)))
    return int(pruned.rowcount)


def workers_alive(session: Session) -> int:
    """Workers whose heartbeat is current (`vlmbatch status RUN`): a few rows per worker host."""
    now = database_now(session)
    return int(session.scalar(select(func.count()).select_from(Worker).where(Worker.expires_at >= now)) or 0)


def model_unserved(session: Session, run_id: int) -> str | None:
    """A warning when the run has queued jobs and no live worker serves its model (by path or by
    fingerprint), naming what the live workers serve; None otherwise (or when no worker is alive: then
    `workers alive 0` says it)."""
    run = session.get(Run, run_id)
    if run is None:
        return None
    queued = read_counts(session, run_id).by_state.get(JobState.QUEUED.value, 0)
    if not queued:
        return None
    now = database_now(session)
    served = session.execute(
        select(Worker.model, Worker.model_fingerprint).where(Worker.expires_at >= now).distinct()
    ).all()
    if not served:
        return None
    if any(m == run.model or (f is not None and f == run.model_fingerprint) for m, f in served):
        return None
    serving = ", ".join(sorted({m or "(unknown)" for m, _ in served}))
    return f"{queued:,} jobs queued for model {run.model}; live workers serve {serving}"
