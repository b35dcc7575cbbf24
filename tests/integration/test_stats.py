"""`vlmbatch stats`: accept rate, trace lengths, truncation, errors and cost, checked against numbers
worked out by hand from ledgers written through the real ledger functions (and the fake-engine pipeline)."""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from click.testing import CliRunner
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

import vlmbatch.producer.cli.outputs
from tests.fixtures.bad_images import good_jpeg, write_mixed_folder
from tests.integration.ledger_helpers import ledger
from tests.integration.pipeline_helpers import running_pipeline, settings_for, submit_folder
from tests.processes import vlmbatch
from vlmbatch.producer.cli import cli
from vlmbatch.producer.reports.stats import nearest_rank, run_accounting, run_stats
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.models import JobSpec, RunSettings
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.claims import claim_jobs
from vlmbatch.schema.ledger.enqueue import insert_jobs
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, Timings, record_outcomes
from vlmbatch.schema.ledger.resubmit import resubmit_jobs
from vlmbatch.schema.ledger.runs import create_or_reuse_run, get_run
from vlmbatch.schema.ledger.tables import Attempt, Job, Run


@dataclass(frozen=True)
class Sample:
    """A sample to write: its reasoning and answer token counts, its grade, and whether the trace closed."""

    reasoning: int
    answer: int = 5
    correct: bool | None = None
    closed: bool = True


def add_jobs(sessions: sessionmaker[Session], run_name: str, specs: Sequence[JobSpec]) -> dict[str, int]:
    """A run holding `specs`; returns job ids keyed by each job's first image's file stem."""
    run = create_or_reuse_run(sessions, name=run_name, settings=RunSettings(), queue="q", source="test")
    with sessions() as session, session.begin():
        insert_jobs(session, run_id=run.id, specs=specs)
        jobs = session.execute(select(Job.id, Job.images).where(Job.run_id == run.id)).all()
    return {images[0].rsplit("/", 1)[-1].removesuffix(".jpg"): job_id for job_id, images in jobs}


def attempt(
    sessions: sessionmaker[Session],
    job_id: int,
    *samples: Sample,
    outcome: AttemptOutcome = AttemptOutcome.SUCCEEDED,
    error: ErrorType | None = None,
    retry: bool = False,
    prompt_tokens: int | None = None,
    gpu_seconds: float | None = None,
) -> int:
    """Claim `job_id` and record one attempt's outcome through the ledger functions; return its id."""
    records = [
        SampleRecord(
            sample_index=i,
            answer=f"answer {i}" if s.closed else "",
            reasoning=f"trace {i} of job {job_id}",
            raw_text=f"trace {i} of job {job_id}" + (f"</think>answer {i}" if s.closed else ""),
            finish_reason="stop" if s.closed else "length",
            trace_closed=s.closed,
            completion_tokens=s.reasoning + s.answer,
            reasoning_tokens=s.reasoning,
            answer_tokens=s.answer,
            extracted_answer=None if s.correct is None else f"X{i}",
            correct=s.correct,
        )
        for i, s in enumerate(samples)
    ]
    with sessions() as session, session.begin():
        [claimed] = claim_jobs(session, job_ids=[job_id], worker="w", lease_seconds=60)
        report = AttemptReport(
            job_id=job_id,
            attempt_id=claimed.attempt_id,
            outcome=outcome,
            error_type=error,
            error_message=None if error is None else f"{error} in attempt",
            samples=records,
            prompt_tokens=prompt_tokens,
            timings=Timings(queue_wait_s=0.5, generation_s=1.5, gpu_seconds=gpu_seconds),
            retry_after_s=0.0 if retry else None,
        )
        assert record_outcomes(session, [report]) == [report]
    return claimed.attempt_id


def resubmit(sessions: sessionmaker[Session], job_id: int) -> None:
    with sessions() as session, session.begin():
        assert resubmit_jobs(session, job_ids=[job_id]) == [job_id]


