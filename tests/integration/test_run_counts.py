"""The run counters (schema.ledger.counters) equal a real count of the jobs after every kind of state change:
submit (again), claims, successes, permanent and transient failures with retries, truncation, lease
expiry, resubmission and cancellation, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from tests.integration.test_pipeline import FlakyStore
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger import outcomes
from vlmbatch.schema.ledger.claims import claim_next
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.resubmit import cancel_run, resubmit_jobs, select_for_resubmit
from vlmbatch.schema.ledger.status import run_status
from vlmbatch.schema.ledger.tables import Attempt, Job, Run


def _folder(path: Path, good: int) -> Path:
    path.mkdir(parents=True)
    for i in range(good):
        (path / f"{i:02d}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    (path / "empty.jpg").write_bytes(b"")  # input.unreadable
    (path / "text.jpg").write_bytes(b"not an image at all")  # input.unreadable too
    return path


def _assert_counts_are_real(sessions: sessionmaker[Session]) -> dict[int, dict[str, int]]:
    """For every run: counters == count(*) per state, and per error type of failed jobs."""
    seen = {}
    with sessions() as session:
        for run_id in session.scalars(select(Run.id)):
            real = _real_counts(session, run_id)
            real_errors = dict(
                session.execute(
                    select(Job.error_type, func.count())
                    .where(Job.run_id == run_id, Job.state == JobState.FAILED.value)
                    .group_by(Job.error_type)
                ).all()
            )
            kept = read_counts(session, run_id)
            assert {s: n for s, n in kept.by_state.items() if n} == real, f"run {run_id}"
            assert kept.errors == real_errors, f"run {run_id}"
            assert all(n >= 0 for n in kept.by_state.values())
            seen[run_id] = real
    return seen


def _real_counts(session: Session, run_id: int) -> dict[str, int]:
    stmt = select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)
    return {state: n for state, n in session.execute(stmt).all()}


def test_counters_equal_a_real_count_after_a_mixed_workload(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes, "RETRY_BASE_SECONDS", 0.01)
    folder = _folder(tmp_path / "imgs", 10)
    settings = settings_for(database_url)
    # Jobs of image 0 fail transiently once, then pass on retry; others fail for good or succeed.
    with running_pipeline(settings, store=FlakyStore(failures=1, only="/00.jpg")) as (pipeline, sessions):
        graded = submit_folder(sessions, folder, max_transient_retries=2)
        short = submit_folder(sessions, folder, max_tokens=5)  # every good job ends truncated
        assert submit_folder(sessions, folder, max_transient_retries=2) == graded  # adds nothing
        counts = _assert_counts_are_real(sessions)
        assert counts[graded] == {JobState.QUEUED.value: 12}
        pipeline.feed_run(graded).result(timeout=60)
        pipeline.feed_run(short).result(timeout=60)
    counts = _assert_counts_are_real(sessions)
    assert counts[graded] == {JobState.SUCCEEDED.value: 10, JobState.FAILED.value: 2}
    assert counts[short] == {JobState.TRUNCATED.value: 10, JobState.FAILED.value: 2}
    with sessions() as session:
        retried = session.scalar(
            select(func.count()).select_from(Attempt).join(Job, Job.id == Attempt.job_id).where(Job.run_id == graded)
        )
    assert retried == 13  # the transient failure was retried once

    # A third run: some jobs claimed by a worker that then dies (leases expire), then cancelled.
    abandoned = submit_folder(sessions, folder, question="Anything else?")
    with sessions() as session, session.begin():
        claimed = claim_next(session, limit=4, worker="dead-worker", lease_seconds=-1, run_id=abandoned)
    assert len(claimed) == 4
    assert _assert_counts_are_real(sessions)[abandoned] == {JobState.QUEUED.value: 8, JobState.RUNNING.value: 4}
    with sessions() as session, session.begin():
        assert requeue_expired_leases(session, run_id=abandoned).count == 4
    with sessions() as session, session.begin():
        claim_next(session, limit=3, worker="live-worker", lease_seconds=600, run_id=abandoned)
    _assert_counts_are_real(sessions)
    with sessions() as session, session.begin():
        cancelled = cancel_run(session, run_id=abandoned)
    assert (cancelled.queued, cancelled.running) == (9, 3)
    assert _assert_counts_are_real(sessions)[abandoned] == {JobState.CANCELLED.value: 12}

    # Resubmission moves failed (per error type), truncated and cancelled jobs back to the queue.
    with sessions() as session, session.begin():
        selection = select_for_resubmit(
            session, run_id=short, states=[JobState.FAILED, JobState.TRUNCATED], error_types=["input.unreadable"]
        )
        resubmit_jobs(session, job_ids=selection.job_ids, max_tokens=500)
        again = select_for_resubmit(session, run_id=abandoned, states=[JobState.CANCELLED])
        resubmit_jobs(session, job_ids=again.job_ids)
    counts = _assert_counts_are_real(sessions)
    assert counts[short] == {JobState.QUEUED.value: 12}
    with running_pipeline(settings) as (pipeline, sessions):
        pipeline.feed_run(short).result(timeout=60)
        pipeline.feed_run(abandoned).result(timeout=60)
    counts = _assert_counts_are_real(sessions)
    assert counts[short] == {JobState.SUCCEEDED.value: 10, JobState.FAILED.value: 2}
    with sessions() as session:
        report = run_status(session, abandoned)
    assert report.total == 12 and report.counts[JobState.SUCCEEDED.value] == 10
    assert report.errors == {"input.unreadable": 2}
