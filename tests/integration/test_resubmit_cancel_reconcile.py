"""Steering after the fact: selective resubmission, cancellation, and reconciliation of lost work."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import redis
from sqlalchemy import func, select, update

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from tests.integration.test_pipeline import FlakyStore
from tests.processes import service_env, start_worker, stop_worker, vlmbatch_json, wait_until_done
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import claim_jobs
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, utcnow
from vlmbatch.worker.engines.fake import FakeBehaviour


def _folder(path: Path, count: int) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        (path / f"{i:02d}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    return path


def test_resubmitting_transient_failures_runs_exactly_those_again_and_keeps_history(
    sqlite_url: str, tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "imgs", 4)
    (folder / "flaky-empty.jpg").write_bytes(b"")  # fails for good: input.unreadable
    settings = settings_for(sqlite_url)
    with running_pipeline(settings, store=FlakyStore(failures=1, only="/0")) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, max_transient_retries=0)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        transient = sorted(session.scalars(select(Job.id).where(Job.error_type == ErrorType.STORAGE_TRANSIENT)))
        unreadable = session.scalar(select(func.count()).where(Job.error_type == ErrorType.INPUT_UNREADABLE))
    assert len(transient) == 4 and unreadable == 1

    env = {"VLMBATCH_DATABASE_URL": sqlite_url, "VLMBATCH_ENGINE": "fake"}
    dry = vlmbatch_json(
        ["resubmit", str(run_id), "--status", "failed", "--error-type", "storage.transient", "--dry-run", "--json"],
        env,
    )
    assert isinstance(dry, dict)
    assert dry["job_ids"] == transient and dry["resubmitted"] == 0
    assert dry["groups"] == [{"status": "failed", "error_type": "storage.transient", "jobs": len(transient)}]

    done = vlmbatch_json(
        ["resubmit", str(run_id), "--status", "failed", "--error-type", "storage.transient", "--json"], env
    )
    assert isinstance(done, dict) and done["resubmitted"] == len(transient)
    with running_pipeline(settings) as (pipeline, sessions):  # the fault is gone
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        states = dict(session.execute(select(Job.state, func.count()).group_by(Job.state)).all())
        history = session.execute(
            select(Attempt.job_id, Attempt.outcome, Attempt.error_type).order_by(Attempt.job_id, Attempt.number)
        ).all()
    assert states == {JobState.SUCCEEDED: len(transient), JobState.FAILED: 1}
    for job_id in transient:
        assert [(o, e) for j, o, e in history if j == job_id] == [
            (AttemptOutcome.FAILED, ErrorType.STORAGE_TRANSIENT),
            (AttemptOutcome.SUCCEEDED, None),
        ]


def test_resubmitting_truncated_jobs_with_more_tokens_records_the_override(sqlite_url: str, tmp_path: Path) -> None:
    settings = settings_for(sqlite_url)
    with running_pipeline(settings) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 2), max_tokens=5)
        pipeline.feed_run(run_id).result(timeout=30)
        env = {"VLMBATCH_DATABASE_URL": sqlite_url}
        report = vlmbatch_json(["resubmit", str(run_id), "--status", "truncated", "--max-tokens", "500", "--json"], env)
        assert isinstance(report, dict) and report["resubmitted"] == 2
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.SUCCEEDED}
        overrides = session.scalars(select(Attempt.overrides).order_by(Attempt.id)).all()
        results = session.execute(select(Result.job_id, Result.finish_reason).order_by(Result.id)).all()
    assert overrides == [None, None, {"max_tokens": 500}, {"max_tokens": 500}]
    assert [reason for _, reason in results] == ["length", "length", "stop", "stop"]  # history kept


def test_cancel_stops_queued_and_running_jobs_and_frees_the_engine(sqlite_url: str, tmp_path: Path) -> None:
    settings = settings_for(sqlite_url, max_num_seqs=1, inflight_jobs=2, heartbeat_seconds=0.2)
    behaviour = FakeBehaviour(latency_s=30.0)  # far longer than the test: only an abort ends them
    with running_pipeline(settings, behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 6))
        fed = pipeline.feed_run(run_id)
        deadline = time.monotonic() + 10
        while pipeline.in_flight < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        cancelled = vlmbatch_json(["cancel", str(run_id), "--json"], {"VLMBATCH_DATABASE_URL": sqlite_url})
        assert cancelled == {"run": run_id, "queued": 4, "running": 2}
        fed.result(timeout=10)  # the aborted requests free their slots well before their 30 s
        assert pipeline.counters.fenced_off == 2  # the aborted attempts' late writes changed nothing
    with sessions() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.CANCELLED}
        assert set(session.scalars(select(Attempt.outcome))) == {AttemptOutcome.CANCELLED}
        assert session.scalar(select(func.count()).select_from(Result)) == 0


def test_reconcile_republishes_jobs_whose_messages_redis_lost(
    postgres_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name)
    folder = _folder(tmp_path / "imgs", 40)
    submitted = vlmbatch_json(["submit", str(folder), "--question", "What?", "--json"], env)
    assert isinstance(submitted, dict) and submitted["submitted"] == 40
    redis.Redis.from_url(redis_url).flushdb()  # Redis restarted without its data

    report = vlmbatch_json(["reconcile", "--grace", "0", "--json"], env)
    assert report == {"leases_requeued": 0, "leases_failed": 0, "republished": 40}
    again = vlmbatch_json(["reconcile", "--grace", "0", "--json"], env)
    assert again == {"leases_requeued": 0, "leases_failed": 0, "republished": 0}  # now they are there

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        from vlmbatch.schema.ledger.database import open_ledger

        _, sessions = open_ledger(postgres_url)
        counts = wait_until_done(sessions, submitted["run"], timeout=120)
    finally:
        stop_worker(worker)
    assert counts == {JobState.SUCCEEDED: 40}


def test_reconcile_takes_back_expired_leases_and_republishes_them(
    postgres_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name)
    submitted = vlmbatch_json(["submit", str(_folder(tmp_path / "imgs", 3)), "--question", "What?", "--json"], env)
    assert isinstance(submitted, dict)
    from vlmbatch.schema.ledger.database import open_ledger

    _, sessions = open_ledger(postgres_url)
    with sessions() as session, session.begin():
        ids = list(session.scalars(select(Job.id)))
        claim_jobs(session, job_ids=ids, worker="dead-worker", lease_seconds=60)
        session.execute(update(Job).values(lease_expires_at=utcnow()))
    redis.Redis.from_url(redis_url).flushdb()
    report = vlmbatch_json(["reconcile", "--json"], env)
    assert isinstance(report, dict) and report["leases_requeued"] == 3
    depth = redis.Redis.from_url(redis_url).llen(queue_name)
    assert depth == 1  # the three jobs in one message


@pytest.mark.parametrize("statuses", ["queued", "running,failed"])
def test_only_finished_jobs_can_be_resubmitted(sqlite_url: str, tmp_path: Path, statuses: str) -> None:
    from tests.processes import vlmbatch

    settings = settings_for(sqlite_url)
    with running_pipeline(settings) as (_, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 1))
    done = vlmbatch(["resubmit", str(run_id), "--status", statuses], {"VLMBATCH_DATABASE_URL": sqlite_url})
    assert done.returncode == 2 and "only finished jobs" in done.stderr
