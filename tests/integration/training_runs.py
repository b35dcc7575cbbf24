"""The runs a training export is checked on, each through the fake-engine pipeline from a source written
by the tool users write it with: a folder of images (one EXIF-rotated), an MMMU-shaped Parquet of
several images per row (staged), WebDataset shards, an OpenAI batch file sampled n=2 (data URLs, staged),
a graded manifest run, and a manifest run with a system prompt."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from tests.fixtures.bad_images import exif_rotated_jpeg, good_jpeg, good_png
from tests.fixtures.embedded import write_mmmu_parquet, write_shards
from tests.integration.pipeline_helpers import running_pipeline, settings_for
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.ledger.tables import Run
from vlmbatch.worker.engines.fake import FakeBehaviour
from vlmbatch.worker.transport.publisher import NullPublisher

SYSTEM_PROMPT = "You are a careful annotator. Think, then answer in one word."
QUESTION = "What is shown?"


def run_source(
    url: str,
    source: Any,
    name: str,
    *,
    behaviour: FakeBehaviour | None = None,
    samples: int = 1,
    worker_settings: dict[str, Any] | None = None,
    **run: Any,
) -> tuple[sessionmaker[Session], Run]:
    settings = RunSettings(model="fake-model", sampling=SamplingSettings(samples=samples), **run)
    worker = settings_for(url, **(worker_settings or {}))
    with running_pipeline(worker, behaviour=behaviour) as (pipeline, sessions):
        report = submit(
            sessions=sessions, publisher=NullPublisher(), source=source, settings=settings, queue="q", run_name=name
        )
        pipeline.feed_run(report.run).result(timeout=60)
    with sessions() as session:
        return sessions, session.get_one(Run, report.run)


def folder_run(url: str, tmp: Path) -> tuple[sessionmaker[Session], Run]:
    folder = tmp / "folder"
    folder.mkdir()
    (folder / "a.jpg").write_bytes(good_jpeg(40, 30, seed=1))
    (folder / "b.png").write_bytes(good_png(30, 30, seed=2))
    (folder / "rotated.jpg").write_bytes(exif_rotated_jpeg())
    source = open_source(str(folder), prompting=Prompting.of(QUESTION), stores=ObjectStores())
    return run_source(url, source, "folder")


def mmmu_run(url: str, tmp: Path) -> tuple[sessionmaker[Session], Run]:
    path = tmp / "mmmu.parquet"
    write_mmmu_parquet(path)
    source = open_source(str(path), stores=ObjectStores(), stage_to=str(tmp / "staged"))
    return run_source(url, source, "mmmu")


def webdataset_run(url: str, tmp: Path) -> tuple[sessionmaker[Session], Run]:
    write_shards(tmp / "shards")
    source = open_source(str(tmp / "shards"), prompting=Prompting.of(QUESTION), stores=ObjectStores())
    return run_source(url, source, "webdataset")


def openai_run(url: str, tmp: Path) -> tuple[sessionmaker[Session], Run]:
    lines = []
    for i in range(3):
        data = good_png(40 + i, 30, seed=i)
        body = {
            "model": "gpt-4o-mini",
            "n": 2,
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {
                    "role": "user",
                    "content": [
                        {"type": "text", "text": f"Compare question {i}:"},
                        {
                            "type": "image_url",
                            "image_url": {"url": "data:image/png;base64," + base64.b64encode(data).decode()},
                        },
                        {"type": "text", "text": "What is it?"},
                    ],
                },
            ],
        }
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    batch = tmp / "batch.jsonl"
    batch.write_text("".join(json.dumps(line) + "\n" for line in lines))
    source = open_source(str(batch), stores=ObjectStores(), stage_to=str(tmp / "staged-batch"))
    return run_source(url, source, "openai")


def _manifest(tmp: Path, name: str, rows: list[dict[str, Any]]) -> Path:
    for seed, image in enumerate(sorted({row["image"] for row in rows})):
        (tmp / image).write_bytes(good_jpeg(36 + seed, 30, seed=seed))
    path = tmp / f"{name}.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def graded_run(url: str, tmp: Path) -> tuple[sessionmaker[Session], Run]:
    rows = [{"image": f"g{i}.jpg", "reference": "A", "id": f"q-{i}"} for i in range(3)]
    source = open_source(str(_manifest(tmp, "graded", rows)), prompting=Prompting.of(QUESTION), stores=ObjectStores())
    behaviour = FakeBehaviour(answer_cycle=("A", "B"))
    return run_source(url, source, "graded", behaviour=behaviour, samples=2, grader="choice")


def system_run(url: str, tmp: Path) -> tuple[sessionmaker[Session], Run]:
    rows = [{"image": f"s{i}.jpg", "id": f"s-{i}"} for i in range(2)]
    source = open_source(str(_manifest(tmp, "system", rows)), prompting=Prompting.of(QUESTION), stores=ObjectStores())
    return run_source(url, source, "system", system_prompt=SYSTEM_PROMPT)


RUNS: dict[str, Callable[[str, Path], tuple[sessionmaker[Session], Run]]] = {
    "folder": folder_run,
    "mmmu-parquet": mmmu_run,
    "webdataset": webdataset_run,
    "openai-n2": openai_run,
    "graded": graded_run,
    "system-prompt": system_run,
}
