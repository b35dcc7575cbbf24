"""The new prompt shapes through the real vLLM CPU engine and the tiny model: images placed at their
`<image N>` placeholders with a system turn, as the model's prompt tokens show, and an MMMU-shaped row
rendered through a template and run to the end."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from sqlalchemy import select

from tests.engine.conftest import engine_settings
from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import PromptTemplate
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.contracts.placement import user_layout
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Attempt, Job
from vlmbatch.worker.engines.base import GenerationRequest
from vlmbatch.worker.engines.thread import EngineThread
from vlmbatch.worker.engines.vllm_requests import render
from vlmbatch.worker.transport.publisher import NullPublisher

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

TOKENS_PER_TILE = 256


def _context_runs(token_ids: list[int], context_id: int) -> list[int]:
    """The lengths of the runs of image-context tokens, in prompt order (one run per image)."""
    runs: list[int] = []
    previous = None
    for token in token_ids:
        if token == context_id:
            if previous != context_id:
                runs.append(0)
            runs[-1] += 1
        previous = token
    return runs


def test_the_model_sees_each_image_at_its_placeholder_after_the_system_turn(shared_engine: EngineThread) -> None:
    small = Image.new("RGB", (448, 448), (200, 10, 10))  # 1 tile
    wide = Image.new("RGB", (896, 448), (10, 10, 200))  # 2 tiles + thumbnail
    question = "alpha <image 2> beta <image 1> gamma"
    request = GenerationRequest(
        request_id="layout-probe",
        images=[small, wide],
        question=question,
        sampling=SamplingSettings(max_tokens=4),
        max_tiles=12,
        system="omega rules",
        layout=user_layout(question, 2),
    )
    inner: Any = shared_engine.inner
    loop = shared_engine._loop  # the engine's own loop: vLLM's renderer lives there
    engine_input = asyncio.run_coroutine_threadsafe(render(inner._llm, request), loop).result(timeout=120)
    token_ids = list(engine_input["prompt_token_ids"])
    tokenizer = inner._llm.tokenizer
    context_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    # The wide image (3 tiles) comes first, where `<image 2>` stood; then the small one.
    assert _context_runs(token_ids, context_id) == [3 * TOKENS_PER_TILE, TOKENS_PER_TILE]
    text = tokenizer.decode(token_ids, skip_special_tokens=False)
    positions = [text.index(word) for word in ("omega rules", "alpha", "<img>", "beta", "gamma")]
    assert positions == sorted(positions)
    second_image = text.index("<img>", positions[2] + 1)
    assert positions[3] < second_image < positions[4]
    assert "<image 1>" not in text and "<image 2>" not in text


def test_a_text_only_job_and_an_unplaced_image_reach_the_model_as_laid_out(shared_engine: EngineThread) -> None:
    inner: Any = shared_engine.inner
    loop = shared_engine._loop
    tokenizer = inner._llm.tokenizer
    context_id = tokenizer.convert_tokens_to_ids("<IMG_CONTEXT>")
    text_only = GenerationRequest(
        request_id="text-only",
        images=[],
        question="Name a prime.",
        sampling=SamplingSettings(max_tokens=4),
        max_tiles=12,
    )
    engine_input = asyncio.run_coroutine_threadsafe(render(inner._llm, text_only), loop).result(timeout=120)
    token_ids = list(engine_input["prompt_token_ids"])
    assert context_id not in token_ids and "Name a prime." in tokenizer.decode(token_ids)
    generation = asyncio.run_coroutine_threadsafe(inner.generate(text_only), loop).result(timeout=300)
    assert generation.completions and generation.prompt_tokens == len(token_ids)

    # ViRL: one `<image>` for two images; the one it does not place goes first.
    small = Image.new("RGB", (448, 448), (200, 10, 10))  # 1 tile
    wide = Image.new("RGB", (896, 448), (10, 10, 200))  # 2 tiles + thumbnail
    question = "<image>\nAre they alike?"
    virl = GenerationRequest(
        request_id="virl",
        images=[small, wide],
        question=question,
        sampling=SamplingSettings(max_tokens=4),
        max_tiles=12,
        layout=user_layout(question, 2),
    )
    engine_input = asyncio.run_coroutine_threadsafe(render(inner._llm, virl), loop).result(timeout=120)
    runs = _context_runs(list(engine_input["prompt_token_ids"]), context_id)
    assert runs == [3 * TOKENS_PER_TILE, TOKENS_PER_TILE]  # the wide (unplaced) one first, then the placed one


def test_an_mmmu_row_through_a_template_runs_on_the_real_engine(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(448, 448, seed=1))
    (tmp_path / "b.jpg").write_bytes(good_jpeg(896, 448, seed=2))
    row = {"image": ["a.jpg", "b.jpg"], "question": "Is <image 2> wider than <image 1>?", "options": "['yes', 'no']"}
    manifest = tmp_path / "mmmu.jsonl"
    manifest.write_text(json.dumps(row) + "\n")
    template = PromptTemplate("{{ question }}\n{{ options | options }}\nAnswer with a letter.")
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=open_source(str(manifest), question=None, s3_endpoint_url=None, prompt_template=template),
            settings=RunSettings(
                model=str(tiny_model), sampling=SamplingSettings(max_tokens=32), system_prompt="Think first."
            ),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=300)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        attempt = session.scalars(select(Attempt)).one()
    assert job.state in (JobState.SUCCEEDED, JobState.TRUNCATED), job.error_message
    assert job.question.startswith("Is <image 2> wider than <image 1>?\nA. yes\nB. no")
    # Both images' tokens (1 + 3 tiles) are in the prompt, plus the text.
    assert attempt.prompt_tokens is not None and attempt.prompt_tokens > 4 * TOKENS_PER_TILE


def test_a_per_row_seed_fails_its_job_on_the_cpu_build_and_the_engine_lives_on(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(200, 150, seed=3))
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,question,seed,max_tokens\na.jpg,Seeded?,7,8\na.jpg,Unseeded?,,8\n")
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=open_source(str(manifest), question=None, s3_endpoint_url=None),
            settings=RunSettings(model=str(tiny_model)),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=300)
    with sessions() as session:
        jobs = {job.question: job for job in session.scalars(select(Job))}
    seeded, unseeded = jobs["Seeded?"], jobs["Unseeded?"]
    assert (seeded.state, seeded.error_type) == (JobState.FAILED, "input.unsupported")
    assert seeded.error_message and "seed" in seeded.error_message
    assert unseeded.state in (JobState.SUCCEEDED, JobState.TRUNCATED), unseeded.error_message
    assert shared_engine.inner._llm is not None and not shared_engine.inner._llm.errored  # type: ignore[attr-defined]
