"""The ledger's guarantees, on SQLite and PostgreSQL: idempotent inserts, fenced claims and writes."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.models import JobSpec
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import claim_jobs, claim_next
from vlmbatch.schema.ledger.enqueue import insert_jobs
from vlmbatch.schema.ledger.liveness import renew_leases
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Worker, utcnow


def _sample(index: int = 0, answer: str = "42") -> SampleRecord:
    return SampleRecord(
        sample_index=index,
        answer=answer,
        reasoning="because",
        raw_text=f"because</think>{answer}",
        finish_reason="stop",
        trace_closed=True,
        completion_tokens=5,
        reasoning_tokens=3,
        answer_tokens=2,
    )


def _success(job_id: int, attempt_id: int, answer: str = "42") -> AttemptReport:
    return AttemptReport(
        job_id=job_id, attempt_id=attempt_id, outcome=AttemptOutcome.SUCCEEDED, samples=[_sample(answer=answer)]
    )


def test_inserting_the_same_jobs_twice_adds_nothing(database_url: str) -> None:
    sessions = ledger(database_url)
    run_id, first = make_run(sessions, jobs=5)
    specs = [JobSpec(images=(f"file:///img/{i}.jpg",), question="what?") for i in range(7)]
    with sessions() as session, session.begin():
        second = insert_jobs(session, run_id=run_id, specs=specs + specs)
    assert len(first) == 5
    assert len(second) == 2  # only images 5 and 6 are new; the duplicate half of the batch adds nothing
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 7


def test_a_claim_opens_an_attempt_and_fences_the_job_to_it(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=3)
    with sessions() as session, session.begin():
        claimed = claim_jobs(session, job_ids=ids, worker="w1", lease_seconds=60)
    assert [c.job_id for c in claimed] == ids
    with sessions() as session:
        for c in claimed:
            job = session.get(Job, c.job_id)
            assert job is not None
            assert job.state == JobState.RUNNING
            assert job.current_attempt_id == c.attempt_id
            assert job.lease_owner == "w1"
            assert job.lease_expires_at is not None and job.lease_expires_at > utcnow()


def test_a_running_job_cannot_be_claimed_again(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        assert len(claim_jobs(session, job_ids=ids, worker="w1", lease_seconds=60)) == 2
    with sessions() as session, session.begin():
        assert claim_jobs(session, job_ids=ids, worker="w2", lease_seconds=60) == []
        assert claim_next(session, limit=10, worker="w2", lease_seconds=60) == []


def test_claims_only_take_jobs_of_runs_for_the_workers_model(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2, model="model-a")
    with sessions() as session, session.begin():
        assert claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60, model="model-b") == []
        assert len(claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60, model="model-a")) == 2


def test_a_result_is_written_with_the_state_change(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (claimed,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        written = record_outcomes(session, [_success(claimed.job_id, claimed.attempt_id)])
    assert len(written) == 1
    with sessions() as session:
        job = session.get(Job, claimed.job_id)
        attempt = session.get(Attempt, claimed.attempt_id)
        assert job is not None and attempt is not None
        assert job.state == JobState.SUCCEEDED and job.finished_at is not None and job.lease_owner is None
        assert attempt.outcome == AttemptOutcome.SUCCEEDED and attempt.completion_tokens == 5
        assert session.scalars(select(Result.answer)).all() == ["42"]


def test_a_replayed_write_after_success_changes_nothing(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (claimed,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        record_outcomes(session, [_success(claimed.job_id, claimed.attempt_id, answer="first")])
    with sessions() as session, session.begin():
        replay = record_outcomes(session, [_success(claimed.job_id, claimed.attempt_id, answer="second")])
    assert replay == []
    with sessions() as session:
        assert session.scalars(select(Result.answer)).all() == ["first"]


def test_a_second_result_for_the_same_attempt_is_refused_by_the_database(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (claimed,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        record_outcomes(session, [_success(claimed.job_id, claimed.attempt_id)])
    with pytest.raises(IntegrityError), sessions() as session, session.begin():
        session.add(
            Result(
                job_id=claimed.job_id,
                attempt_id=claimed.attempt_id,
                sample_index=0,
                answer="again",
                raw_text="again",
                trace_closed=True,
                completion_tokens=1,
            )
        )


def test_a_stale_attempts_write_changes_nothing(database_url: str) -> None:
    """A zombie (frozen past its lease) finishes after its job was taken back and claimed again."""
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (zombie,) = claim_jobs(session, job_ids=ids, worker="zombie", lease_seconds=60)
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with sessions() as session, session.begin():
        requeued = requeue_expired_leases(session)
    assert requeued.by_queue == {"q": ids}
    with sessions() as session, session.begin():
        (fresh,) = claim_jobs(session, job_ids=ids, worker="fresh", lease_seconds=60)
    assert fresh.attempt_id != zombie.attempt_id
    with sessions() as session, session.begin():
        assert record_outcomes(session, [_success(zombie.job_id, zombie.attempt_id, answer="zombie")]) == []
    with sessions() as session:
        job = session.get(Job, fresh.job_id)
        zombie_attempt = session.get(Attempt, zombie.attempt_id)
        assert job is not None and zombie_attempt is not None
        assert job.state == JobState.RUNNING and job.current_attempt_id == fresh.attempt_id
        assert zombie_attempt.outcome == AttemptOutcome.ABANDONED
        assert session.scalar(select(func.count()).select_from(Result)) == 0
    with sessions() as session, session.begin():
        assert len(record_outcomes(session, [_success(fresh.job_id, fresh.attempt_id, answer="fresh")])) == 1
    with sessions() as session:
        assert session.scalars(select(Result.answer)).all() == ["fresh"]


def test_an_expired_lease_past_the_attempt_cap_fails_the_job(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1, max_attempts=1)
    with sessions() as session, session.begin():
        claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with sessions() as session, session.begin():
        outcome = requeue_expired_leases(session)
    assert outcome.failed == ids and outcome.count == 0
    with sessions() as session:
        job = session.get(Job, ids[0])
        assert job is not None and job.state == JobState.FAILED and job.error_type == ErrorType.INTERNAL


def test_a_live_lease_is_never_taken_back(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        assert requeue_expired_leases(session).count == 0


def test_renewal_reports_leases_the_worker_no_longer_holds(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        a, b = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        session.execute(update(Job).where(Job.id == b.job_id).values(state=JobState.CANCELLED.value))
    with sessions() as session, session.begin():
        lost = renew_leases(session, worker="w", attempt_ids=[a.attempt_id, b.attempt_id], lease_seconds=60)
    assert lost == {b.attempt_id}


def test_a_transient_failure_requeues_the_job_after_a_backoff(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (claimed,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    report = AttemptReport(
        job_id=claimed.job_id,
        attempt_id=claimed.attempt_id,
        outcome=AttemptOutcome.FAILED,
        error_type=ErrorType.STORAGE_TRANSIENT,
        error_message="SlowDown",
        retry_after_s=30.0,
    )
    with sessions() as session, session.begin():
        assert len(record_outcomes(session, [report])) == 1
    with sessions() as session, session.begin():
        job = session.get(Job, claimed.job_id)
        assert job is not None
        assert job.state == JobState.QUEUED and job.transient_failures == 1
        assert job.not_before is not None and job.not_before > utcnow()
        assert claim_next(session, limit=5, worker="w", lease_seconds=60) == []  # still backing off


def test_inserted_jobs_keep_their_reference_and_metadata(database_url: str) -> None:
    sessions = ledger(database_url)
    run_id, _ = make_run(sessions, jobs=0)
    spec = JobSpec(images=("s3://b/x.jpg",), question="q", reference="B", meta={"split": "val", "id": 7})
    with sessions() as session, session.begin():
        insert_jobs(session, run_id=run_id, specs=[spec])
    with sessions() as session:
        job = session.scalars(select(Job)).one()
    assert (job.reference, job.meta, job.images) == ("B", {"split": "val", "id": 7}, ["s3://b/x.jpg"])


def test_leases_are_timed_by_the_database_clock_not_the_workers(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker host whose clock runs ten minutes slow claims and renews; a reconciler on a correct host
    must not take the live lease back (with host clocks the lease would have expired before it began)."""
    from vlmbatch.schema.ledger import clock, tables

    sessions = ledger(postgres_url)
    _, ids = make_run(sessions, jobs=2)
    correct = tables.utcnow
    with monkeypatch.context() as skewed:
        slow = lambda: correct() - timedelta(minutes=10)  # noqa: E731
        skewed.setattr(clock, "utcnow", slow)
        skewed.setattr(tables, "utcnow", slow)
        with sessions() as session, session.begin():
            claimed = claim_jobs(session, job_ids=ids, worker="slow-host", lease_seconds=60)
        with sessions() as session, session.begin():
            assert (
                renew_leases(session, worker="slow-host", attempt_ids=[c.attempt_id for c in claimed], lease_seconds=60)
                == set()
            )
    with sessions() as session, session.begin():
        assert requeue_expired_leases(session).count == 0
        expires = [*session.scalars(select(Job.lease_expires_at)), session.scalar(select(Worker.expires_at))]
    margin = [(e - correct()).total_seconds() for e in expires if e is not None]
    assert len(margin) == 3 and all(50 < m <= 60 for m in margin)  # the claims' leases and the heartbeat
