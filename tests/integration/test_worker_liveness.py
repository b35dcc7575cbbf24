"""Worker liveness rows (schema/ledger/liveness.py), on SQLite and PostgreSQL: a heartbeat writes its worker's
row and no job row; a job lives while its claim's lease or its worker's row does; a job the ledger gives
a worker that no longer runs it is taken back by that worker's next beat."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import claim_jobs
from vlmbatch.schema.ledger.liveness import PRUNE_AFTER, prune_workers, renew_leases, workers_alive
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.tables import Attempt, Job, Worker, utcnow


def _lapse_claim_leases(session: Session) -> None:
    """As if the jobs were claimed long ago: only a heartbeat can keep them now."""
    session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))


def test_a_beating_worker_keeps_its_jobs_past_their_claim_lease(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=3)
    with sessions() as session, session.begin():
        claimed = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        _lapse_claim_leases(session)
    with sessions() as session, session.begin():
        assert renew_leases(session, worker="w", attempt_ids=[c.attempt_id for c in claimed], lease_seconds=60) == set()
    with sessions() as session, session.begin():
        assert requeue_expired_leases(session).count == 0
        assert session.scalars(select(Job.state)).all() == ["running"] * 3
        # The beat wrote the worker's row, not the jobs' leases.
        assert all(e < utcnow() for e in session.scalars(select(Job.lease_expires_at)) if e is not None)
        assert session.scalars(select(Worker.name)).all() == ["w"]
        assert workers_alive(session) == 1


def test_jobs_of_a_silent_worker_are_taken_back(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        claimed = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        renew_leases(session, worker="w", attempt_ids=[c.attempt_id for c in claimed], lease_seconds=60)
        _lapse_claim_leases(session)
        # Its last beat was over a lease ago.
        session.execute(update(Worker).values(expires_at=utcnow() - timedelta(seconds=1)))
    with sessions() as session, session.begin():
        requeued = requeue_expired_leases(session)
    assert requeued.by_queue == {"q": sorted(ids)}
    with sessions() as session:
        assert workers_alive(session) == 0
        assert set(session.scalars(select(Attempt.outcome))) == {AttemptOutcome.ABANDONED.value}


def test_a_live_workers_row_does_not_shield_a_job_another_worker_holds(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        (alive,) = claim_jobs(session, job_ids=ids[:1], worker="alive", lease_seconds=60)
        claim_jobs(session, job_ids=ids[1:], worker="dead", lease_seconds=60)
        _lapse_claim_leases(session)
    with sessions() as session, session.begin():
        renew_leases(session, worker="alive", attempt_ids=[alive.attempt_id], lease_seconds=60)
    with sessions() as session, session.begin():
        assert requeue_expired_leases(session).by_queue == {"q": ids[1:]}


def test_a_beat_takes_back_the_jobs_its_worker_no_longer_runs(database_url: str) -> None:
    """A worker restarted under the same name (its predecessor's jobs carry that name) or that lost an
    attempt: its beat gives back what it does not run, once the claim's own lease is over."""
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=3)
    with sessions() as session, session.begin():
        kept, forgotten, fresh = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        session.execute(
            update(Job)
            .where(Job.id.in_([kept.job_id, forgotten.job_id]))
            .values(lease_expires_at=utcnow() - timedelta(seconds=1))
        )
    with sessions() as session, session.begin():
        # `fresh` is not in flight either, but was claimed within a lease: it may still be handed over.
        assert renew_leases(session, worker="w", attempt_ids=[kept.attempt_id], lease_seconds=60) == set()
    with sessions() as session:
        states = dict(session.execute(select(Job.id, Job.state)).tuples().all())
        attempt = session.get(Attempt, forgotten.attempt_id)
    assert states == {kept.job_id: "running", forgotten.job_id: JobState.QUEUED.value, fresh.job_id: "running"}
    assert attempt is not None and attempt.outcome == AttemptOutcome.ABANDONED.value
    assert attempt.error_message is not None and "no longer runs" in attempt.error_message


def test_rows_of_long_silent_workers_are_pruned(database_url: str) -> None:
    sessions = ledger(database_url)
    with sessions() as session, session.begin():
        renew_leases(session, worker="old", attempt_ids=[], lease_seconds=60)
        renew_leases(session, worker="recent", attempt_ids=[], lease_seconds=60)
        session.execute(
            update(Worker).where(Worker.name == "old").values(expires_at=utcnow() - PRUNE_AFTER - timedelta(minutes=1))
        )
    with sessions() as session, session.begin():
        assert prune_workers(session, now=utcnow()) == 1
        assert session.scalars(select(Worker.name)).all() == ["recent"]
