"""A run failing for a reason that is not its rows' pauses itself, with the reason and its first error:
object-store credentials refused (a moto server with IAM on, over HTTP), a model that does not load.
A run with 10% unreadable images never trips, however tight the thresholds. Resume closes the breaker
and the run finishes. The fake engine drives the pipeline (the breaker is control plane)."""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg, truncated_jpeg, unsupported_format
from tests.integration.ledger_helpers import ledger, make_run
from tests.integration.pipeline_helpers import running_pipeline, settings_for
from tests.integration.test_storage_denied import BUCKET, guarded_s3  # noqa: F401  (the fixture)
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ConfigurationError, ErrorType
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.breaker import BreakerPolicy
from vlmbatch.schema.ledger.claims import claim_next
from vlmbatch.schema.ledger.controls import resume_run
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.outcomes import AttemptReport, record_outcomes
from vlmbatch.schema.ledger.tables import Run, RunBreaker
from vlmbatch.worker.engines.fake import FakeEngine
from vlmbatch.worker.pipeline.pipeline import Pipeline
from vlmbatch.worker.transport.publisher import NullPublisher

# Thresholds a unit test can reach; the rules are the defaults' (tests/unit of the settings check those).
TIGHT = {"breaker_streak": 5, "breaker_min_failures": 5, "breaker_window": 40}


def _run(sessions, run_id: int) -> Run:  # type: ignore[no-untyped-def]
    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None
        session.expunge(run)
        return run


def test_storage_credentials_refused_trip_the_breaker_and_resume_finishes_the_run(
    guarded_s3: str,  # noqa: F811
    postgres_url: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import boto3

    admin = boto3.session.Session().client("s3", endpoint_url=guarded_s3)  # the fixture's key, not a cached one
    for i in range(40):
        admin.put_object(Bucket=BUCKET, Key=f"open/{i}.jpg", Body=good_jpeg(16, 16, seed=i))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps({"image": f"s3://{BUCKET}/open/{i}.jpg"}) + "\n" for i in range(40)))
    good_key = {k: v for k, v in os.environ.items() if k.startswith("AWS_")}
    settings = settings_for(postgres_url, s3_endpoint_url=guarded_s3, max_num_seqs=4, **TIGHT)  # 8 in flight
    # Overnight the key is rotated away: every fetch is refused (InvalidAccessKeyId).
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "AKIA" + uuid.uuid4().hex[:16].upper())
    with running_pipeline(settings) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=open_source(
                str(manifest), prompting=Prompting.of("What?"), stores=ObjectStores(s3_endpoint_url=guarded_s3)
            ),
            settings=RunSettings(model="fake-model"),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=60)  # returns once the run is paused
        trips_metric = pipeline.metrics.registry.get_sample_value(
            "vlmbatch_breaker_trips_total", {"run": str(report.run)}
        )
        assert trips_metric == 1
    run = _run(sessions, report.run)
    assert run.paused_at is not None
    assert run.pause_reason is not None and run.pause_reason.startswith("circuit breaker: ")
    assert "storage.denied" in run.pause_reason and "InvalidAccessKeyId" in run.pause_reason
    with sessions() as session:
        counts = read_counts(session, report.run).by_state
        trips = session.get(RunBreaker, report.run)
    assert trips is not None and trips.trips == 1
    # The queue did not drain into errors: no job failed for good, most were never tried.
    assert counts[JobState.FAILED.value] == 0 and counts[JobState.QUEUED.value] == 40

    # The key is fixed and a worker (re)started; the run stays paused until resumed, then finishes.
    for name, value in good_key.items():
        monkeypatch.setenv(name, value)
    with running_pipeline(settings) as (pipeline, sessions):
        assert pipeline.admit(16) == 0
        with sessions() as session, session.begin():
            assert resume_run(session, run_id=report.run) == 40
        pipeline.feed_run(report.run).result(timeout=60)
    with sessions() as session:
        assert read_counts(session, report.run).by_state[JobState.SUCCEEDED.value] == 40
        assert session.get(RunBreaker, report.run).tripped_at is None  # type: ignore[union-attr]
    assert _run(sessions, report.run).paused_at is None


class _ModelThatDoesNotLoad(FakeEngine):
    async def start(self) -> None:
        raise ConfigurationError(f"cannot load model {self.model!r}: no config.json in /models/{self.model}")


def test_a_model_that_does_not_load_trips_the_breaker_of_the_runs_it_would_serve(postgres_url: str) -> None:
    settings = settings_for(postgres_url, breaker_streak=3)
    sessions = ledger(postgres_url)
    served, _ = make_run(sessions, name="served", jobs=10, model="fake-model")
    elsewhere, _ = make_run(sessions, name="elsewhere", jobs=10, model="other-model")
    for restart in range(3):  # a supervisor restarting the crashing worker
        pipeline = Pipeline(
            settings=settings,
            engine=_ModelThatDoesNotLoad(settings.model),
            sessions=sessions,
            store=ObjectStores.from_settings(settings),
            publisher=NullPublisher(),
            worker_id=f"w-{restart}",
        )
        with pytest.raises(ConfigurationError):
            pipeline.start()
        pipeline.stop()
    run = _run(sessions, served)
    assert run.paused_at is not None and run.pause_reason is not None
    assert "3 failures in a row" in run.pause_reason
    assert "engine.start: ConfigurationError: cannot load model 'fake-model'" in run.pause_reason
    assert _run(sessions, elsewhere).paused_at is None  # another model's run: not this engine's to judge


