"""Checkpoints in the ledger, on SQLite and PostgreSQL: attempt-scoped and fenced like results, settled in
the outcome's transaction, continued by resubmit (issue 26; schema/ledger/checkpoints.py)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select, update

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.checkpoints import (
    Checkpoint,
    checkpoints_of,
    pack_tokens,
    record_checkpoints,
    unpack_tokens,
)
from vlmbatch.schema.ledger.claims import ClaimedJob, claim_jobs, claim_next
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.resubmit import resubmit_jobs, truncated_jobs
from vlmbatch.schema.ledger.tables import Attempt, Job, utcnow
from vlmbatch.worker.pipeline.admission import claim_with_checkpoints


def _sample(finish: str, tokens: int, index: int = 0) -> SampleRecord:
    return SampleRecord(
        sample_index=index,
        answer="",
        reasoning="thinking",
        raw_text="thinking",
        finish_reason=finish,
        trace_closed=False,
        completion_tokens=tokens,
        reasoning_tokens=tokens,
        answer_tokens=0,
    )


def _report(
    job: ClaimedJob, outcome: AttemptOutcome, finish: str, ids: tuple[int, ...], **extra: object
) -> AttemptReport:
    return AttemptReport(
        job_id=job.job_id,
        attempt_id=job.attempt_id,
        outcome=outcome,
        samples=[_sample(finish, len(ids))],
        output_token_ids=ids,
        **extra,  # type: ignore[arg-type]
    )


def _lapse_and_reclaim(sessions: object, job_ids: list[int]) -> ClaimedJob:
    with sessions() as session, session.begin():  # type: ignore[operator]
        session.execute(update(Job).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    with sessions() as session, session.begin():  # type: ignore[operator]
        requeue_expired_leases(session)
    with sessions() as session, session.begin():  # type: ignore[operator]
        (fresh,) = claim_with_checkpoints(session, claim_jobs, job_ids=job_ids, worker="fresh", lease_seconds=60)
    return fresh


def test_token_ids_are_packed_four_bytes_each_and_come_back_exactly() -> None:
    ids = (0, 1, 151_643, 2**31 - 1, 7)
    assert len(pack_tokens(ids)) == 4 * len(ids)
    assert unpack_tokens(pack_tokens(ids)) == ids


def test_a_new_attempt_is_claimed_with_the_checkpoint_of_the_attempt_that_died(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        first, other = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        written = record_checkpoints(session, [Checkpoint(first.job_id, first.attempt_id, (5, 6), "ab")])
    with sessions() as session, session.begin():
        # A later interval replaces the job's checkpoint; both jobs in one batch.
        written += record_checkpoints(
            session,
            [
                Checkpoint(first.job_id, first.attempt_id, (5, 6, 7, 8), "abcd"),
                Checkpoint(other.job_id, other.attempt_id, (9,), "z"),
            ],
        )
    assert written == [first.job_id, first.job_id, other.job_id]
    fresh = _lapse_and_reclaim(sessions, [first.job_id])
    assert fresh.attempt_id != first.attempt_id
    assert fresh.checkpoint == Checkpoint(first.job_id, first.attempt_id, (5, 6, 7, 8), "abcd")


def test_a_stale_attempt_cannot_overwrite_the_checkpoint_of_a_newer_one(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (zombie,) = claim_jobs(session, job_ids=ids, worker="zombie", lease_seconds=60)
    fresh = _lapse_and_reclaim(sessions, ids)
    with sessions() as session, session.begin():
        assert record_checkpoints(session, [Checkpoint(fresh.job_id, fresh.attempt_id, (1, 2, 3), "new")]) == ids
    with sessions() as session, session.begin():
        assert record_checkpoints(session, [Checkpoint(zombie.job_id, zombie.attempt_id, (4,) * 50, "old")]) == []
    with sessions() as session:
        kept = checkpoints_of(session, job_ids=ids)[fresh.job_id]
    assert (kept.attempt_id, kept.token_ids) == (fresh.attempt_id, (1, 2, 3))


def test_a_finished_job_takes_no_checkpoint(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (job,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        record_outcomes(session, [_report(job, AttemptOutcome.SUCCEEDED, "stop", (1, 2))])
    with sessions() as session, session.begin():
        assert record_checkpoints(session, [Checkpoint(job.job_id, job.attempt_id, (1,), "late")]) == []
    with sessions() as session:
        assert checkpoints_of(session, job_ids=ids) == {}


def test_a_succeeded_job_drops_its_checkpoint_in_the_results_transaction(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (job,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        record_checkpoints(session, [Checkpoint(job.job_id, job.attempt_id, (1, 2), "ab")])
    with sessions() as session, session.begin():
        assert record_outcomes(session, [_report(job, AttemptOutcome.SUCCEEDED, "stop", (1, 2, 3))])
        assert checkpoints_of(session, job_ids=ids) == {}  # gone before the commit, with the result
    with sessions() as session:
        assert session.scalar(select(Job.state).where(Job.id == job.job_id)) == JobState.SUCCEEDED.value


def test_a_job_truncated_at_max_tokens_keeps_its_whole_output_as_token_ids(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (job,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        record_checkpoints(session, [Checkpoint(job.job_id, job.attempt_id, (1, 2), "ab")])
    output = tuple(range(100, 164))
    with sessions() as session, session.begin():
        record_outcomes(session, [_report(job, AttemptOutcome.TRUNCATED, "length", output)])
    with sessions() as session:
        kept = checkpoints_of(session, job_ids=ids)[job.job_id]
        truncated = truncated_jobs(session, job_ids=ids)
    assert (kept.token_ids, kept.finish_reason, kept.attempt_id) == (output, "length", job.attempt_id)
    assert (truncated.length, truncated.kept) == (ids, 64)


def test_a_job_truncated_at_the_context_or_by_a_loop_keeps_nothing_and_is_sorted_apart(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        context, loop = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        record_checkpoints(session, [Checkpoint(context.job_id, context.attempt_id, (1,), "a")])
    with sessions() as session, session.begin():
        record_outcomes(
            session,
            [
                _report(context, AttemptOutcome.TRUNCATED, "context", (1, 2, 3)),
                _report(loop, AttemptOutcome.TRUNCATED, "repetition", (4, 4, 4)),
            ],
        )
    with sessions() as session:
        assert checkpoints_of(session, job_ids=ids) == {}
        truncated = truncated_jobs(session, job_ids=ids)
    assert (truncated.length, truncated.context, truncated.repetition) == ([], [context.job_id], [loop.job_id])


def test_a_transient_failure_keeps_the_checkpoint_for_the_retry(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (job,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        record_checkpoints(session, [Checkpoint(job.job_id, job.attempt_id, (1, 2), "ab")])
    failed = AttemptReport(
        job_id=job.job_id, attempt_id=job.attempt_id, outcome=AttemptOutcome.FAILED, retry_after_s=0.0
    )
    with sessions() as session, session.begin():
        record_outcomes(session, [failed])
    with sessions() as session, session.begin():
        (retry,) = claim_with_checkpoints(session, claim_next, limit=1, worker="w", lease_seconds=60)
    assert retry.checkpoint is not None and retry.checkpoint.token_ids == (1, 2)


def test_a_resumed_attempt_records_its_checkpoint_and_only_the_tokens_it_generated(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=1)
    with sessions() as session, session.begin():
        (first,) = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
        record_checkpoints(session, [Checkpoint(first.job_id, first.attempt_id, (1, 2, 3), "abc")])
    fresh = _lapse_and_reclaim(sessions, ids)
    report = _report(
        fresh, AttemptOutcome.SUCCEEDED, "stop", (1, 2, 3, 4, 5), resumed_from=first.attempt_id, reused_tokens=3
    )
    with sessions() as session, session.begin():
        record_outcomes(session, [report])
    with sessions() as session:
        attempt = session.get(Attempt, fresh.attempt_id)
    assert attempt is not None
    resumed = (attempt.resumed_from_attempt_id, attempt.reused_tokens, attempt.completion_tokens)
    assert resumed == (first.attempt_id, 3, 2)


def test_resubmit_continues_kept_tokens_and_restart_drops_them(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=2)
    with sessions() as session, session.begin():
        jobs = claim_jobs(session, job_ids=ids, worker="w", lease_seconds=60)
    with sessions() as session, session.begin():
        record_outcomes(session, [_report(j, AttemptOutcome.TRUNCATED, "length", (7, 8, 9)) for j in jobs])
    with sessions() as session, session.begin():
        assert resubmit_jobs(session, job_ids=[ids[0]], max_tokens=6) == [ids[0]]
        assert resubmit_jobs(session, job_ids=[ids[1]], max_tokens=6, restart=True) == [ids[1]]
    with sessions() as session, session.begin():
        claimed = claim_with_checkpoints(session, claim_jobs, job_ids=ids, worker="w", lease_seconds=60)
    by_job = {c.job_id: c for c in claimed}
    continued = by_job[ids[0]].checkpoint
    assert continued is not None and continued.token_ids == (7, 8, 9)
    assert by_job[ids[1]].checkpoint is None
    assert by_job[ids[0]].overrides == {"max_tokens": 6}
