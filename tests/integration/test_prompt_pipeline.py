"""What the engine receives for the new prompt shapes (fake engine recording its requests, real ledger):
images at their placeholders with the system turn, several questions about one image loaded once and sent
together, per-row sampling, and an OpenAI batch file run to the end. The real vLLM CPU engine gets the
interleaved layout in tests/engine/test_vllm_prompts.py."""

from __future__ import annotations

import base64
import json
import threading
from collections import Counter
from itertools import pairwise
from pathlib import Path

from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg, good_png, not_an_image
from tests.integration.pipeline_helpers import running_pipeline, settings_for
from vlmbatch.media.stores import ObjectStores
from vlmbatch.producer.sources.open import open_source
from vlmbatch.producer.sources.prompts import Prompting, PromptTemplate
from vlmbatch.producer.submit import submit
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.engines.base import GenerationRequest
from vlmbatch.worker.engines.fake import FakeBehaviour, FakeEngine
from vlmbatch.worker.transport.publisher import NullPublisher


class CountingStore:
    """The real object stores, counting fetches per URI."""

    def __init__(self) -> None:
        self._stores = ObjectStores(s3_endpoint_url=None)
        self._lock = threading.Lock()
        self.fetches: Counter[str] = Counter()

    def fetch(self, uri: str, *, max_bytes: int) -> bytes:
        with self._lock:
            self.fetches[uri] += 1
        return self._stores.fetch(uri, max_bytes=max_bytes)


def _run(
    database_url: str, source: object, engine: FakeEngine, store: object = None, *, slots: int = 8, **run: object
) -> list[Job]:
    # `slots` is the engine's max_num_seqs; the worker holds twice as many jobs claimed.
    settings = settings_for(database_url, max_num_seqs=slots)
    with running_pipeline(settings, engine=engine, store=store) as (pipeline, sessions):  # type: ignore[arg-type]
        report = submit(
            sessions=sessions,
            publisher=NullPublisher(),
            source=source,  # type: ignore[arg-type]
            settings=RunSettings(model="fake-model", **run),  # type: ignore[arg-type]
            queue="q",
            run_name="r",
        )
        pipeline.feed_run(report.run).result(timeout=60)
    with sessions() as session:
        return list(session.scalars(select(Job).where(Job.run_id == report.run).order_by(Job.id)))


def _recording() -> FakeEngine:
    return FakeEngine("fake-model", FakeBehaviour(record_requests=True))


def _layout(request: GenerationRequest) -> list[object]:
    """The user turn as the engine gets it: text pieces, and images by their width (distinct per image)."""
    return [part if isinstance(part, str) else request.images[part].width for part in request.user_parts()]


def test_an_mmmu_row_reaches_the_engine_with_its_images_at_the_placeholders_and_the_system_turn(
    database_url: str, tmp_path: Path
) -> None:
    (tmp_path / "a.jpg").write_bytes(good_jpeg(40, 30, seed=1))
    (tmp_path / "b.jpg").write_bytes(good_jpeg(50, 30, seed=2))
    manifest = tmp_path / "mmmu.jsonl"
    row = {
        "image": ["a.jpg", "b.jpg"],
        "question": "Is <image 2> a zoom of <image 1>?",
        "options": ["yes", "no"],
    }
    manifest.write_text(json.dumps(row) + "\n")
    template = PromptTemplate("{{ question }}\n{{ options | options }}")
    source = open_source(
        str(manifest),
        prompting=Prompting(template=template),
        stores=ObjectStores(),
    )
    engine = _recording()
    (job,) = _run(database_url, source, engine, system_prompt="You are a careful grader.")
    assert job.state == JobState.SUCCEEDED, job.error_message
    (request,) = engine.requests
    assert request.system == "You are a careful grader."
    assert _layout(request) == ["Is ", 50, " a zoom of ", 40, "?\nA. yes\nB. no"]
    assert request.question == job.question == "Is <image 2> a zoom of <image 1>?\nA. yes\nB. no"


def _image_folder(tmp_path: Path, count: int) -> Path:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(count):
        (folder / f"{i}.jpg").write_bytes(good_jpeg(40 + i, 30, seed=i))  # told apart by width
    return folder


QUESTIONS = ("Is there a person?", "Is it indoors?", "Is it day?")


def test_several_questions_about_an_image_fetch_it_once_and_reach_the_engine_together(
    database_url: str, tmp_path: Path
) -> None:
    source = open_source(
        str(_image_folder(tmp_path, 6)), prompting=Prompting(questions=QUESTIONS), stores=ObjectStores()
    )
    engine, store = _recording(), CountingStore()
    jobs = _run(database_url, source, engine, store, slots=16)  # all 18 jobs fit one claim
    assert len(jobs) == 18 and {j.state for j in jobs} == {JobState.SUCCEEDED}
    assert sorted(store.fetches.values()) == [1] * 6  # each image fetched (and decoded) once
    order = [request.images[0].width for request in engine.requests]
    # The requests of one image arrive one after another: 6 runs of 3 (5 changes of image), not up to 17.
    changes = sum(1 for before, after in pairwise(order) if before != after)
    assert changes == 5 and sorted(Counter(order).values()) == [3] * 6
    assert {r.question for r in engine.requests} == set(QUESTIONS)


