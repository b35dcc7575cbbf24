"""Continue, don't restart (issue 26), on the real vLLM CPU engine with the tiny model: a temperature-0
trace whose worker stopped mid-way, and a trace truncated at its max_tokens and resubmitted with more,
end token for token as the same trace generated in one go (the session's one shared engine)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.engine.conftest import engine_settings
from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, submit_folder
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.checkpoints import Checkpoint, checkpoints_of
from vlmbatch.schema.ledger.resubmit import resubmit_jobs
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.engines.thread import EngineThread

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

# Greedy, and long enough to stop in the middle of; R1V3's repetition penalty stays on (vLLM applies it
# to prompt and output tokens alike, so moving the checkpoint into the prompt changes nothing).
TOKENS = 1024
GREEDY = {"temperature": 0.0, "ignore_eos": True}


def _folder(root: Path, name: str) -> Path:
    """One image, the same bytes in every folder (each folder is a run of its own)."""
    folder = root / name
    folder.mkdir(parents=True)
    (folder / "img.jpg").write_bytes(good_jpeg(448, 448, seed=7))
    return folder


def _job(sessions: sessionmaker[Session], run_id: int) -> Job:
    with sessions() as session:
        (job,) = session.scalars(select(Job).where(Job.run_id == run_id)).all()
        session.expunge(job)
    return job


def _kept(sessions: sessionmaker[Session], job_id: int) -> Checkpoint | None:
    with sessions() as session:
        return checkpoints_of(session, job_ids=[job_id]).get(job_id)


def _whole_trace(sessions: sessionmaker[Session], job_id: int) -> tuple[tuple[int, ...], str]:
    """A length-truncated job's output: its kept token ids and its standing result's text."""
    kept = _kept(sessions, job_id)
    assert kept is not None and kept.finish_reason == "length"
    with sessions() as session:
        job = session.get(Job, job_id)
        assert job is not None and job.state == JobState.TRUNCATED.value
        text = session.scalar(select(Result.raw_text).where(Result.attempt_id == job.current_attempt_id))
    assert text is not None
    return kept.token_ids, text


def _attempts(sessions: sessionmaker[Session], job_id: int) -> list[Attempt]:
    with sessions() as session:
        attempts = list(session.scalars(select(Attempt).where(Attempt.job_id == job_id).order_by(Attempt.number)))
        session.expunge_all()
    return attempts


def test_traces_stopped_mid_way_or_truncated_continue_token_identical_to_one_uninterrupted_run(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    model = str(tiny_model)
    # The reference: final outputs only (no checkpoints, no streaming), in one go.
    plain = engine_settings(tiny_model, database_url=sqlite_url, checkpoint_seconds=0)
    with running_pipeline(plain, engine=shared_engine) as (pipeline, sessions):
        folder = _folder(tmp_path, "reference")
        reference_run = submit_folder(sessions, folder, model=model, max_tokens=TOKENS, **GREEDY)
        pipeline.feed_run(reference_run).result(timeout=300)
    reference_ids, reference_text = _whole_trace(sessions, _job(sessions, reference_run).id)
    assert len(reference_ids) == TOKENS

    # 1. A worker stops mid-trace (checkpoints every 0.1 s: many while the trace runs); a fresh one continues.
    checkpointing = engine_settings(tiny_model, database_url=sqlite_url, checkpoint_seconds=0.1)
    with running_pipeline(checkpointing, engine=shared_engine) as (pipeline, sessions):
        folder = _folder(tmp_path, "stopped")
        stopped_run = submit_folder(sessions, folder, model=model, max_tokens=TOKENS, **GREEDY)
        job_id = _job(sessions, stopped_run).id
        pipeline.feed_run(stopped_run)
        deadline = time.monotonic() + 240
        written_while_running = _kept(sessions, job_id)
        while written_while_running is None or written_while_running.tokens < 64:
            assert time.monotonic() < deadline, "no checkpoint of 64 tokens was written"
            time.sleep(0.02)
            written_while_running = _kept(sessions, job_id)
        pipeline.stop(grace_s=0)  # hands the job back, its last tokens checkpointed
    assert written_while_running is not None and written_while_running.finish_reason is None
    assert written_while_running.token_ids == reference_ids[: written_while_running.tokens]
    assert _job(sessions, stopped_run).state == JobState.QUEUED.value
    handed_back = _kept(sessions, job_id)
    assert handed_back is not None and handed_back.tokens < TOKENS
    with running_pipeline(checkpointing, engine=shared_engine) as (pipeline, sessions):
        pipeline.feed_run(stopped_run).result(timeout=300)
    assert _whole_trace(sessions, job_id) == (reference_ids, reference_text)
    first, second = _attempts(sessions, job_id)
    assert (second.resumed_from_attempt_id, second.reused_tokens) == (first.id, handed_back.tokens)
    assert second.completion_tokens == TOKENS - handed_back.tokens

    # 2. A job truncated at half the tokens, resubmitted with all of them, generates only the rest.
    with running_pipeline(checkpointing, engine=shared_engine) as (pipeline, sessions):
        folder = _folder(tmp_path, "short")
        short_run = submit_folder(sessions, folder, model=model, max_tokens=TOKENS // 2, **GREEDY)
        pipeline.feed_run(short_run).result(timeout=300)
        short = _job(sessions, short_run)
        half_ids, _ = _whole_trace(sessions, short.id)
        assert half_ids == reference_ids[: TOKENS // 2]
        with sessions() as session, session.begin():
            assert resubmit_jobs(session, job_ids=[short.id], max_tokens=TOKENS) == [short.id]
        pipeline.feed_run(short_run).result(timeout=300)
    assert _whole_trace(sessions, short.id) == (reference_ids, reference_text)
    truncated, continued = _attempts(sessions, short.id)
    assert (continued.resumed_from_attempt_id, continued.reused_tokens) == (truncated.id, TOKENS // 2)
    assert continued.completion_tokens == TOKENS - TOKENS // 2
