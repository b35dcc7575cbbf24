"""The whole control path on real services: S3 server over HTTP → Redis → a real Celery worker process
(fake engine) → PostgreSQL."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import func, select

from tests.conftest import fill_bucket
from tests.fixtures.bad_images import good_jpeg
from tests.processes import service_env, start_worker, stop_worker, vlmbatch_json, wait_until_done
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Attempt, Result

JOBS = 500


def test_500_jobs_from_s3_through_redis_and_a_celery_worker_land_in_postgres_once_each(
    postgres_url: str, redis_url: str, queue_name: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    image = good_jpeg(32, 32)
    fill_bucket(s3_endpoint, s3_bucket, {f"set/{i:04d}.jpg": image for i in range(JOBS)}, threads=16)
    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name, s3_endpoint=s3_endpoint)
    source = f"s3://{s3_bucket}/set/"

    first = vlmbatch_json(["submit", source, "--question", "What is it?", "--json"], env)
    assert isinstance(first, dict) and first["submitted"] == JOBS and first["skipped"] == 0

    worker = start_worker(env, tmp_path / "worker.log")
    try:
        _, sessions = open_ledger(postgres_url)
        counts = wait_until_done(sessions, first["run"], timeout=180)
    finally:
        exit_code = stop_worker(worker)
    log = (tmp_path / "worker.log").read_text()
    assert exit_code == 0, log[-3000:]
    assert counts == {JobState.SUCCEEDED: JOBS}, log[-3000:]
    with sessions() as session:
        attempts = session.execute(select(Attempt.outcome, func.count()).group_by(Attempt.outcome)).all()
        results_per_job = set(session.scalars(select(func.count()).select_from(Result).group_by(Result.job_id)))
    assert attempts == [(AttemptOutcome.SUCCEEDED, JOBS)]  # one attempt each
    assert results_per_job == {1}  # one result each

    again = vlmbatch_json(["submit", source, "--question", "What is it?", "--json"], env)
    assert again == {
        "run": first["run"],
        "submitted": 0,
        "skipped": JOBS,
        "rejected": 0,
        "first_rejects": [],
        "unplaced": 0,
    }
    status = vlmbatch_json(["status", str(first["run"]), "--json"], env)
    assert status == {
        "run": first["run"],
        "total": JOBS,
        "counts": {"queued": 0, "running": 0, "succeeded": JOBS, "failed": 0, "truncated": 0, "cancelled": 0},
        "errors": {},
        "priority": 0,
        "weight": 1,
        "paused": False,
        "paused_since": None,
        "pause_reason": None,
        "breaker_trips": 0,
        "rejected": 0,
    }