def test_an_images_jobs_split_across_two_claims_still_fetch_it_once(database_url: str, tmp_path: Path) -> None:
    source = open_source(
        str(_image_folder(tmp_path, 6)), prompting=Prompting(questions=QUESTIONS), stores=ObjectStores()
    )
    store = CountingStore()
    # 4 jobs claimed at a time and 3 per image: most claims end in the middle of an image's questions.
    jobs = _run(database_url, source, _recording(), store, slots=2)
    assert len(jobs) == 18 and {j.state for j in jobs} == {JobState.SUCCEEDED}
    assert sorted(store.fetches.values()) == [1] * 6


def test_per_row_sampling_columns_reach_the_engine_for_their_job_only(database_url: str, tmp_path: Path) -> None:
    for name in ("a", "b"):
        (tmp_path / f"{name}.jpg").write_bytes(good_jpeg(seed=len(name)))
    manifest = tmp_path / "m.csv"
    manifest.write_text("image,question,max_tokens,temperature,top_p\na.jpg,A?,40,0.0,0.5\nb.jpg,B?,,,\n")
    engine = _recording()
    _run(database_url, open_source(str(manifest), stores=ObjectStores()), engine, store=None)
    by_question = {r.question: r.sampling for r in engine.requests}
    assert (by_question["A?"].max_tokens, by_question["A?"].temperature, by_question["A?"].top_p) == (40, 0.0, 0.5)
    default = RunSettings().sampling
    assert (by_question["B?"].max_tokens, by_question["B?"].temperature) == (default.max_tokens, default.temperature)


def _data_url(data: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(data).decode()


def test_an_openai_batch_file_runs_with_its_system_prompt_per_line_budgets_and_a_broken_image_failing_alone(
    database_url: str, tmp_path: Path
) -> None:
    schema = {"type": "object"}
    lines = []
    for i, data in enumerate([good_png(40, 30, seed=1), not_an_image(), good_png(50, 30, seed=2)]):
        body = {
            "model": "gpt-4o-mini",
            "messages": [
                {"role": "system", "content": "Answer in one word."},
                {
                    "role": "user",
                    "content": [
                        {"type": "image_url", "image_url": {"url": _data_url(data)}},
                        {"type": "text", "text": f"What is {i}?"},
                    ],
                },
            ],
            "max_tokens": 100 + i,
        }
        if i == 2:
            body["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}
        lines.append({"custom_id": f"req-{i}", "method": "POST", "url": "/v1/chat/completions", "body": body})
    batch = tmp_path / "batch.jsonl"
    batch.write_text("\n".join(json.dumps(line) for line in lines) + "\n")
    source = open_source(str(batch), stores=ObjectStores(), stage_to=str(tmp_path / "staged"))
    engine = _recording()
    jobs = _run(database_url, source, engine)
    by_id = {job.meta["custom_id"]: job for job in jobs if job.meta}
    assert by_id["req-0"].state == by_id["req-2"].state == JobState.SUCCEEDED
    assert (by_id["req-1"].state, by_id["req-1"].error_type) == (JobState.FAILED, ErrorType.INPUT_UNREADABLE)
    requests = {r.question: r for r in engine.requests}
    assert set(requests) == {"What is 0?", "What is 2?"}
    assert all(r.system == "Answer in one word." for r in requests.values())
    assert (requests["What is 0?"].sampling.max_tokens, requests["What is 2?"].sampling.max_tokens) == (100, 102)
    constraint = requests["What is 2?"].constraint
    assert requests["What is 0?"].constraint is None and constraint is not None and constraint.json_schema == schema


def test_a_broken_image_asked_several_questions_is_fetched_once_and_fails_each_of_its_jobs(
    sqlite_url: str, tmp_path: Path
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    (folder / "good.jpg").write_bytes(good_jpeg(seed=1))
    (folder / "broken.jpg").write_bytes(not_an_image())
    source = open_source(str(folder), prompting=Prompting(questions=("One?", "Two?")), stores=ObjectStores())
    store = CountingStore()
    jobs = _run(sqlite_url, source, _recording(), store)
    outcomes = sorted((j.images[0].rsplit("/", 1)[-1], j.question, j.state, j.error_type) for j in jobs)
    assert outcomes == [
        ("broken.jpg", "One?", JobState.FAILED, ErrorType.INPUT_UNREADABLE),
        ("broken.jpg", "Two?", JobState.FAILED, ErrorType.INPUT_UNREADABLE),
        ("good.jpg", "One?", JobState.SUCCEEDED, None),
        ("good.jpg", "Two?", JobState.SUCCEEDED, None),
    ]
    assert sorted(store.fetches.values()) == [1, 1]
