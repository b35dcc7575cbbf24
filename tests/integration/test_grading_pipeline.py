"""Graded sampling through the pipeline (fake engine): references, graders, accept-until-M, constraints."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from vlmbatch.producer.reports.export import ExportFilter, iter_records
from vlmbatch.schema.contracts.errors import SourceError
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.grading import grader_version
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run
from vlmbatch.worker.engines.fake import FakeBehaviour


def _manifest(tmp_path: Path, rows: list[dict[str, object]]) -> Path:
    for row in rows:
        (tmp_path / str(row["image"])).write_bytes(good_jpeg(32, 32))
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("\n".join(json.dumps(r) for r in rows))
    return manifest


def test_samples_are_graded_against_the_reference(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "Which?", "reference": "(A)"}])
    behaviour = FakeBehaviour(answer_cycle=("The answer is A.", "B", "I choose C"))
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="choice", samples=3)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        graded = session.execute(
            select(Result.sample_index, Result.extracted_answer, Result.correct).order_by(Result.sample_index)
        ).all()
        job = session.scalars(select(Job)).one()
    assert graded == [(0, "A", True), (1, "B", False), (2, "C", False)]
    assert (job.state, job.accepted_samples) == (JobState.SUCCEEDED, 1)


def test_an_mmmu_options_column_lets_an_answer_state_the_options_text(sqlite_url: str, tmp_path: Path) -> None:
    # MMMU keeps its options as a Python-list string in a column of its own.
    row = {"image": "a.jpg", "question": "Which vehicle?", "reference": "B", "options": "['blue car', 'red car']"}
    manifest = _manifest(tmp_path, [row])
    behaviour = FakeBehaviour(answer_cycle=("The answer is the red car.", "Blue car", "(B)"))
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="choice", samples=3)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        graded = session.execute(
            select(Result.extracted_answer, Result.correct, Result.grader, Result.grader_version).order_by(
                Result.sample_index
            )
        ).all()
    version = grader_version("choice")
    assert graded == [("B", True, "choice", version), ("A", False, "choice", version), ("B", True, "choice", version)]


def test_a_question_with_nine_options_has_nine_letters(sqlite_url: str, tmp_path: Path) -> None:
    options = [f"option {n}" for n in range(1, 10)]
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "Which?", "reference": "H", "options": options}])
    behaviour = FakeBehaviour(answer_cycle=("The answer is H.", "option 8", "I"))
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="choice", samples=3)  # "H" is a usable reference here
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        graded = session.execute(select(Result.extracted_answer, Result.correct).order_by(Result.sample_index)).all()
    assert graded == [("H", True), ("H", True), ("I", False)]


def test_boxed_answers_are_compared_symbolically_on_the_workers_threads(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "sin 45?", "reference": "\\sqrt{2}/2"}])
    behaviour = FakeBehaviour(
        answer_cycle=("\\boxed{\\frac{\\sqrt2}{2}}", "\\boxed{\\frac{1}{\\sqrt{2}}}", "\\boxed{2}")
    )
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="boxed", samples=3)
        pipeline.feed_run(run_id).result(timeout=60)
    with sessions() as session:
        graded = session.execute(select(Result.correct, Result.grader_version).order_by(Result.sample_index)).all()
    assert graded == [
        (True, grader_version("boxed")),
        (True, grader_version("boxed")),
        (False, grader_version("boxed")),
    ]
    assert "math-verify" in grader_version("boxed")


def test_ungraded_results_name_no_grader(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "What?"}])
    with running_pipeline(settings_for(sqlite_url)) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        assert session.execute(select(Result.grader, Result.grader_version)).all() == [(None, None)]


def test_accept_keeps_sampling_until_enough_correct_samples(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "How many?", "reference": "12"}])
    behaviour = FakeBehaviour(answer_cycle=("12", "13"))  # one correct sample per round of two
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="numeric", samples=2, accept=3, max_attempts=10)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
        attempts = session.scalars(select(Attempt.outcome)).all()
        correct = session.scalars(select(Result.correct)).all()
    assert (job.state, job.accepted_samples) == (JobState.SUCCEEDED, 3)
    assert attempts == [AttemptOutcome.SUCCEEDED] * 3  # three rounds, then enough
    assert correct == [True, False] * 3
    with sessions() as session:
        run = session.get(Run, run_id)
    assert run is not None
    exported = list(iter_records(sessions, run, ExportFilter(only_correct=True)))
    assert len(exported) == 3  # every round's correct sample stands, not only the last round's


def test_accept_stops_at_the_attempt_cap_and_still_succeeds(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "How many?", "reference": "12"}])
    behaviour = FakeBehaviour(answer_cycle=("7",))  # never right
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="numeric", accept=1, max_attempts=4)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        job = session.scalars(select(Job)).one()
    assert (job.state, job.accepted_samples, job.attempt_count) == (JobState.SUCCEEDED, 0, 4)


def test_answers_outside_the_choices_are_recorded_invalid_and_never_correct(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "Animal?", "reference": "cat"}])
    behaviour = FakeBehaviour(answer_cycle=("cat", "tiger"))
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, grader="exact", samples=2, choices=("cat", "dog"))
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        rows = session.execute(select(Result.answer, Result.valid, Result.correct).order_by(Result.id)).all()
    assert rows == [("cat", True, True), ("tiger", False, False)]


def test_json_schema_answers_are_checked(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, [{"image": "a.jpg", "question": "Count?"}])
    schema = {"type": "object", "properties": {"count": {"type": "integer"}}, "required": ["count"]}
    behaviour = FakeBehaviour(answer_cycle=('{"count": 3}', '{"count": "three"}', "not json"))
    with running_pipeline(settings_for(sqlite_url), behaviour=behaviour) as (pipeline, sessions):
        run_id = submit_folder(sessions, manifest, samples=3, json_schema=schema)
        pipeline.feed_run(run_id).result(timeout=30)
    with sessions() as session:
        assert session.scalars(select(Result.valid).order_by(Result.id)).all() == [True, False, False]


def test_a_reference_the_grader_cannot_read_refuses_the_submit(sqlite_url: str, tmp_path: Path) -> None:
    manifest = _manifest(
        tmp_path, [{"image": "a.jpg", "question": "Q?", "reference": "B"}, {"image": "b.jpg", "reference": "cat"}]
    )
    with running_pipeline(settings_for(sqlite_url)) as (_, sessions), pytest.raises(SourceError) as raised:
        submit_folder(sessions, manifest, question="Q?", grader="choice")
    assert "line 2" in raised.value.message and "1 malformed" in raised.value.message
