"""The worker pipeline with the fake engine: outcomes, typed failures, retries, continuous batching and
engine death, against a real ledger. (The same paths run on the real vLLM engine in tests/engine.)"""

from __future__ import annotations

import asyncio
import dataclasses
import threading
import time
from pathlib import Path

import pytest
from sqlalchemy import func, select

from tests.fixtures.bad_images import good_jpeg, write_mixed_folder
from tests.integration.pipeline_helpers import jobs_by_name, running_pipeline, settings_for, submit_folder
from vlmbatch.media.stores import ObjectStores
from vlmbatch.schema.contracts.errors import EngineDead, ErrorType, StorageTransient
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger import outcomes
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.engines.base import Generation, GenerationRequest
from vlmbatch.worker.engines.fake import FakeBehaviour, FakeEngine


def _folder(tmp_path: Path, count: int, size: tuple[int, int] = (64, 48)) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir(parents=True)
    for i in range(count):
        (folder / f"img-{i:03d}.jpg").write_bytes(good_jpeg(*size, seed=i))
    return folder


def test_good_images_succeed_and_each_hostile_one_fails_with_its_type(database_url: str, tmp_path: Path) -> None:
    expected = write_mixed_folder(tmp_path / "mixed", good=6)
    with running_pipeline(settings_for(database_url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, tmp_path / "mixed")
        pipeline.feed_run(run_id).result(timeout=60)
    jobs = jobs_by_name(sessions, run_id)
    assert set(jobs) == set(expected)
    for name, error in expected.items():
        job = jobs[name]
        if error is None:
            assert job.state == JobState.SUCCEEDED, (name, job.error_type, job.error_message)
        else:
            assert (job.state, job.error_type) == (JobState.FAILED, error), (name, job.error_message)
            assert job.error_message and name in job.error_message


def test_a_succeeded_job_stores_trace_answer_tokens_and_timings(sqlite_url: str, tmp_path: Path) -> None:
    with running_pipeline(settings_for(sqlite_url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 1), samples=2)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        attempt = session.scalars(select(Attempt)).one()
        results = session.scalars(select(Result).order_by(Result.sample_index)).all()
    assert attempt.outcome == AttemptOutcome.SUCCEEDED
    assert attempt.prompt_tokens and attempt.completion_tokens == sum(r.completion_tokens for r in results)
    assert None not in (attempt.queue_wait_s, attempt.fetch_s, attempt.decode_s, attempt.generation_s)
    assert [r.sample_index for r in results] == [0, 1]
    for result in results:
        assert result.reasoning and result.answer.startswith("answer-") and result.trace_closed
        assert result.raw_text.endswith(result.answer) and "</think>" in result.raw_text
        assert result.reasoning_tokens and result.answer_tokens == result.completion_tokens - result.reasoning_tokens


def test_a_trace_cut_by_max_tokens_ends_truncated_keeping_the_partial_trace(sqlite_url: str, tmp_path: Path) -> None:
    with running_pipeline(settings_for(sqlite_url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 2), max_tokens=5)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        states = set(session.scalars(select(Job.state)))
        results = session.scalars(select(Result)).all()
    assert states == {JobState.TRUNCATED}
    assert all(r.answer == "" and r.reasoning and not r.trace_closed and r.finish_reason == "length" for r in results)


def test_a_prompt_over_the_context_fails_that_job_and_its_neighbours_succeed(sqlite_url: str, tmp_path: Path) -> None:
    folder = _folder(tmp_path, 3)
    (folder / "huge.jpg").write_bytes(good_jpeg(2000, 2000))
    behaviour = FakeBehaviour(max_model_len=2000)  # one tile is 256 tokens; the huge image needs 13 tiles
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder)
        pipeline.feed_run(run_id).result(timeout=30)
    jobs = jobs_by_name(sessions, run_id)
    assert (jobs["huge.jpg"].state, jobs["huge.jpg"].error_type) == (JobState.FAILED, ErrorType.PROMPT_TOO_LONG)
    assert all(j.state == JobState.SUCCEEDED for n, j in jobs.items() if n != "huge.jpg")


class FlakyStore:
    """Fails the first `failures` fetches of every object (whose URI contains `only`) with a transient
    error."""

    def __init__(self, failures: int, *, only: str = "") -> None:
        self._inner = ObjectStores(s3_endpoint_url=None)
        self._failures = failures
        self._only = only
        self._seen: dict[str, int] = {}
        self._lock = threading.Lock()

    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        with self._lock:
            self._seen[uri] = self._seen.get(uri, 0) + 1
            if self._only in uri and self._seen[uri] <= self._failures:
                raise StorageTransient(f"{uri}: SlowDown")
        return self._inner.fetch(uri, max_bytes=max_bytes)


def test_transient_storage_errors_are_retried_until_they_pass(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes, "RETRY_BASE_SECONDS", 0.01)
    with running_pipeline(settings_for(sqlite_url), store=FlakyStore(failures=2)) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 3), max_transient_retries=3)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.SUCCEEDED}
        outcomes_seen = session.execute(select(Attempt.outcome, Attempt.error_type).order_by(Attempt.id)).all()
    assert len(outcomes_seen) == 9  # 3 jobs x (2 transient failures + 1 success): history is kept
    assert outcomes_seen.count((AttemptOutcome.FAILED, ErrorType.STORAGE_TRANSIENT)) == 6


