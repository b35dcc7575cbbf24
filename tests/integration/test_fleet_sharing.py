"""The issue's overnight fleet on real services: `vlmbatch submit` through Redis to a real `vlmbatch worker`
process (fake engine) on PostgreSQL. A 40-job evaluation submitted just after a 3,000-job captioning run
finishes while most of the large run is still queued (it used to wait for all of it); a paused run stays
paused across a worker restart and finishes once resumed. Verdicts from the ledger, no timings."""

from __future__ import annotations

import json
import time
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from tests.fixtures.bad_images import good_jpeg
from tests.processes import service_env, start_worker, stop_worker, vlmbatch, vlmbatch_json, wait_until_done
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.worker.transport.celery_app import make_celery
from vlmbatch.worker.transport.publisher import publisher_for


def _manifest(folder: Path, name: str, jobs: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img.jpg").write_bytes(good_jpeg(16, 16))
    path = folder / f"{name}.jsonl"
    path.write_text("".join(json.dumps({"image": "img.jpg", "question": f"{name} {i}?"}) + "\n" for i in range(jobs)))
    return path


def _counts(sessions: sessionmaker[Session], run_id: int) -> dict[str, int]:
    with sessions() as session:
        return read_counts(session, run_id).by_state


def _until(check, timeout: float = 120) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "not reached in time"
        time.sleep(0.1)


def test_a_small_run_behind_a_large_one_finishes_first_on_one_worker(
    postgres_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    # 20 ms a request, 8 at once: the large run alone would take about 8 s on this worker.
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        VLMBATCH_FAKE_LATENCY_S="0.02",
        VLMBATCH_MAX_NUM_SEQS="4",
    )
    large = vlmbatch_json(["submit", str(_manifest(tmp_path, "captions", 3000)), "--json"], env)
    small = vlmbatch_json(["submit", str(_manifest(tmp_path, "eval", 40)), "--json"], env)
    assert isinstance(large, dict) and isinstance(small, dict)
    _, sessions = open_ledger(postgres_url)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        counts = wait_until_done(sessions, small["run"], timeout=120)
        left = _counts(sessions, large["run"])[JobState.QUEUED.value]
        wait_until_done(sessions, large["run"], timeout=300)
    finally:
        stop_worker(worker)
    assert counts == {JobState.SUCCEEDED: 40}
    # Before: all 3,000 went first. Now the runs take turns, claim by claim.
    assert left > 2500, (left, (tmp_path / "worker.log").read_text()[-2000:])


def test_a_paused_run_stays_paused_across_a_worker_restart_and_finishes_once_resumed(
    postgres_url: str, redis_url: str, queue_name: str, tmp_path: Path
) -> None:
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        VLMBATCH_FAKE_LATENCY_S="0.05",
        VLMBATCH_MAX_NUM_SEQS="2",
    )
    submitted = vlmbatch_json(["submit", str(_manifest(tmp_path, "night", 400)), "--json"], env)
    assert isinstance(submitted, dict)
    run = submitted["run"]
    _, sessions = open_ledger(postgres_url)
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        _until(lambda: _counts(sessions, run)[JobState.SUCCEEDED.value] > 0)
        assert vlmbatch(["pause", str(run)], env).returncode == 0
        _until(lambda: _counts(sessions, run)[JobState.RUNNING.value] == 0)  # in-flight jobs finish
    finally:
        assert stop_worker(worker) == 0
    paused = _counts(sessions, run)
    assert paused[JobState.QUEUED.value] > 0 and paused[JobState.FAILED.value] == 0

    log = tmp_path / "restarted.log"
    worker = start_worker(env, log)  # restarted: it must not take the paused run back up
    try:
        reconciled = vlmbatch_json(["reconcile", "--grace", "0", "--json"], env)
        assert isinstance(reconciled, dict) and reconciled["republished"] == 0  # no token owed while paused
        # Stray tokens (an older producer, a duplicate): the worker takes each, and claims nothing.
        settings = Settings(database_url=postgres_url, broker_url=redis_url, queue=queue_name)  # type: ignore[call-arg]
        publisher_for(make_celery(settings), jobs_per_message=16).publish(queue_name, 64)
        _until(lambda: log.read_text().count("] succeeded in") >= 4)
        assert _counts(sessions, run) == paused
        resumed = vlmbatch_json(["resume", str(run), "--json"], env)
        assert resumed == {"run": run, "was_paused": True, "queued": paused[JobState.QUEUED.value]}
        counts = wait_until_done(sessions, run, timeout=180)
    finally:
        assert stop_worker(worker) == 0
    assert counts == {JobState.SUCCEEDED: 400}
