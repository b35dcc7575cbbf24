"""Writing what an attempt produced: result rows and the job's state change in one transaction, fenced
by the attempt id, so a redelivered message or a superseded (zombie) attempt can never write twice."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session

from schema.errors import ErrorType
from schema.states import AttemptOutcome, JobState
from schema.tables import Attempt, Job, Result, utcnow

# Transient retries back off exponentially from this base, with full jitter, up to the cap.
RETRY_BASE_SECONDS = 2.0
RETRY_CAP_SECONDS = 300.0


@dataclass(frozen=True)
class SampleRecord:
    """One sampled completion of an attempt."""

    sample_index: int
    answer: str
    reasoning: str | None
    raw_text: str
    finish_reason: str | None
    trace_closed: bool
    completion_tokens: int
    reasoning_tokens: int | None
    answer_tokens: int | None
    extracted_answer: str | None = None
    correct: bool | None = None
    valid: bool | None = None


@dataclass(frozen=True)
class Timings:
    queue_wait_s: float | None = None
    fetch_s: float | None = None
    decode_s: float | None = None
    generation_s: float | None = None
    first_token_s: float | None = None
    gpu_seconds: float | None = None


@dataclass(frozen=True)
class AttemptReport:
    """Everything one attempt ended with. `outcome` is the attempt's; the job's state follows from it."""

    job_id: int
    attempt_id: int
    outcome: AttemptOutcome
    error_type: ErrorType | None = None
    error_message: str | None = None
    samples: Sequence[SampleRecord] = ()
    prompt_tokens: int | None = None
    timings: Timings = field(default_factory=Timings)
    # A transient failure the job may retry: it goes back to `queued`, claimable after this delay.
    retry_after_s: float | None = None
    # Graded-correct samples in this attempt (added to the job's count).
    accepted: int = 0
    # Accept-until-M: the attempt succeeded but the job needs more correct samples, so it is queued again.
    resample: bool = False


def retry_delay(failures: int, *, rng: random.Random | None = None) -> float:
    """Seconds before retry number `failures` (1-based): exponential backoff with full jitter."""
    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, failures - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def record_outcomes(session: Session, reports: Sequence[AttemptReport]) -> list[AttemptReport]:
    """Write each report whose attempt still holds its job; return those written.

    A report whose attempt no longer holds the job (the job finished, was cancelled or was claimed
    again after its lease expired) changes nothing: not the job, not the attempt, no result rows.
    Runs in the caller's transaction; the caller commits once for the whole batch.
    """
    written = []
    now = utcnow()
    for report in reports:
        if _apply(session, report, now):
            written.append(report)
    return written


def _apply(session: Session, report: AttemptReport, now: datetime) -> bool:
    state, not_before, counts_as_transient = _next_state(report, now)
    values: dict[str, object] = {
        "state": state.value,
        "lease_owner": None,
        "lease_expires_at": None,
        "error_type": report.error_type.value if report.error_type else None,
        "error_message": report.error_message,
        "not_before": not_before,
        "transient_failures": Job.transient_failures + 1 if counts_as_transient else 0,
    }
    if report.accepted:
        values["accepted_samples"] = Job.accepted_samples + report.accepted
    if state.terminal:
        values["finished_at"] = now
    else:
        values["queued_at"] = now
    fenced = session.execute(
        update(Job)
        .where(
            Job.id == report.job_id,
            Job.current_attempt_id == report.attempt_id,
            Job.state == JobState.RUNNING.value,
        )
        .values(**values)
        .execution_options(synchronize_session=False)
    )
    if fenced.rowcount != 1:  # type: ignore[attr-defined]
        return False
    _finish_attempt(session, report, now)
    if report.samples:
        session.add_all(
            Result(
                job_id=report.job_id,
                attempt_id=report.attempt_id,
                sample_index=s.sample_index,
                answer=s.answer,
                reasoning=s.reasoning,
                raw_text=s.raw_text,
                finish_reason=s.finish_reason,
                trace_closed=s.trace_closed,
                completion_tokens=s.completion_tokens,
                reasoning_tokens=s.reasoning_tokens,
                answer_tokens=s.answer_tokens,
                extracted_answer=s.extracted_answer,
                correct=s.correct,
                valid=s.valid,
                created_at=now,
            )
            for s in report.samples
        )
        session.flush()
    return True


def _next_state(report: AttemptReport, now: datetime) -> tuple[JobState, datetime | None, bool]:
    if report.retry_after_s is not None:
        return JobState.QUEUED, now + timedelta(seconds=report.retry_after_s), True
    if report.resample:
        return JobState.QUEUED, None, False
    mapping = {
        AttemptOutcome.SUCCEEDED: JobState.SUCCEEDED,
        AttemptOutcome.TRUNCATED: JobState.TRUNCATED,
        AttemptOutcome.FAILED: JobState.FAILED,
        AttemptOutcome.CANCELLED: JobState.CANCELLED,
        AttemptOutcome.ABANDONED: JobState.QUEUED,
    }
    return mapping[report.outcome], None, False


def _finish_attempt(session: Session, report: AttemptReport, now: datetime) -> None:
    samples = report.samples
    completion = sum(s.completion_tokens for s in samples) if samples else None
    reasoning = _sum_known([s.reasoning_tokens for s in samples])
    answer = _sum_known([s.answer_tokens for s in samples])
    t = report.timings
    session.execute(
        update(Attempt)
        .where(Attempt.id == report.attempt_id)
        .values(
            outcome=report.outcome.value,
            error_type=report.error_type.value if report.error_type else None,
            error_message=report.error_message,
            finished_at=now,
            prompt_tokens=report.prompt_tokens,
            completion_tokens=completion,
            reasoning_tokens=reasoning,
            answer_tokens=answer,
            queue_wait_s=t.queue_wait_s,
            fetch_s=t.fetch_s,
            decode_s=t.decode_s,
            generation_s=t.generation_s,
            first_token_s=t.first_token_s,
            gpu_seconds=t.gpu_seconds,
        )
        .execution_options(synchronize_session=False)
    )


def _sum_known(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
