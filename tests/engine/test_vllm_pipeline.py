"""The worker pipeline on the real vLLM CPU engine with the tiny Skywork-R1V3-architecture model."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from sqlalchemy import func, select, update

from tests.engine.conftest import MAX_MODEL_LEN, engine_settings
from tests.fixtures.bad_images import (
    decompression_bomb_png,
    empty,
    good_jpeg,
    not_an_image,
    truncated_jpeg,
)
from tests.integration.pipeline_helpers import jobs_by_name, running_pipeline, submit_folder
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import claim_jobs
from vlmbatch.schema.ledger.outcomes import AttemptReport, record_outcomes
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, utcnow
from vlmbatch.worker.engines.thread import EngineThread

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]

# (width, height) → InternVL tiles: 1 tile up to 12 tiles + thumbnail (13 x 256 image tokens).
MIXED_SIZES = [(448, 448), (200, 150), (896, 448), (1344, 896), (1600, 1200), (640, 480), (1000, 600), (300, 900)]


def _settings(sqlite_url: str, tiny_model: Path, **overrides: object) -> object:
    return engine_settings(tiny_model, database_url=sqlite_url, **overrides)


def _write(folder: Path, files: dict[str, bytes]) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for name, data in files.items():
        (folder / name).write_bytes(data)
    return folder


def test_mixed_image_sizes_all_succeed_with_trace_answer_tokens_and_timings(
    database_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    files = {f"img-{i:02d}-{w}x{h}.jpg": good_jpeg(w, h, seed=i) for i, (w, h) in enumerate(MIXED_SIZES * 2)}
    folder = _write(tmp_path / "imgs", files)
    settings = engine_settings(tiny_model, database_url=database_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, model=str(tiny_model), max_tokens=512)
        pipeline.feed_run(run_id).result(timeout=400)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.run_id == run_id)).all()
        attempts = {a.job_id: a for a in session.scalars(select(Attempt))}
        results = {r.job_id: r for r in session.scalars(select(Result))}
    assert len(jobs) == 16
    assert {j.state for j in jobs} == {JobState.SUCCEEDED}, [(j.images, j.error_message) for j in jobs]
    prompt_tokens = []
    for job in jobs:
        attempt, result = attempts[job.id], results[job.id]
        assert attempt.prompt_tokens and attempt.completion_tokens == result.completion_tokens
        assert None not in (attempt.fetch_s, attempt.decode_s, attempt.generation_s, attempt.first_token_s)
        # A closed trace (the random model may close it at once, leaving it empty) and the answer after it.
        assert result.finish_reason == "stop" and result.trace_closed and result.reasoning is not None
        assert result.raw_text.split("</think>", 1)[1].strip() == result.answer
        assert result.reasoning_tokens and result.reasoning_tokens + (result.answer_tokens or 0) == (
            result.completion_tokens
        )
        prompt_tokens.append(attempt.prompt_tokens)
    # One 448 px tile is 256 image tokens; the 1600x1200 image is 12 tiles plus a thumbnail.
    assert min(prompt_tokens) < 300 and max(prompt_tokens) > 13 * 256


def test_short_jobs_are_written_before_a_long_one_submitted_with_them(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    """Continuous batching: the engine holds the long job and the short ones at once, and each short job
    is written as soon as it ends, without waiting for the long one."""
    long_folder = _write(tmp_path / "long", {"long.jpg": good_jpeg(448, 448)})
    short_folder = _write(tmp_path / "short", {f"s{i}.jpg": good_jpeg(448, 448, seed=i) for i in range(6)})
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    inner = shared_engine.inner
    telemetry = inner.telemetry  # type: ignore[attr-defined]
    telemetry.max_running = 0
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        long_run = submit_folder(sessions, long_folder, model=str(tiny_model), max_tokens=4000, ignore_eos=True)
        short_run = submit_folder(sessions, short_folder, model=str(tiny_model), max_tokens=16, ignore_eos=True)
        long_done = pipeline.feed_run(long_run)
        time.sleep(1.0)
        started = time.monotonic()
        pipeline.feed_run(short_run).result(timeout=300)
        short_finished_while_long_ran = not long_done.done()
        short_s = time.monotonic() - started
        long_done.result(timeout=300)
        long_s = time.monotonic() - started
    assert short_finished_while_long_ran, (short_s, long_s)
    assert telemetry.max_running > 1
    with sessions() as session:
        last = dict(session.execute(select(Job.run_id, func.max(Job.finished_at)).group_by(Job.run_id)).all())
        tokens = dict(
            session.execute(
                select(Job.run_id, func.sum(Result.completion_tokens)).join(Result).group_by(Job.run_id)
            ).all()
        )
    assert last[short_run] < last[long_run]
    assert tokens == {long_run: 4000, short_run: 6 * 16}


def test_hostile_inputs_fail_with_their_type_and_good_neighbours_succeed(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    files = {
        "good-1.jpg": good_jpeg(448, 448, seed=1),
        "good-2.jpg": good_jpeg(800, 600, seed=2),
        "good-3.jpg": good_jpeg(300, 300, seed=3),
        "bad-empty.jpg": empty(),
        "bad-truncated.jpg": truncated_jpeg(),
        "bad-text.jpg": not_an_image(),
        "bad-bomb.png": decompression_bomb_png(),
    }
    expected = {
        "bad-empty.jpg": ErrorType.INPUT_UNREADABLE,
        "bad-truncated.jpg": ErrorType.INPUT_UNREADABLE,
        "bad-text.jpg": ErrorType.INPUT_UNREADABLE,
        "bad-bomb.png": ErrorType.INPUT_TOO_LARGE,
    }
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        run_id = submit_folder(sessions, _write(tmp_path / "imgs", files), model=str(tiny_model), max_tokens=512)
        pipeline.feed_run(run_id).result(timeout=300)
    jobs = jobs_by_name(sessions, run_id)
    for name in files:
        if name in expected:
            assert (jobs[name].state, jobs[name].error_type) == (JobState.FAILED, expected[name]), name
        else:
            assert jobs[name].state == JobState.SUCCEEDED, (name, jobs[name].error_message)


def test_prompts_over_the_context_fail_as_prompt_too_long_and_neighbours_succeed(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    """Too long as text (refused while rendering) and too long once images expand (refused at submission)."""
    big = good_jpeg(1600, 1200)  # 13 tiles: 3,328 image tokens
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        words = " ".join(["word"] * (MAX_MODEL_LEN + 100))
        text_run = submit_folder(
            sessions,
            _write(tmp_path / "a", {"ok.jpg": good_jpeg(448, 448), "long.jpg": good_jpeg(448, 448, 7)}),
            question="placeholder",
            model=str(tiny_model),
            max_tokens=512,
        )
        with sessions() as session, session.begin():
            session.execute(update(Job).where(Job.images[0].as_string().like("%long.jpg")).values(question=words))
        manifest = tmp_path / "b" / "m.jsonl"
        _write(tmp_path / "b", {"big.jpg": big, "small.jpg": good_jpeg(448, 448, 9)})
        manifest.write_text(
            '{"image": ["big.jpg", "big.jpg", "big.jpg"], "question": "Compare."}\n'
            '{"image": "small.jpg", "question": "Describe."}\n'
        )
        image_run = submit_folder(sessions, manifest, model=str(tiny_model), max_tokens=512)
        pipeline.feed_run(text_run).result(timeout=300)
        pipeline.feed_run(image_run).result(timeout=300)
    with sessions() as session:
        outcome = {
            (j.run_id, len(j.images), j.question[:10]): (j.state, j.error_type) for j in session.scalars(select(Job))
        }
    assert outcome[(text_run, 1, "word word ")] == (JobState.FAILED, ErrorType.PROMPT_TOO_LONG)
    assert outcome[(text_run, 1, "placeholde")] == (JobState.SUCCEEDED, None)
    assert outcome[(image_run, 3, "Compare.")] == (JobState.FAILED, ErrorType.PROMPT_TOO_LONG)
    assert outcome[(image_run, 1, "Describe.")] == (JobState.SUCCEEDED, None)


def test_replayed_message_and_stale_attempt_change_nothing(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    folder = _write(tmp_path / "imgs", {"a.jpg": good_jpeg(448, 448, 1), "b.jpg": good_jpeg(448, 448, 2)})
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        run_id = submit_folder(sessions, folder, model=str(tiny_model), max_tokens=512)
        jobs = jobs_by_name(sessions, run_id)
        a, b = jobs["a.jpg"].id, jobs["b.jpg"].id
        # b is first claimed by a worker that then freezes past its lease (a zombie).
        with sessions() as session, session.begin():
            (zombie,) = claim_jobs(session, job_ids=[b], worker="zombie", lease_seconds=60)
            session.execute(update(Job).where(Job.id == b).values(lease_expires_at=utcnow()))
        with sessions() as session, session.begin():
            requeue_expired_leases(session)
        assert pipeline.admit(2) == 2  # a token for two jobs: b again, and a
        _wait_for_states(sessions, {a, b})
        assert pipeline.admit(2) == 0  # a spare token (a duplicate message): nothing left to claim
    with sessions() as session, session.begin():
        late = AttemptReport(job_id=b, attempt_id=zombie.attempt_id, outcome=AttemptOutcome.SUCCEEDED)
        assert record_outcomes(session, [late]) == []
    with sessions() as session:
        results = session.execute(select(Result.job_id, Result.attempt_id)).all()
        job_b = session.get(Job, b)
        assert job_b is not None
    assert sorted(job for job, _ in results) == [a, b]  # one result each, none from the zombie
    assert zombie.attempt_id not in {attempt for _, attempt in results}
    assert job_b.current_attempt_id != zombie.attempt_id


def _wait_for_states(sessions: object, job_ids: set[int], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with sessions() as session:  # type: ignore[operator]
            states = set(session.scalars(select(Job.state).where(Job.id.in_(job_ids))))
        if states <= {JobState.SUCCEEDED, JobState.FAILED, JobState.TRUNCATED}:
            return
        time.sleep(0.2)
    raise TimeoutError(f"jobs {job_ids} not finished")


def test_constrained_choices_make_every_answer_one_of_them_while_the_trace_stays_free(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path
) -> None:
    folder = _write(tmp_path / "imgs", {f"{i}.jpg": good_jpeg(448, 448, seed=i) for i in range(6)})
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        run_id = submit_folder(
            sessions, folder, model=str(tiny_model), max_tokens=512, samples=2, choices=("yes", "no")
        )
        pipeline.feed_run(run_id).result(timeout=300)
    with sessions() as session:
        results = session.scalars(select(Result)).all()
    assert len(results) == 12
    assert {r.answer for r in results} <= {"yes", "no"}
    assert all(r.valid and r.trace_closed for r in results)
    # The grammar applies after `</think>` only: the traces are the model's own (noise) tokens.
    assert any(len(r.reasoning or "") > 3 for r in results)


def test_graded_sampling_until_accepted_exports_sft_records_that_datasets_loads(
    sqlite_url: str, tiny_model: Path, shared_engine: EngineThread, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Distillation end to end on the real engine: references, 3 samples per job, accept 1, export only
    correct traces as SFT records. The tiny model's answers are noise, so the answer is constrained to two
    letters: about half the samples are right, and the grader's verdicts are real."""
    import json

    import datasets

    from vlmbatch.media.stores import ObjectStores
    from vlmbatch.producer.reports.export import ExportFilter, export_run
    from vlmbatch.schema.ledger.tables import Run

    folder = tmp_path / "set"
    rows = []
    for i in range(6):
        (folder / f"{i}.jpg").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{i}.jpg").write_bytes(good_jpeg(448, 448, seed=i))
        rows.append(json.dumps({"image": f"{i}.jpg", "question": "Which letter?", "reference": "A", "id": i}))
    manifest = folder / "set.jsonl"
    manifest.write_text("\n".join(rows))
    settings = engine_settings(tiny_model, database_url=sqlite_url)
    with running_pipeline(settings, engine=shared_engine) as (pipeline, sessions):
        run_id = submit_folder(
            sessions,
            manifest,
            model=str(tiny_model),
            max_tokens=512,
            samples=3,
            accept=1,
            max_attempts=6,
            grader="choice",
            choices=("A", "B"),
        )
        pipeline.feed_run(run_id).result(timeout=300)
    with sessions() as session:
        jobs = session.scalars(select(Job).where(Job.run_id == run_id)).all()
        graded = session.execute(select(Result.extracted_answer, Result.correct)).all()
        run = session.get(Run, run_id)
    assert run is not None
    assert {j.state for j in jobs} == {JobState.SUCCEEDED}
    assert all(j.accepted_samples >= 1 for j in jobs)
    assert all(extracted in ("A", "B") and correct == (extracted == "A") for extracted, correct in graded)

    out = tmp_path / "sft"
    report = export_run(
        sessions,
        run=run,
        fmt="sft",
        out=out,
        selection=ExportFilter(only_correct=True),
        store=ObjectStores(s3_endpoint_url=None),
    )
    assert report.rows == sum(1 for _, correct in graded if correct)
    monkeypatch.setenv("HF_DATASETS_CACHE", str(tmp_path / "hf-datasets"))
    loaded = datasets.load_dataset("json", data_files=[str(p) for p in report.shards])["train"]
    assert len(loaded) == report.rows
    for record in loaded:
        user, assistant = record["messages"]
        assert user["content"] == "<image>Which letter?" and len(record["images"]) == 1
        assert (out / record["images"][0]).is_file() and record["id"] in {str(i) for i in range(6)}
        assert assistant["content"].startswith("<think>\n") and "</think>" in assistant["content"]
        assert assistant["content"].rstrip().endswith("A") and record["correct"] is True

    # The same run as the OpenAI Batch output format: one line per job, its standing samples as choices.
    from openai.types.chat import ChatCompletion

    from vlmbatch.schema.grading import grader_version

    with sessions() as session:
        standing = session.execute(
            select(Result.job_id, func.count(), func.min(Result.grader_version)).group_by(Result.job_id)
        ).all()
    assert {version for _, _, version in standing} == {grader_version("choice")}
    openai_out = tmp_path / "o.jsonl"
    openai_report = export_run(
        sessions, run=run, fmt="openai", out=openai_out, selection=ExportFilter(states=(JobState.SUCCEEDED,))
    )
    lines = [json.loads(line) for line in openai_out.read_text().splitlines()]
    assert (openai_report.rows, openai_report.errors) == (6, 0)
    assert sorted(line["custom_id"] for line in lines) == sorted(f"job-{j.id}" for j in jobs)
    samples_per_job = {job_id: count for job_id, count, _ in standing}
    for line in lines:
        completion = ChatCompletion.model_validate(line["response"]["body"])
        job_id = int(line["id"].rsplit("_", 1)[1])
        assert len(completion.choices) == samples_per_job[job_id]
        for c in completion.choices:  # the tiny model's traces are noise, sometimes empty
            assert c.message.content in ("A", "B") and c.finish_reason == "stop"
            assert isinstance(getattr(c.message, "reasoning_content"), str)  # noqa: B009 (an extra field)
            assert getattr(c.message, "reasoning") == getattr(c.message, "reasoning_content")  # noqa: B009
