"""Images where users keep them, through the real vLLM CPU engine with the tiny model: a `datasets`
Parquet in MMMU's shape (several images per job, staged at submit) and WebDataset shards (members read by
offset)."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from tests.engine.conftest import engine_settings
from tests.fixtures.embedded import write_mmmu_parquet, write_shards
from tests.integration.pipeline_helpers import running_pipeline
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.parquet import ColumnChoice
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.engines.thread import EngineThread
from vlmbatch.worker.transport.publisher import NullPublisher

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]
ANSWERED = {JobState.SUCCEEDED, JobState.TRUNCATED}


def _run_source(
    sqlite_url: str, tiny_model: Path, engine: EngineThread, uri: str, **open_args: object
) -> tuple[int, sessionmaker[Session]]:
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    source = open_source(uri, stores=ObjectStores(), **open_args)  # type: ignore[arg-type]
    with running_pipeline(settings, engine=engine) as (pipeline, sessions):
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=source,
            settings=RunSettings(model=str(tiny_model), sampling=SamplingSettings(max_tokens=24)),
            queue="q",
        )
        pipeline.feed_run(report.run).result(timeout=400)
    return report.run, sessions


def test_an_mmmu_parquet_runs_with_each_rows_images_in_the_prompt(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    rows = write_mmmu_parquet(tmp_path / "mmmu.parquet")
    columns = ColumnChoice(reference_column="answer")
    run_id, sessions = _run_source(
        sqlite_url, tiny_model, shared_engine, str(tmp_path / "mmmu.parquet"),
        columns=columns, stage_to=str(tmp_path / "staged"),
    )  # fmt: skip
    with sessions() as session:
        jobs = {j.meta["id"]: j for j in session.scalars(select(Job).where(Job.run_id == run_id)) if j.meta}
        prompt_tokens = {a.job_id: a.prompt_tokens for a in session.scalars(select(Attempt))}
        answered = {r.job_id for r in session.scalars(select(Result))}
    assert [len(jobs[f"validation_Art_{i}"].images) for i in range(3)] == [len(images) for images in rows]
    assert all(job.state in ANSWERED and job.id in answered for job in jobs.values())
    # Row 2 holds row 0's figure plus two near-square images of one 256-token tile each (and their
    # image delimiters, and the text around its two more `<image N>` places): the engine saw every image.
    tokens = [prompt_tokens[jobs[f"validation_Art_{i}"].id] or 0 for i in range(3)]
    assert 2 * 256 <= tokens[2] - tokens[0] <= 2 * 256 + 16, tokens


def test_webdataset_shards_run_and_the_corrupt_member_fails_alone(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    write_shards(tmp_path / "shards")
    run_id, sessions = _run_source(
        sqlite_url, tiny_model, shared_engine, str(tmp_path / "shards"), prompting=Prompting.of("Describe it.")
    )
    with sessions() as session:
        jobs = {j.meta["key"]: j for j in session.scalars(select(Job).where(Job.run_id == run_id)) if j.meta}
    assert len(jobs) == 7
    assert (jobs["000000002"].state, jobs["000000002"].error_type) == (JobState.FAILED, ErrorType.INPUT_UNREADABLE)
    # Random weights: a trace may run past the short max_tokens (truncated); either way the engine answered.
    others = {key: (job.state, job.error_message) for key, job in jobs.items() if key != "000000002"}
    assert {state for state, _ in others.values()} <= ANSWERED, others