def test_transient_errors_past_the_cap_fail_the_job_with_the_last_error(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outcomes, "RETRY_BASE_SECONDS", 0.01)
    with running_pipeline(settings_for(sqlite_url), store=FlakyStore(failures=10)) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 1), max_transient_retries=2)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        attempts = session.scalar(select(func.count()).select_from(Attempt))
    assert (job.state, job.error_type, attempts) == (JobState.FAILED, ErrorType.STORAGE_TRANSIENT, 3)


def test_small_jobs_finish_before_a_long_one_submitted_first(sqlite_url: str, tmp_path: Path) -> None:
    """Continuous batching: no job waits for the slowest one in flight."""
    behaviour = FakeBehaviour(tokens_per_second=200)
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        long_run = submit_folder(sessions, _folder(tmp_path / "long", 1), max_tokens=2000, ignore_eos=True)
        short_run = submit_folder(sessions, _folder(tmp_path / "short", 6), max_tokens=20, ignore_eos=True)
        long_done = pipeline.feed_run(long_run)
        time.sleep(0.3)
        pipeline.feed_run(short_run).result(timeout=30)
        assert not long_done.done()  # every short job was written while the long one still generated
        long_done.result(timeout=30)
    with sessions() as session:
        finished = dict(session.execute(select(Job.run_id, func.max(Job.finished_at)).group_by(Job.run_id)).all())
    assert finished[short_run] < finished[long_run]


class DyingEngine(FakeEngine):
    """Dies on its third request, like vLLM's engine core crashing mid-run."""

    async def generate(self, request: GenerationRequest) -> Generation:
        if self.requests_seen >= 2:
            await asyncio.sleep(0.05)
            raise EngineDead("engine core process exited unexpectedly")
        return await super().generate(request)


def test_engine_death_hands_every_unfinished_job_back(database_url: str, tmp_path: Path) -> None:
    engine = DyingEngine("fake-model", FakeBehaviour(latency_s=0.2))
    with running_pipeline(settings_for(database_url), engine=engine) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 6))
        with pytest.raises(Exception, match="engine died"):
            pipeline.feed_run(run_id).result(timeout=30)
        assert pipeline.fatal_event.wait(10)
    with sessions() as session:
        states = session.execute(select(Job.state, func.count()).group_by(Job.state)).all()
        handed_back = session.scalars(
            select(Attempt.error_message).where(Attempt.outcome == AttemptOutcome.ABANDONED)
        ).all()
    assert JobState.RUNNING not in dict(states)  # nothing left leased to the dead worker
    assert sum(n for _, n in states) == 6
    assert handed_back and all("engine died" in (m or "") for m in handed_back)


class NulEngine(FakeEngine):
    """A model that emits NUL characters (PostgreSQL cannot store them in text)."""

    async def generate(self, request: GenerationRequest) -> Generation:
        generation = await super().generate(request)
        completions = [dataclasses.replace(c, text="bad\x00trace</think>an\x00swer") for c in generation.completions]
        return dataclasses.replace(generation, completions=completions)


def test_nul_characters_in_model_output_are_stored_as_replacement_characters(database_url: str, tmp_path: Path) -> None:
    engine = NulEngine("fake-model")
    with running_pipeline(settings_for(database_url), engine=engine) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 2))
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.SUCCEEDED}
        rows = session.execute(select(Result.reasoning, Result.answer)).all()
    assert rows == [("bad\ufffdtrace", "an\ufffdswer")] * 2


def test_an_outcome_the_database_refuses_fails_its_job_alone(
    sqlite_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from sqlalchemy.exc import DataError

    original = outcomes._result_values
    refused: set[int] = set()

    def refusing(report: outcomes.AttemptReport, sample: outcomes.SampleRecord, now: object) -> dict[str, object]:
        if not refused or report.job_id in refused:
            refused.add(report.job_id)  # the first job with samples: "the database" always refuses them
            raise DataError("INSERT", {}, Exception("value out of range"))
        return original(report, sample, now)  # type: ignore[arg-type]

    monkeypatch.setattr(outcomes, "_result_values", refusing)
    with running_pipeline(settings_for(sqlite_url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 5))
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        states = dict(session.execute(select(Job.id, Job.state)).all())
        failed = session.get(Job, next(iter(refused)))
    assert failed is not None and failed.state == JobState.FAILED and failed.error_type == ErrorType.INTERNAL
    assert "could not be stored" in (failed.error_message or "")
    assert [state for job, state in states.items() if job not in refused] == [JobState.SUCCEEDED] * 4


class HangingEngine(FakeEngine):
    """Accepts requests and never produces a token, like a wedged GPU."""

    async def generate(self, request: GenerationRequest) -> Generation:
        self._in_flight[request.request_id] = asyncio.Event()
        await asyncio.sleep(3600)
        raise AssertionError("unreachable")


def test_an_engine_that_stops_producing_tokens_makes_the_worker_give_its_jobs_back(
    sqlite_url: str, tmp_path: Path
) -> None:
    settings = settings_for(sqlite_url, engine_hang_seconds=1.0, heartbeat_seconds=0.3)
    with running_pipeline(settings, engine=HangingEngine("fake-model")) as (pipeline, sessions):
        run_id = submit_folder(sessions, _folder(tmp_path, 3))
        fed = pipeline.feed_run(run_id)
        assert pipeline.fatal_event.wait(20)
        assert "hung" in str(pipeline.fatal)
        with pytest.raises(Exception, match="hung"):
            fed.result(timeout=10)
    with sessions() as session:
        assert set(session.scalars(select(Job.state))) == {JobState.QUEUED}
        messages = set(session.scalars(select(Attempt.error_message)))
    assert all("hung" in (m or "") for m in messages)