def build_graded_run(sessions: sessionmaker[Session], name: str = "graded") -> dict[str, int]:
    """Seven jobs A..G whose statistics are worked out by hand in `GRADED_RUN_STATS`.

    A: a timeout that used the GPU, retried; then two graded samples, one correct (two images).
    B: two graded samples, both wrong.  C: two ungraded samples.  D: truncated (one unclosed trace).
    E: failed on an unreadable input.  F: succeeded with a correct 1000-token trace, was resubmitted, and
    now stands with a correct 70-token trace.  G: still queued.
    """
    specs = [
        JobSpec(
            images=(f"file:///img/{letter}.jpg", *(("file:///img/A2.jpg",) if letter == "A" else ())),
            question=f"Question {letter}?",
            reference=None if letter == "C" else "X0",
            meta={"letter": letter, "page": index},
        )
        for index, letter in enumerate("ABCDEFG")
    ]
    jobs = add_jobs(sessions, name, specs)
    attempt(sessions, jobs["A"], error=ErrorType.TIMEOUT, outcome=AttemptOutcome.FAILED, retry=True,
            prompt_tokens=100, gpu_seconds=2.0)  # fmt: skip
    attempt(
        sessions, jobs["A"], Sample(10, correct=True), Sample(20, correct=False), prompt_tokens=100, gpu_seconds=1.0
    )
    attempt(sessions, jobs["B"], Sample(30, 4, False), Sample(40, 4, False), prompt_tokens=200, gpu_seconds=3.0)
    attempt(sessions, jobs["C"], Sample(50, 2), Sample(60, 2), prompt_tokens=50, gpu_seconds=0.5)
    attempt(sessions, jobs["D"], Sample(100, 0, closed=False), outcome=AttemptOutcome.TRUNCATED,
            prompt_tokens=80, gpu_seconds=4.0)  # fmt: skip
    attempt(sessions, jobs["E"], outcome=AttemptOutcome.FAILED, error=ErrorType.INPUT_UNREADABLE)
    attempt(sessions, jobs["F"], Sample(1000, 5, True), prompt_tokens=10, gpu_seconds=10.0)
    resubmit(sessions, jobs["F"])
    attempt(sessions, jobs["F"], Sample(70, 3, True), prompt_tokens=10, gpu_seconds=1.0)
    return jobs


# Standing samples' reasoning tokens, sorted: 10 20 30 40 50 60 70 100 (F's 1000 is history).
# p50 = rank ceil(0.5*8) = 4 -> 40; p90 = rank ceil(7.2) = 8 -> 100; p99 = rank 8 -> 100; mean 380/8.
GRADED_RUN_STATS = {
    "name": "graded",
    "jobs": {
        "total": 7,
        "by_state": {"queued": 1, "running": 0, "succeeded": 4, "failed": 1, "truncated": 1, "cancelled": 0},
    },
    "errors": {"jobs": {"input.unreadable": 1}, "attempts": {"input.unreadable": 1, "timeout": 1}},
    # graded: A 2 (1 correct), B 2 (0), F 1 (1); C ungraded, D's unclosed sample ungraded.
    "samples": {
        "standing": 8,
        "graded": 5,
        "correct": 2,
        "accept_rate": 2 / 5,
        "jobs_graded": 3,
        "jobs_with_correct": 2,
        "job_accept_rate": 2 / 3,
    },
    "trace_tokens": {"samples": 8, "p50": 40, "p90": 100, "p99": 100, "max": 100, "mean": 47.5},
    # finished jobs: A B C D E F.
    "truncation": {
        "samples": 1,
        "sample_rate": 1 / 8,
        "jobs": 1,
        "finished_jobs": 6,
        "job_rate": 1 / 6,
        "by_finish": {"length": 1, "context": 0, "repetition": 0},
    },
    "thinking_capped": {"samples": 0, "jobs": 0},
    "checkpoints": {"resumed_attempts": 0, "reused_tokens": 0, "jobs_with_tokens": 0},
    "cost": {
        # attempts: A1 A2 B C D E F1 F2 (G never ran).
        "all_attempts": {
            "attempts": 8,
            "prompt_tokens": 100 + 100 + 200 + 50 + 80 + 10 + 10,
            "completion_tokens": 1380 + 30,
            "reasoning_tokens": 10 + 20 + 30 + 40 + 50 + 60 + 100 + 1000 + 70,
            "answer_tokens": 5 + 5 + 4 + 4 + 2 + 2 + 0 + 5 + 3,
            "gpu_seconds": 2.0 + 1.0 + 3.0 + 0.5 + 4.0 + 10.0 + 1.0,
        },
        # the current attempts of finished jobs: A2 B C D E F2.
        "standing": {
            "attempts": 6,
            "prompt_tokens": 100 + 200 + 50 + 80 + 10,
            "completion_tokens": 380 + 25,
            "reasoning_tokens": 10 + 20 + 30 + 40 + 50 + 60 + 100 + 70,
            "answer_tokens": 5 + 5 + 4 + 4 + 2 + 2 + 0 + 3,
            "gpu_seconds": 1.0 + 3.0 + 0.5 + 4.0 + 1.0,
        },
    },
}


