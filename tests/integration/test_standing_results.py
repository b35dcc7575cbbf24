"""One definition of the standing results (schema/ledger/standing.py) behind the browser, the export and the
stats. The oracle is the scenario itself: which attempts wrote which samples, and which of them came
before a resubmit, known from the claims the test made, not from any query."""

from __future__ import annotations

import json
from pathlib import Path

from sqlalchemy.orm import Session, sessionmaker

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.producer.browser import queries
from vlmbatch.producer.reports.export import export_run
from vlmbatch.producer.reports.stats import run_stats
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.claims import claim_jobs
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.resubmit import resubmit_jobs
from vlmbatch.schema.ledger.tables import Run

Sample = tuple[int, int, int]  # (job, attempt, sample index)


def _sample(index: int, correct: bool) -> SampleRecord:
    return SampleRecord(
        sample_index=index,
        answer=f"answer {index}",
        reasoning="because",
        raw_text=f"because</think>answer {index}",
        finish_reason="stop",
        trace_closed=True,
        completion_tokens=3,
        reasoning_tokens=1,
        answer_tokens=2,
        correct=correct,
        valid=True,
    )


def _attempt(
    sessions: sessionmaker[Session], job_id: int, correct: list[bool], *, resample: bool = False, retry: bool = False
) -> list[Sample]:
    """Claim the job, write one attempt with samples graded `correct`; the samples written."""
    with sessions() as session, session.begin():
        (claim,) = claim_jobs(session, job_ids=[job_id], worker="w", lease_seconds=60)
        if retry:
            report = AttemptReport(
                job_id=job_id,
                attempt_id=claim.attempt_id,
                outcome=AttemptOutcome.FAILED,
                error_type=ErrorType.STORAGE_TRANSIENT,
                retry_after_s=0.0,
            )
            record_outcomes(session, [report])
            return []
        samples = [_sample(i, c) for i, c in enumerate(correct)]
        report = AttemptReport(
            job_id=job_id,
            attempt_id=claim.attempt_id,
            outcome=AttemptOutcome.SUCCEEDED,
            samples=samples,
            accepted=sum(correct),
            resample=resample,
        )
        record_outcomes(session, [report])
    return [(job_id, claim.attempt_id, i) for i in range(len(correct))]


def test_browser_export_and_stats_agree_on_the_standing_results_of_every_round(sqlite_url: str, tmp_path: Path) -> None:
    sessions = ledger(sqlite_url)
    run_id, (rounds, resubmitted, retried) = make_run(sessions, jobs=3, grader="exact", accept=2)
    # An accept-until-M job: two sampling rounds stand together (sample indexes repeat across rounds).
    standing = _attempt(sessions, rounds, [False, True], resample=True) + _attempt(sessions, rounds, [True, False])
    # A job resubmitted after its first result: that result is history.
    history = _attempt(sessions, resubmitted, [True, True])
    with sessions() as session, session.begin():
        resubmit_jobs(session, job_ids=[resubmitted])
    standing += _attempt(sessions, resubmitted, [False])
    # A transient failure, then a result.
    _attempt(sessions, retried, [], retry=True)
    standing += _attempt(sessions, retried, [True])
    expected = set(standing)
    assert len(expected) == 6 and not expected & set(history)

    with sessions() as session:
        run = session.get(Run, run_id)
        assert run is not None
        shown = {
            (job_id, result.attempt_id, result.sample_index)
            for job_id in (rounds, resubmitted, retried)
            for result in queries.get_job(session, job_id).standing
        }
        page = queries.job_page(session, run_id, queries.ResultFilter(), limit=10)
        correct_jobs = queries.job_page(session, run_id, queries.ResultFilter(correctness="correct"), limit=10)
        stats = run_stats(session, run)
    assert shown == expected
    by_job = {row.id: (row.samples, row.correct) for row in page.rows}
    assert by_job == {rounds: (4, 2), resubmitted: (1, 0), retried: (1, 1)}
    # The resubmitted job's only correct samples are history: it is not a correct job any more.
    assert {row.id for row in correct_jobs.rows} == {rounds, retried}
    assert (stats.samples.standing, stats.samples.correct) == (6, 3)

    # (The training formats read the same standing samples: tests/integration/test_training_export.py.)
    for fmt in ("jsonl",):
        out = tmp_path / f"export.{fmt}"
        export_run(sessions, run=run, fmt=fmt, out=out)  # type: ignore[arg-type]
        records = [json.loads(line) for line in out.read_text().splitlines()]
        assert {(r["job_id"], r["attempt_id"], r["sample_index"]) for r in records} == expected
        assert all(r["valid"] is True for r in records)
