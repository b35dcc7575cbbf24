"""Writing what an attempt produced: result rows and the job's state change in one transaction, fenced
by the attempt id, so a redelivered message or a superseded (zombie) attempt can never write twice."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import cast

from sqlalchemy import Boolean, Table, bindparam, case, insert, select, true, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.breaker import BreakerPolicy, Event, Trip, classify, record_events
from vlmbatch.schema.ledger.checkpoints import CONTINUABLE_FINISH, Checkpoint, settle_checkpoints
from vlmbatch.schema.ledger.clock import database_now
from vlmbatch.schema.ledger.counters import Bucket, CountDeltas
from vlmbatch.schema.ledger.dialect import lock_for_update
from vlmbatch.schema.ledger.tables import Attempt, Job, Result

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
    grader: str | None = None
    grader_version: str | None = None
    # The thinking budget closed the trace (None: no budget was set).
    thinking_capped: bool | None = None


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
    # SHA-256 of each image's bytes as read, in the job's order (attempts that read them).
    image_hashes: tuple[str, ...] | None = None
    # The whole output's token ids of a one-sample attempt (kept as the job's checkpoint when it ended at
    # its max_tokens, so that a resubmit continues it).
    output_token_ids: tuple[int, ...] | None = None
    # The attempt continued the checkpoint written by this attempt, whose `reused_tokens` begin the trace.
    resumed_from: int | None = None
    reused_tokens: int | None = None


def retry_delay(failures: int, *, rng: random.Random | None = None) -> float:
    """Seconds before retry number `failures` (1-based): exponential backoff with full jitter."""
    ceiling = min(RETRY_CAP_SECONDS, RETRY_BASE_SECONDS * 2 ** max(0, failures - 1))
    return (rng or random).uniform(ceiling / 2, ceiling)


def record_outcomes(
    session: Session,
    reports: Sequence[AttemptReport],
    *,
    breaker: BreakerPolicy | None = None,
    trips: list[Trip] | None = None,
) -> list[AttemptReport]:
    """Write each report whose attempt still holds its job; return those written. The written outcomes
    count into their runs' circuit breakers (`breaker`: the policy; the runs it pauses go to `trips`).

    A report whose attempt no longer holds the job (the job finished, was cancelled or was claimed
    again after its lease expired) changes nothing: not the job, not the attempt, no result rows.
    Runs in the caller's transaction; the caller commits once for the whole batch.
    """
    if not reports:
        return []
    now = database_now(session)
    holding = _still_holding(session, reports)
    written = [r for r in reports if (r.job_id, r.attempt_id) in holding]
    if not written:
        return []
    job_values = [_job_values(r, now) for r in written]
    jobs, attempts = cast(Table, Job.__table__), cast(Table, Attempt.__table__)
    # One statement per table for the whole batch (executemany), not three round trips per report.
    session.execute(
        update(jobs)
        .where(jobs.c.id == bindparam("b_id"))
        .values(
            state=bindparam("b_state"),
            lease_owner=None,
            lease_expires_at=None,
            error_type=bindparam("b_error_type"),
            error_message=bindparam("b_error_message"),
            not_before=bindparam("b_not_before"),
            finished_at=bindparam("b_finished_at"),
            queued_at=case(
                (bindparam("b_requeued", type_=Boolean) == true(), bindparam("b_now")), else_=jobs.c.queued_at
            ),
            transient_failures=case(
                (bindparam("b_transient", type_=Boolean) == true(), jobs.c.transient_failures + 1), else_=0
            ),
            accepted_samples=jobs.c.accepted_samples + bindparam("b_accepted"),
        ),
        job_values,
    )
    session.execute(
        update(attempts)
        .where(attempts.c.id == bindparam("b_id"))
        .values({name: bindparam(f"b_{name}") for name in _ATTEMPT_FIELDS}),
        [_attempt_values(r, now) for r in written],
    )
    rows = [_result_values(r, sample, now) for r in written for sample in r.samples]
    if rows:
        session.execute(insert(cast(Table, Result.__table__)), rows)
    _settle_checkpoints(session, written)
    _count(session, holding, job_values)
    runs = {job_id: run_id for (job_id, _attempt), run_id in holding.items()}
    events = [
        Event(runs[r.job_id], classify(r.outcome, r.error_type), r.error_type and r.error_type.value, r.error_message)
        for r in written
    ]
    tripped = record_events(session, events, policy=breaker or BreakerPolicy(), now=now)
    if trips is not None:
        trips.extend(tripped)
    return written


def _settle_checkpoints(session: Session, written: Sequence[AttemptReport]) -> None:
    """A finished job's checkpoint goes with its result (schema.ledger.checkpoints): dropped when it
    succeeded, was cancelled or samples again; its whole output kept when it ended at its max_tokens;
    left as it is when it failed or retries (a later attempt continues it)."""
    drop: list[int] = []
    keep: list[Checkpoint] = []
    for r in written:
        if r.outcome is AttemptOutcome.TRUNCATED and r.retry_after_s is None:
            if _continuable(r) and r.output_token_ids is not None:
                sample = r.samples[0]
                keep.append(Checkpoint(r.job_id, r.attempt_id, r.output_token_ids, sample.raw_text, CONTINUABLE_FINISH))
            else:
                drop.append(r.job_id)
        elif r.outcome in (AttemptOutcome.SUCCEEDED, AttemptOutcome.CANCELLED) or r.resample:
            drop.append(r.job_id)
    settle_checkpoints(session, drop=drop, keep_final=keep)


def _continuable(report: AttemptReport) -> bool:
    return len(report.samples) == 1 and report.samples[0].finish_reason == CONTINUABLE_FINISH


def _count(session: Session, holding: dict[tuple[int, int], int], job_values: list[dict[str, object]]) -> None:
    """Every written job left `running` for its next state (schema.ledger.counters)."""
    runs = {job_id: run_id for (job_id, _attempt), run_id in holding.items()}
    deltas = CountDeltas()
    # One move per job, even should a batch carry the same report twice.
    for values in {values["b_id"]: values for values in job_values}.values():
        run_id = runs[cast(int, values["b_id"])]
        target = Bucket.of(run_id, cast(str, values["b_state"]), cast("str | None", values["b_error_type"]))
        deltas.move(Bucket.of(run_id, JobState.RUNNING.value), target)
    deltas.apply(session)


def _still_holding(session: Session, reports: Sequence[AttemptReport]) -> dict[tuple[int, int], int]:
    """(job, attempt) pairs whose attempt still holds its running job, with the job's run, locked until
    the transaction ends (on SQLite the BEGIN IMMEDIATE transaction already excludes other writers)."""
    # Ascending id: the ledger's one lock order (schema/ledger/locks.py), jobs before attempts.
    stmt = (
        select(Job.id, Job.current_attempt_id, Job.run_id)
        .where(Job.id.in_({r.job_id for r in reports}), Job.state == JobState.RUNNING.value)
        .order_by(Job.id)
    )
    stmt = lock_for_update(stmt, session)
    return {
        (job_id, attempt_id): run_id for job_id, attempt_id, run_id in session.execute(stmt) if attempt_id is not None
    }


def _job_values(report: AttemptReport, now: datetime) -> dict[str, object]:
    state, not_before, transient = _next_state(report, now)
    return {
        "b_id": report.job_id,
        "b_state": state.value,
        "b_error_type": report.error_type.value if report.error_type else None,
        "b_error_message": report.error_message,
        "b_not_before": not_before,
        "b_finished_at": now if state.terminal else None,
        "b_requeued": not state.terminal,
        "b_now": now,
        "b_transient": transient,
        "b_accepted": report.accepted,
    }


_ATTEMPT_FIELDS = (
    "outcome",
    "error_type",
    "error_message",
    "finished_at",
    "prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "answer_tokens",
    "queue_wait_s",
    "fetch_s",
    "decode_s",
    "generation_s",
    "first_token_s",
    "gpu_seconds",
    "image_hashes",
    "resumed_from_attempt_id",
    "reused_tokens",
)


def _attempt_values(report: AttemptReport, now: datetime) -> dict[str, object]:
    samples, t = report.samples, report.timings
    values: dict[str, object] = {
        "outcome": report.outcome.value,
        "error_type": report.error_type.value if report.error_type else None,
        "error_message": report.error_message,
        "finished_at": now,
        "prompt_tokens": report.prompt_tokens,
        # What this attempt generated: a resumed trace's reused tokens were generated by an earlier one.
        "completion_tokens": sum(s.completion_tokens for s in samples) - (report.reused_tokens or 0)
        if samples
        else None,
        "reasoning_tokens": _sum_known([s.reasoning_tokens for s in samples]),
        "answer_tokens": _sum_known([s.answer_tokens for s in samples]),
        "queue_wait_s": t.queue_wait_s,
        "fetch_s": t.fetch_s,
        "decode_s": t.decode_s,
        "generation_s": t.generation_s,
        "first_token_s": t.first_token_s,
        "gpu_seconds": t.gpu_seconds,
        "image_hashes": list(report.image_hashes) if report.image_hashes is not None else None,
        "resumed_from_attempt_id": report.resumed_from,
        "reused_tokens": report.reused_tokens,
    }
    return {"b_id": report.attempt_id, **{f"b_{k}": v for k, v in values.items()}}


def _result_values(report: AttemptReport, sample: SampleRecord, now: datetime) -> dict[str, object]:
    return {
        "job_id": report.job_id,
        "attempt_id": report.attempt_id,
        "sample_index": sample.sample_index,
        "answer": sample.answer,
        "reasoning": sample.reasoning,
        "raw_text": sample.raw_text,
        "finish_reason": sample.finish_reason,
        "trace_closed": sample.trace_closed,
        "completion_tokens": sample.completion_tokens,
        "reasoning_tokens": sample.reasoning_tokens,
        "answer_tokens": sample.answer_tokens,
        "extracted_answer": sample.extracted_answer,
        "correct": sample.correct,
        "valid": sample.valid,
        "grader": sample.grader,
        "grader_version": sample.grader_version,
        "thinking_capped": sample.thinking_capped,
        "created_at": now,
    }


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


def _sum_known(values: Sequence[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None
