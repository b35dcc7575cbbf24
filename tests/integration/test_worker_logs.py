"""A worker's JSON logs are log records only (no banner), and what it logs while handling a job carries the
job's run, job, attempt and worker ids."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy import select

from tests.conftest import fill_bucket
from tests.fixtures.bad_images import good_jpeg
from tests.processes import service_env, start_worker, stop_worker, vlmbatch_json, wait_until_done
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Attempt

JOBS = 12


def test_json_worker_logs_carry_the_ids_of_each_job_and_nothing_else(
    postgres_url: str, redis_url: str, queue_name: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    fill_bucket(s3_endpoint, s3_bucket, {f"logs/{i:02d}.jpg": good_jpeg(16, 16) for i in range(JOBS)})
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        s3_endpoint=s3_endpoint,
        VLMBATCH_LOG_FORMAT="json",
        VLMBATCH_WORKER_ID="logs-w0",
    )
    run = vlmbatch_json(["submit", f"s3://{s3_bucket}/logs/", "-q", "What is it?", "--json"], env)
    assert isinstance(run, dict)
    log_file = tmp_path / "worker.log"
    worker = start_worker(env, log_file, "--loglevel", "DEBUG")
    try:
        _, sessions = open_ledger(postgres_url)
        wait_until_done(sessions, run["run"], timeout=120)
    finally:
        stop_worker(worker)
    lines = log_file.read_text().splitlines()
    entries = [json.loads(line) for line in lines]  # a banner or a bare print would fail here
    assert entries and all(entry["worker"] == "logs-w0" for entry in entries)
    finished = {
        e["attempt_id"]: e for e in entries if e["logger"].endswith("pipeline.running") and "succeeded" in e["message"]
    }
    with sessions() as session:
        attempts = session.execute(select(Attempt.id, Attempt.job_id)).all()
    assert len(attempts) == JOBS
    for attempt_id, job_id in attempts:
        entry = finished[attempt_id]
        assert (entry["run_id"], entry["job_id"]) == (run["run"], job_id)