def _stats_of(sessions: sessionmaker[Session], run: str) -> dict[str, object]:
    with sessions() as session:
        return run_stats(session, get_run(session, run)).model_dump(mode="json")


def test_stats_match_the_numbers_worked_out_by_hand(database_url: str) -> None:
    sessions = ledger(database_url)
    build_graded_run(sessions)
    stats = _stats_of(sessions, "graded")
    assert isinstance(stats.pop("run"), int)
    assert stats == GRADED_RUN_STATS


def test_run_accounting_counts_retries_and_superseded_attempts_only_in_the_all_attempts_total(
    sqlite_url: str,
) -> None:
    sessions = ledger(sqlite_url)
    build_graded_run(sessions)
    with sessions() as session:
        run_id = get_run(session, "graded").id
        accounting = run_accounting(session, run_id)
    assert accounting.model_dump() == GRADED_RUN_STATS["cost"]


def test_trace_percentiles_are_nearest_rank_over_standing_samples_only(database_url: str) -> None:
    sessions = ledger(database_url)
    jobs = add_jobs(sessions, "spread", [JobSpec(images=(f"file:///img/{n}.jpg",), question="q") for n in "PQ"])
    lengths = list(range(1, 101))
    random.Random(7).shuffle(lengths)  # the database sorts, not the order of writing
    attempt(sessions, jobs["P"], *(Sample(n) for n in lengths[:60]))
    attempt(sessions, jobs["Q"], *(Sample(10_000) for _ in range(50)))  # superseded below: history only
    resubmit(sessions, jobs["Q"])
    attempt(sessions, jobs["Q"], *(Sample(n) for n in lengths[60:]))
    trace = _stats_of(sessions, "spread")["trace_tokens"]
    assert trace == {"samples": 100, "p50": 50, "p90": 90, "p99": 99, "max": 100, "mean": 50.5}
    assert [nearest_rank(p, 8) for p in (50, 90, 99, 100)] == [4, 8, 8, 8]
    assert [nearest_rank(p, 1) for p in (50, 99)] == [1, 1]