def test_a_run_with_ten_percent_unreadable_images_never_trips(database_url: str, tmp_path: Path) -> None:
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(60):
        (folder / f"{i:03}.jpg").write_bytes(truncated_jpeg() if i % 10 == 3 else good_jpeg(16, 16, seed=i))
    # Thresholds so tight that any unreadable image counted would trip it.
    settings = settings_for(database_url, breaker_streak=1, breaker_min_failures=1, breaker_ratio=0.01)
    with running_pipeline(settings) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=open_source(str(folder), prompting=Prompting.of("What?"), stores=ObjectStores()),
            settings=RunSettings(model="fake-model"),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=60)
    with sessions() as session:
        kept = read_counts(session, report.run)
        breaker = session.get(RunBreaker, report.run)
    assert kept.by_state[JobState.SUCCEEDED.value] == 54
    assert kept.errors == {ErrorType.INPUT_UNREADABLE.value: 6}
    assert _run(sessions, report.run).paused_at is None
    assert breaker is None  # good and per-row outcomes never write it


@pytest.mark.parametrize(
    ("error", "trips"),
    [
        (ErrorType.STORAGE_DENIED, True),
        (ErrorType.ENGINE_OOM, True),
        (ErrorType.INPUT_UNSUPPORTED, True),  # on every job: systematic
        (ErrorType.INPUT_UNREADABLE, False),
        (ErrorType.INPUT_TOO_LARGE, False),
        (ErrorType.INPUT_NOT_FOUND, False),
    ],
)
def test_which_failures_trip_the_breaker(database_url: str, error: ErrorType, trips: bool) -> None:
    sessions = ledger(database_url)
    run_id, _ = make_run(sessions, jobs=20)
    policy = BreakerPolicy(streak=10, window=500, ratio=0.2, min_failures=50)
    with sessions() as session, session.begin():
        claimed = claim_next(session, limit=10, worker="w", lease_seconds=60, run_id=run_id)
        failed = [
            AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.FAILED, error, f"job {c.job_id}") for c in claimed
        ]
        record_outcomes(session, failed, breaker=policy)
    run = _run(sessions, run_id)
    assert (run.paused_at is not None) is trips
    if trips:
        assert f"first error {error.value}: job {claimed[0].job_id}" in (run.pause_reason or "")
    with sessions() as session:
        assert (session.scalar(select(RunBreaker.trips).where(RunBreaker.run_id == run_id)) or 0) == int(trips)


def test_the_window_rule_trips_on_a_fifth_of_systemic_failures_and_not_below(database_url: str) -> None:
    sessions = ledger(database_url)
    policy = BreakerPolicy(streak=1000, window=100, ratio=0.2, min_failures=10)
    for share, trips in ((4, True), (6, False)):  # every 4th attempt (25%), every 6th (17%)
        run_id, _ = make_run(sessions, name=f"every-{share}", jobs=80)
        with sessions() as session, session.begin():
            claimed = claim_next(session, limit=80, worker="w", lease_seconds=60, run_id=run_id)
            reports = [
                AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.FAILED, ErrorType.STORAGE_TRANSIENT, "reset")
                if i % share == 0
                else AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.SUCCEEDED)
                for i, c in enumerate(claimed)
            ]
            record_outcomes(session, reports, breaker=policy)
        assert (_run(sessions, run_id).paused_at is not None) is trips


def test_one_engine_death_counts_once_however_many_jobs_it_handed_back(database_url: str) -> None:
    sessions = ledger(database_url)
    run_id, _ = make_run(sessions, jobs=120)
    policy = BreakerPolicy(streak=3, window=500, ratio=0.2, min_failures=3)
    for death in range(3):
        with sessions() as session, session.begin():
            claimed = claim_next(session, limit=40, worker=f"w{death}", lease_seconds=60, run_id=run_id)
            handed_back = [
                AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.ABANDONED, ErrorType.ENGINE_DEAD, "engine died")
                for c in claimed
            ]
            record_outcomes(session, handed_back, breaker=policy)
        with sessions() as session:
            breaker = session.get(RunBreaker, run_id)
            assert breaker is not None and breaker.streak == death + 1
    run = _run(sessions, run_id)
    assert run.pause_reason is not None and "3 failures in a row" in run.pause_reason  # a crash loop trips it


def test_vlmbatch_run_stops_once_its_run_trips_and_says_so(sqlite_url: str, tmp_path: Path) -> None:
    from tests.processes import vlmbatch

    folder = tmp_path / "unsupported"
    folder.mkdir()
    for i in range(12):  # every job the same unsupported input: systematic
        (folder / f"{i:02}.jpg").write_bytes(unsupported_format())
    env = {
        "VLMBATCH_DATABASE_URL": sqlite_url,
        "VLMBATCH_ENGINE": "fake",
        "VLMBATCH_BREAKER_STREAK": "4",
        "VLMBATCH_MAX_NUM_SEQS": "1",
    }
    done = vlmbatch(["run", str(folder), "-q", "What?", "--model", "fake-model"], env)
    assert done.returncode == 3, done.stderr
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("run 1 is paused: circuit breaker: ") and "input.unsupported" in last
    assert "`vlmbatch resume 1`" in last
