"""Stopping and supervision of the worker's pipeline: a stop (what SIGTERM does) in the middle of a burst
of finishing jobs commits every finished generation and hands the rest back; a background task that dies
stops the worker with a non-zero status and its jobs come back; database retries are bounded."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, select
from sqlalchemy.exc import OperationalError
from sqlalchemy.orm import Session, sessionmaker

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import settings_for, submit_folder
from vlmbatch.media.stores import ObjectStores
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Attempt, Job
from vlmbatch.worker.engines.base import EngineStats, Generation, GenerationRequest
from vlmbatch.worker.engines.fake import FakeBehaviour, FakeEngine
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.pipeline import Pipeline, WorkerStopping
from vlmbatch.worker.pipeline.supervision import BackgroundTaskDied
from vlmbatch.worker.process.main import EXIT_TASK_DIED, exit_status
from vlmbatch.worker.transport.publisher import NullPublisher

JOBS = 60


class StaggeredEngine(FakeEngine):
    """Request k finishes k * 10 ms after it starts: a steady burst of finishing jobs. Records the jobs
    whose generation finished."""

    def __init__(self, model: str) -> None:
        super().__init__(model)
        self.finished: list[str] = []
        self._started = 0

    async def generate(self, request: GenerationRequest) -> Generation:
        self._started += 1
        await asyncio.sleep(0.01 * self._started)
        generation = await super().generate(request)
        self.finished.append(request.request_id)
        return generation


class BrokenHeartbeatEngine(FakeEngine):
    """Generates slowly; its statistics (which the heartbeat reads) raise."""

    def stats(self) -> EngineStats:
        raise RuntimeError("engine statistics are broken")


def _folder(path: Path, count: int) -> Path:
    path.mkdir()
    for i in range(count):
        (path / f"{i:03d}.jpg").write_bytes(good_jpeg(16, 16, seed=i))
    return path


@contextmanager
def _pipeline(settings: Settings, engine: FakeEngine) -> Iterator[tuple[Pipeline, sessionmaker[Session], Any]]:
    db_engine, sessions = open_ledger(settings.resolved_database_url())
    pipeline = Pipeline(
        settings=settings,
        engine=engine,
        sessions=sessions,
        store=ObjectStores(s3_endpoint_url=None),
        publisher=NullPublisher(),
        worker_id="test-worker",
    )
    pipeline.start()
    try:
        yield pipeline, sessions, db_engine
    finally:
        pipeline.stop()


def _states(sessions: sessionmaker[Session], run_id: int) -> dict[str, str]:
    with sessions() as session:
        return {
            f"job-{job_id}-attempt-{attempt}": state
            for job_id, attempt, state in session.execute(
                select(Job.id, Job.current_attempt_id, Job.state).where(Job.run_id == run_id)
            )
        }


def _slow_result_commits(db_engine: Any, seconds: float) -> None:
    """Transactions that store results take `seconds` to commit: outcomes pile up in the writer's queue
    while more generations finish (and handing jobs back stays fast)."""

    def mark(connection: Any, _cursor: Any, statement: str, *_args: Any) -> None:
        if statement.lstrip().upper().startswith("INSERT INTO RESULTS"):
            connection.info["stores_results"] = True

    def slow(connection: Any) -> None:
        if connection.info.pop("stores_results", False):
            time.sleep(seconds)

    event.listen(db_engine, "before_cursor_execute", mark)
    event.listen(db_engine, "commit", slow)


def test_stopping_during_a_burst_of_finishing_jobs_commits_every_finished_generation(
    postgres_url: str, tmp_path: Path
) -> None:
    settings = settings_for(postgres_url, max_num_seqs=JOBS, inflight_jobs=JOBS, jobs_per_message=JOBS)
    engine = StaggeredEngine("fake-model")
    with _pipeline(settings, engine) as (pipeline, sessions, db_engine):
        run_id = submit_folder(sessions, _folder(tmp_path / "imgs", JOBS))
        _slow_result_commits(db_engine, 0.5)
        pipeline.feed_run(run_id)
        deadline = time.monotonic() + 30
        while len(engine.finished) < JOBS // 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        pipeline.stop(grace_s=0.0)
        finished = set(engine.finished)
    assert JOBS // 2 <= len(finished) < JOBS  # stopped in the middle of the burst
    states = _states(sessions, run_id)
    assert JobState.RUNNING.value not in states.values()
    succeeded = {request for request, state in states.items() if state == JobState.SUCCEEDED.value}
    # Every finished generation is committed; every other job is back in the queue.
    assert {r.rsplit("-attempt-", 1)[0] for r in finished} == {r.rsplit("-attempt-", 1)[0] for r in succeeded}
    assert set(states.values()) <= {JobState.SUCCEEDED.value, JobState.QUEUED.value}


def test_a_heartbeat_that_raises_stops_the_worker_non_zero_and_hands_its_jobs_back(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = settings_for(sqlite_url, heartbeat_seconds=0.2)
    engine = BrokenHeartbeatEngine("fake-model", FakeBehaviour(latency_s=30.0))
    with _pipeline(settings, engine) as (pipeline, sessions, _db_engine):
        run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 4))
        fed = pipeline.feed_run(run_id)
        assert pipeline.fatal_event.wait(timeout=20), "the worker went on without its heartbeat"
        with pytest.raises(WorkerStopping):
            fed.result(timeout=10)
        fatal = pipeline.fatal
        with sessions() as session:
            states = set(session.scalars(select(Job.state).where(Job.run_id == run_id)))
            outcomes = set(session.scalars(select(Attempt.outcome)))
    assert isinstance(fatal, BackgroundTaskDied) and "heartbeat" in str(fatal)
    assert "engine statistics are broken" in str(fatal)
    assert states == {JobState.QUEUED.value}  # handed back, for another worker
    assert outcomes == {AttemptOutcome.ABANDONED.value}
    assert exit_status(fatal=fatal, stalled=False, celery_exitcode=0) == EXIT_TASK_DIED != 0


def test_database_retries_are_bounded() -> None:
    calls = 0

    def refuses() -> None:
        nonlocal calls
        calls += 1
        raise OperationalError("SELECT 1", {}, Exception("the database is gone"))

    async def call() -> None:
        pool = DatabasePool(sessionmaker(), retry_seconds=1.5)
        try:
            await pool.blocking(refuses, retry=True)
        finally:
            pool.shutdown()

    with pytest.raises(OperationalError):
        asyncio.run(call())
    assert calls >= 2  # retried, then given up


def test_a_claim_waiting_for_room_when_the_worker_stops_is_told_so(sqlite_url: str, tmp_path: Path) -> None:
    """A Celery task blocked in `admit` gets WorkerStopping (its message is requeued), not a cancellation
    that would acknowledge the message."""
    import threading

    settings = settings_for(sqlite_url, max_num_seqs=1, inflight_jobs=1, jobs_per_message=1)
    engine = FakeEngine("fake-model", FakeBehaviour(latency_s=30.0))
    with _pipeline(settings, engine) as (pipeline, sessions, _db_engine):
        submit_folder(sessions, _folder(tmp_path / "imgs", 2))
        assert pipeline.admit(1) == 1  # the only slot
        outcome: list[BaseException | int] = []

        def waiting_claim() -> None:
            try:
                outcome.append(pipeline.admit(1))
            except BaseException as error:  # what the Celery task would see
                outcome.append(error)

        claimer = threading.Thread(target=waiting_claim)
        claimer.start()
        time.sleep(0.3)  # let the second claim reach the loop and wait for the slot
        pipeline.stop(grace_s=0.0)
        claimer.join(timeout=30)
    assert len(outcome) == 1 and isinstance(outcome[0], WorkerStopping)


def test_a_stopped_worker_hands_its_jobs_back_and_deletes_its_heartbeat_row(postgres_url: str, tmp_path: Path) -> None:
    from vlmbatch.schema.ledger.tables import Worker

    settings = settings_for(postgres_url, heartbeat_seconds=0.2)
    engine = FakeEngine("fake-model", FakeBehaviour(latency_s=30.0))
    with _pipeline(settings, engine) as (pipeline, sessions, _db_engine):
        run_id = submit_folder(sessions, _folder(tmp_path / "imgs", 4))
        pipeline.feed_run(run_id)
        deadline = time.monotonic() + 20
        beating: list[str] = []
        while not beating and time.monotonic() < deadline:
            time.sleep(0.05)
            with sessions() as session:
                beating = list(session.scalars(select(Worker.name)))
        assert beating == ["test-worker"]  # it beat while its jobs generated
        pipeline.stop(grace_s=0.0)
        with sessions() as session:
            assert list(session.scalars(select(Worker.name))) == []
            assert set(session.scalars(select(Job.state).where(Job.run_id == run_id))) == {JobState.QUEUED.value}