def test_a_run_with_nothing_finished_has_null_rates_and_no_trace_statistics(sqlite_url: str) -> None:
    sessions = ledger(sqlite_url)
    add_jobs(sessions, "fresh", [JobSpec(images=("file:///img/a.jpg",), question="q")])
    stats = _stats_of(sessions, "fresh")
    assert stats["samples"] == {
        "standing": 0,
        "graded": 0,
        "correct": 0,
        "accept_rate": None,
        "jobs_graded": 0,
        "jobs_with_correct": 0,
        "job_accept_rate": None,
    }
    assert stats["trace_tokens"] == {"samples": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    assert stats["truncation"] == {
        "samples": 0,
        "sample_rate": None,
        "jobs": 0,
        "finished_jobs": 0,
        "job_rate": None,
        "by_finish": {"length": 0, "context": 0, "repetition": 0},
    }
    zero = {"attempts": 0, "prompt_tokens": 0, "completion_tokens": 0, "reasoning_tokens": 0, "answer_tokens": 0}
    assert stats["cost"] == {"all_attempts": {**zero, "gpu_seconds": 0.0}, "standing": {**zero, "gpu_seconds": 0.0}}


def test_a_pipeline_run_reports_its_input_errors_truncations_and_the_cost_its_attempts_recorded(
    sqlite_url: str, tmp_path: Path
) -> None:
    expected = write_mixed_folder(tmp_path / "mixed", good=3, odd=False)
    (tmp_path / "long").mkdir()
    (tmp_path / "long" / "a.jpg").write_bytes(good_jpeg(32, 32))
    with running_pipeline(settings_for(sqlite_url)) as (pipeline, sessions):
        mixed = submit_folder(sessions, tmp_path / "mixed", samples=2)
        cut = submit_folder(sessions, tmp_path / "long", samples=2, max_tokens=5)
        pipeline.feed_run(mixed).result(timeout=30)
        pipeline.feed_run(cut).result(timeout=30)
    bad = [str(error) for error in expected.values() if error is not None]
    with sessions() as session:
        mixed_stats = run_stats(session, session.get_one(Run, mixed))
        cut_stats = run_stats(session, session.get_one(Run, cut))
        spent = session.execute(
            select(func.sum(Attempt.prompt_tokens), func.sum(Attempt.reasoning_tokens), func.sum(Attempt.gpu_seconds))
            .join(Job, Job.id == Attempt.job_id)
            .where(Job.run_id == mixed)
        ).one()

    assert (mixed_stats.jobs.by_state["succeeded"], mixed_stats.jobs.by_state["failed"]) == (3, len(bad))
    assert mixed_stats.errors.jobs == mixed_stats.errors.attempts == {e: bad.count(e) for e in set(bad)}
    assert (mixed_stats.samples.standing, mixed_stats.samples.graded, mixed_stats.samples.accept_rate) == (6, 0, None)
    # The fake engine's traces are 24 words plus the `</think>`: 25 reasoning tokens, every sample.
    assert (mixed_stats.trace_tokens.p50, mixed_stats.trace_tokens.p99, mixed_stats.trace_tokens.max) == (25, 25, 25)
    assert mixed_stats.truncation.sample_rate == 0.0
    cost = mixed_stats.cost
    assert cost.all_attempts == cost.standing  # no retries
    assert (cost.all_attempts.prompt_tokens, cost.all_attempts.reasoning_tokens) == (spent[0], spent[1])
    assert cost.all_attempts.gpu_seconds == spent[2] and cost.all_attempts.gpu_seconds > 0

    assert cut_stats.truncation.model_dump() == {
        "samples": 2,
        "sample_rate": 1.0,
        "jobs": 1,
        "finished_jobs": 1,
        "job_rate": 1.0,
        "by_finish": {"length": 2, "context": 0, "repetition": 0},
    }


def test_the_stats_command_prints_tables_or_the_documented_json(sqlite_url: str) -> None:
    sessions = ledger(sqlite_url)
    build_graded_run(sessions)
    env = {"VLMBATCH_DATABASE_URL": sqlite_url}

    as_json = vlmbatch(["stats", "graded", "--json"], env)
    assert as_json.returncode == 0, as_json.stderr
    assert json.loads(as_json.stdout) == _stats_of(sessions, "graded")

    human = CliRunner().invoke(cli, ["stats", "graded"], env=env)
    assert human.exit_code == 0, human.output
    lines = human.output.splitlines()
    assert lines[0].endswith("(graded): 7 jobs")
    for shown in ("40.0%", "66.7%", "truncated: 1 of 8 samples (12.5%), 1 of 6 finished jobs (16.7%)", "timeout"):
        assert shown in human.output
    assert any(line.split()[:3] == ["all", "attempts", "8"] for line in lines)
