"""Only JSON claim tokens run: a pickled message (which could carry code) is refused by the worker, a
JSON message that is no token is dropped, and a message in the format before tokens (a list of job ids)
still claims as many jobs."""

from __future__ import annotations

import time
from pathlib import Path

from celery import Celery
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.processes import service_env, start_worker, stop_worker, wait_until_done
from vlmbatch.schema.contracts.models import JobSpec, RunSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.enqueue import insert_jobs
from vlmbatch.schema.ledger.runs import create_or_reuse_run
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.celery_app import RUN_JOBS_TASK, make_celery
from vlmbatch.worker.transport.publisher import CeleryPublisher


def test_a_pickled_message_is_refused_and_a_json_token_runs(
    tmp_path: Path, postgres_url: str, redis_url: str, queue_name: str
) -> None:
    image = tmp_path / "a.jpg"
    image.write_bytes(good_jpeg(32, 32))
    _, sessions = open_ledger(postgres_url)
    run = create_or_reuse_run(
        # The run's source folder is where its local images may be read from.
        sessions,
        name="r",
        settings=RunSettings(model="fake-model"),
        queue=queue_name,
        source=tmp_path.as_uri(),
    )
    with sessions() as session, session.begin():
        specs = [JobSpec(images=(image.as_uri(),), question=q) for q in ("q1", "q2")]
        job_id, second = insert_jobs(session, run_id=run.id, specs=specs)

    hostile = Celery("hostile", broker=redis_url, set_as_current=False)
    hostile.conf.update(task_serializer="pickle", accept_content=["pickle"])
    hostile.send_task(RUN_JOBS_TASK, args=[[job_id]], queue=queue_name, serializer="pickle")

    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name)
    log = tmp_path / "worker.log"
    worker = start_worker(env, log)
    try:
        deadline = time.monotonic() + 60
        while b"ContentDisallowed" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.5)
        with sessions() as session:
            assert session.scalar(select(Job.state).where(Job.id == job_id)) == JobState.QUEUED  # not run
        settings = Settings(broker_url=redis_url, queue=queue_name)
        app = make_celery(settings)
        app.send_task(RUN_JOBS_TASK, args=[{"claim": "everything"}], queue=queue_name)
        while b"malformed message" not in log.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.5)
        app.send_task(RUN_JOBS_TASK, args=[[second]], queue=queue_name)  # an old producer's message
        states: dict[int, str] = {}
        while JobState.SUCCEEDED not in states.values() and time.monotonic() < deadline:
            time.sleep(0.25)
            with sessions() as session:
                states = {i: s for i, s in session.execute(select(Job.id, Job.state).where(Job.run_id == run.id))}
        # It asked for one job: the oldest queued one was claimed (tokens do not name jobs).
        assert states == {job_id: JobState.SUCCEEDED, second: JobState.QUEUED}
        CeleryPublisher(app, jobs_per_message=16).publish(queue_name, 1)
        assert wait_until_done(sessions, run.id, timeout=60) == {JobState.SUCCEEDED: 2}
    finally:
        stop_worker(worker)
    assert b"ContentDisallowed" in log.read_bytes()
