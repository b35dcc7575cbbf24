"""Repetition detection and thinking budgets reach vLLM's CPU build and are applied by it: vLLM itself
stops the loop (finish `repetition`) and forces `</think>` at the budget; the pipeline stores what the
outcome contract says. The tiny model is steered to close its trace and end (worker/smoke_model/weights.py):
told to ignore the end of sequence, greedy decoding repeats `<|im_end|>` after its trace, a loop."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select

from tests.engine.conftest import engine_settings
from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, submit_folder
from vlmbatch.schema.contracts.models import RepetitionDetection
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Job, Result
from vlmbatch.worker.engines.thread import EngineThread

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

MAX_TOKENS = 300
LOOPING = {"temperature": 0.0, "repetition_penalty": 1.0, "max_tokens": MAX_TOKENS, "ignore_eos": True}
# Hot sampling: the model's steered `</think>` stays likely at each step but rarely comes within a few
# tokens, so short budgets are reached.
HOT = {"temperature": 2.0, "max_tokens": 64, "samples": 4}
BUDGET = 6


def _folder(path: Path, count: int) -> Path:
    path.mkdir(parents=True)
    for i in range(count):
        (path / f"{i:02d}.jpg").write_bytes(good_jpeg(448, 448, seed=i))
    return path


def _outcomes(sessions: object, run_id: int) -> list[tuple[str, Result]]:
    with sessions() as session:  # type: ignore[operator]
        rows = session.execute(
            select(Job.state, Result).join(Result, Result.job_id == Job.id).where(Job.run_id == run_id)
        )
        return [(state, result) for state, result in rows.tuples()]


def test_vllm_stops_a_looping_sample_and_the_job_ends_truncated_repetition(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "imgs", 4)
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    detection = RepetitionDetection(max_pattern_size=32, min_pattern_size=1, min_count=3)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        plain = submit_folder(sessions, folder, model=str(tiny_model), **LOOPING)
        pipeline.feed_run(plain).result(timeout=400)
        stopped = submit_folder(sessions, folder, model=str(tiny_model), repetition_detection=detection, **LOOPING)
        pipeline.feed_run(stopped).result(timeout=400)
    # Without detection the loops run to max_tokens; with it, vLLM ends them early as `repetition`.
    assert {(state, r.finish_reason, r.completion_tokens) for state, r in _outcomes(sessions, plain)} == {
        (JobState.TRUNCATED, "length", MAX_TOKENS)
    }
    outcomes = _outcomes(sessions, stopped)
    assert len(outcomes) == 4
    for state, result in outcomes:
        assert (state, result.finish_reason) == (JobState.TRUNCATED, "repetition")
        assert 3 <= result.completion_tokens < MAX_TOKENS


def test_vllm_closes_the_trace_at_the_thinking_budget_and_the_sample_is_flagged(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    folder = _folder(tmp_path / "imgs", 2)
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        plain = submit_folder(sessions, folder, model=str(tiny_model), **HOT)
        pipeline.feed_run(plain).result(timeout=400)
        budget = submit_folder(sessions, folder, model=str(tiny_model), thinking_token_budget=BUDGET, **HOT)
        pipeline.feed_run(budget).result(timeout=400)
    # Left alone, traces run past the budget (or never close); with it, vLLM forces `</think>` into every
    # trace that got that far. vLLM counts the newline the chat template put after `<think>` in the
    # prompt, so `</think>` comes as the BUDGET-th generated token. Every such sample is flagged.
    free = [r.reasoning_tokens if r.trace_closed else MAX_TOKENS for _, r in _outcomes(sessions, plain)]
    assert max(free) > BUDGET, free
    outcomes = [r for _, r in _outcomes(sessions, budget)]
    assert len(outcomes) == 8
    assert all(r.trace_closed and r.raw_text.count("</think>") == 1 for r in outcomes)
    assert all(r.reasoning_tokens is not None and r.reasoning_tokens <= BUDGET for r in outcomes)
    capped = [r for r in outcomes if r.thinking_capped]
    assert capped and all(r.reasoning_tokens == BUDGET for r in capped)
    assert all(not r.thinking_capped for r in outcomes if r.reasoning_tokens < BUDGET)
