"""What a run produced and what it cost: accept rate, trace lengths, truncation, errors, tokens and GPU time.

Every number is computed in SQL (counts, sums, and a window function for the percentiles); nothing loads
a table into memory. *Standing* samples are the results of each finished job's current attempt (what
`vlmbatch export` writes); earlier attempts of resubmitted or retried jobs count only towards cost.

`vlmbatch stats --json` prints `RunStats.model_dump(mode="json")`::

    {"run": 1, "name": "my-run",
     "jobs": {"total": 7, "by_state": {"queued": 1, "running": 0, "succeeded": 4, ...}},
     "errors": {"jobs": {"input.unreadable": 1},                    # failed jobs by final error type
                "attempts": {"input.unreadable": 1, "timeout": 1}}, # every attempt's error, retries included
     "samples": {"standing": 8, "graded": 5, "correct": 2, "accept_rate": 0.4,
                 "jobs_graded": 3, "jobs_with_correct": 2, "job_accept_rate": 0.667},
     "trace_tokens": {"samples": 8, "p50": 40, "p90": 100, "p99": 100, "max": 100, "mean": 47.5},
     "truncation": {"samples": 1, "sample_rate": 0.125, "jobs": 1, "finished_jobs": 6, "job_rate": 0.167,
                    "by_finish": {"length": 1, "context": 0, "repetition": 0}},
     "thinking_capped": {"samples": 0, "jobs": 0},
     "checkpoints": {"resumed_attempts": 1, "reused_tokens": 800, "jobs_with_tokens": 1},
     "cost": {"all_attempts": {"attempts": 8, "prompt_tokens": 550, "completion_tokens": 1410,
                               "reasoning_tokens": 1380, "answer_tokens": 30, "gpu_seconds": 21.5},
              "standing": {...the same keys, over the current attempts of finished jobs...}}}

- `graded` samples have `correct` set (true or false); `accept_rate` = correct / graded.
  `job_accept_rate` = jobs with at least one correct standing sample / jobs with a graded one.
- Percentiles are nearest-rank over the standing samples' `reasoning_tokens`: pN is the smallest value
  that at least N% of the samples do not exceed. Samples without a reasoning count are left out.
- A truncated sample ended without an answer of its own: on `max_tokens` (`length`), on the context
  limit (`context`) or stopped as a loop (`repetition`), counted apart in `by_finish`; `job_rate` is
  truncated jobs over finished jobs.
- `thinking_capped`: standing samples (and their jobs) whose thinking budget ran out, so vLLM closed the
  trace and the model answered: they succeeded, and are not truncation.
- `checkpoints`: attempts that continued a checkpoint instead of starting again, the tokens they reused
  (not generated again: `cost.completion_tokens` counts only tokens generated), and the jobs holding
  kept tokens now (schema.ledger.checkpoints.token_reuse).
- Rates and trace statistics are null when there is nothing to divide by or measure.
"""

from __future__ import annotations

from dataclasses import asdict

from pydantic import BaseModel, ConfigDict
from sqlalchemy import ColumnElement, and_, case, distinct, func, select
from sqlalchemy.orm import Session

from vlmbatch.producer.reports.records import standing_results
from vlmbatch.schema.contracts.finish import CONTEXT, LENGTH, REPETITION
from vlmbatch.schema.contracts.states import TERMINAL_STATES, JobState
from vlmbatch.schema.ledger.checkpoints import token_reuse
from vlmbatch.schema.ledger.standing import attempt_stands
from vlmbatch.schema.ledger.status import run_status
from vlmbatch.schema.ledger.tables import Attempt, Job, Result, Run

PERCENTILES = (50, 90, 99)
_FINISHED = sorted(TERMINAL_STATES)
# The truncating finish kinds (finish.TRUNCATING), in the order `by_finish` lists them.
_TRUNCATING = (LENGTH, CONTEXT, REPETITION)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Totals(_Frozen):
    """Sums over a set of attempts (null counts add nothing)."""

    attempts: int
    prompt_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    answer_tokens: int
    gpu_seconds: float


class Accounting(_Frozen):
    """A run's cost: over every attempt (retries and superseded attempts included), and over the
    standing attempts only (what the exported results cost)."""

    all_attempts: Totals
    standing: Totals


class JobCounts(_Frozen):
    total: int
    by_state: dict[str, int]


class ErrorCounts(_Frozen):
    jobs: dict[str, int]
    attempts: dict[str, int]


class SampleStats(_Frozen):
    standing: int
    graded: int
    correct: int
    accept_rate: float | None
    jobs_graded: int
    jobs_with_correct: int
    job_accept_rate: float | None


class TraceTokens(_Frozen):
    samples: int
    p50: int | None
    p90: int | None
    p99: int | None
    max: int | None
    mean: float | None


class Truncation(_Frozen):
    samples: int
    sample_rate: float | None
    jobs: int
    finished_jobs: int
    job_rate: float | None
    # Truncated samples by how they ended (schema/contracts/finish.py).
    by_finish: dict[str, int]


class ThinkingCapped(_Frozen):
    samples: int
    jobs: int


class CheckpointTokens(_Frozen):
    resumed_attempts: int
    reused_tokens: int
    jobs_with_tokens: int


class RunStats(_Frozen):
    """`vlmbatch stats --json`: exactly these keys (module docstring)."""

    run: int
    name: str
    jobs: JobCounts
    errors: ErrorCounts
    samples: SampleStats
    trace_tokens: TraceTokens
    truncation: Truncation
    thinking_capped: ThinkingCapped
    checkpoints: CheckpointTokens
    cost: Accounting


def run_stats(session: Session, run: Run) -> RunStats:
    """All statistics of `run`, in a handful of aggregate queries."""
    status = run_status(session, run.id)
    samples, by_finish, capped = _sample_stats(session, run.id)
    truncated_samples = sum(by_finish.values())
    finished = sum(status.counts[s.value] for s in _FINISHED)
    truncated_jobs = status.counts[JobState.TRUNCATED.value]
    return RunStats(
        run=run.id,
        name=run.name,
        jobs=JobCounts(total=status.total, by_state=status.counts),
        errors=ErrorCounts(jobs=status.errors, attempts=_attempt_errors(session, run.id)),
        samples=samples,
        trace_tokens=trace_tokens(session, run.id),
        truncation=Truncation(
            samples=truncated_samples,
            sample_rate=_rate(truncated_samples, samples.standing),
            jobs=truncated_jobs,
            finished_jobs=finished,
            job_rate=_rate(truncated_jobs, finished),
            by_finish=by_finish,
        ),
        thinking_capped=capped,
        checkpoints=CheckpointTokens(**asdict(token_reuse(session, run_id=run.id))),
        cost=run_accounting(session, run.id),
    )


def run_accounting(session: Session, run_id: int) -> Accounting:
    """Token and GPU-second totals of `run_id`, over all attempts and over the standing ones."""
    everything = Job.run_id == run_id
    standing = and_(everything, Job.state.in_([s.value for s in _FINISHED]), attempt_stands())
    return Accounting(all_attempts=_totals(session, everything), standing=_totals(session, standing))


def trace_tokens(session: Session, run_id: int) -> TraceTokens:
    """Nearest-rank percentiles, max and mean of the standing samples' reasoning tokens.

    The percentiles come from one sorted pass in the database (`row_number()` over the sorted column,
    on SQLite and PostgreSQL alike): only the rows at the wanted ranks travel back.
    """
    tokens = Result.reasoning_tokens
    where = and_(standing_results(run_id, _FINISHED), tokens.is_not(None))
    count, largest, mean = session.execute(
        select(func.count(), func.max(tokens), func.avg(tokens))
        .select_from(Result)
        .join(Job, Job.id == Result.job_id)
        .where(where)
    ).one()
    if not count:
        return TraceTokens(samples=0, p50=None, p90=None, p99=None, max=None, mean=None)
    ranks = {p: nearest_rank(p, count) for p in PERCENTILES}
    ranked = (
        select(tokens.label("tokens"), func.row_number().over(order_by=tokens).label("rank"))
        .select_from(Result)
        .join(Job, Job.id == Result.job_id)
        .where(where)
        .subquery()
    )
    rows = session.execute(select(ranked.c.rank, ranked.c.tokens).where(ranked.c.rank.in_(set(ranks.values()))))
    at_rank = {int(rank): int(value) for rank, value in rows.tuples()}
    return TraceTokens(
        samples=count,
        p50=at_rank[ranks[50]],
        p90=at_rank[ranks[90]],
        p99=at_rank[ranks[99]],
        max=largest,
        mean=float(mean),
    )


def nearest_rank(percent: int, count: int) -> int:
    """The 1-based rank of the `percent`th percentile among `count` sorted values (nearest-rank method)."""
    return max(1, -(-percent * count // 100))


def sample_stats(session: Session, run_id: int) -> SampleStats:
    """The run's standing samples: how many, graded, correct (its accuracy)."""
    return _sample_stats(session, run_id)[0]


def accuracy_line(stats: SampleStats) -> str | None:
    """A graded run's accuracy in words; None when nothing is graded yet."""
    if not stats.graded:
        return None
    line = f"{100 * (stats.accept_rate or 0):.1f}% of {stats.graded:,} graded samples correct"
    if stats.jobs_graded:
        line += f"; {stats.jobs_with_correct:,} of {stats.jobs_graded:,} graded jobs have a correct sample"
    return line


def _sample_stats(session: Session, run_id: int) -> tuple[SampleStats, dict[str, int], ThinkingCapped]:
    graded = Result.correct.is_not(None)
    correct = Result.correct.is_(True)
    capped = Result.thinking_capped.is_(True)
    row = session.execute(
        select(
            func.count(),
            func.count(Result.correct),
            _count_if(correct),
            func.count(distinct(case((graded, Result.job_id)))),
            func.count(distinct(case((correct, Result.job_id)))),
            *(_count_if(Result.finish_reason == kind) for kind in _TRUNCATING),
            _count_if(capped),
            func.count(distinct(case((capped, Result.job_id)))),
        )
        .select_from(Result)
        .join(Job, Job.id == Result.job_id)
        .where(standing_results(run_id, _FINISHED))
    ).one()
    standing, n_graded, n_correct, jobs_graded, jobs_correct, *by_kind, capped_samples, capped_jobs = (
        int(v or 0) for v in row
    )
    stats = SampleStats(
        standing=standing,
        graded=n_graded,
        correct=n_correct,
        accept_rate=_rate(n_correct, n_graded),
        jobs_graded=jobs_graded,
        jobs_with_correct=jobs_correct,
        job_accept_rate=_rate(jobs_correct, jobs_graded),
    )
    return stats, dict(zip(_TRUNCATING, by_kind, strict=True)), ThinkingCapped(samples=capped_samples, jobs=capped_jobs)


def _attempt_errors(session: Session, run_id: int) -> dict[str, int]:
    rows = session.execute(
        select(Attempt.error_type, func.count())
        .join(Job, Job.id == Attempt.job_id)
        .where(Job.run_id == run_id, Attempt.error_type.is_not(None))
        .group_by(Attempt.error_type)
        .order_by(func.count().desc(), Attempt.error_type)
    ).tuples()
    return {str(error_type): int(n) for error_type, n in rows}


def _totals(session: Session, where: ColumnElement[bool]) -> Totals:
    attempts, prompt, completion, reasoning, answer, gpu = session.execute(
        select(
            func.count(Attempt.id),
            func.sum(Attempt.prompt_tokens),
            func.sum(Attempt.completion_tokens),
            func.sum(Attempt.reasoning_tokens),
            func.sum(Attempt.answer_tokens),
            func.sum(Attempt.gpu_seconds),
        )
        .select_from(Attempt)
        .join(Job, Job.id == Attempt.job_id)
        .where(where)
    ).one()
    # SUM over no rows (or only nulls) is NULL: nothing spent.
    return Totals(
        attempts=int(attempts),
        prompt_tokens=int(prompt or 0),
        completion_tokens=int(completion or 0),
        reasoning_tokens=int(reasoning or 0),
        answer_tokens=int(answer or 0),
        gpu_seconds=float(gpu or 0.0),
    )


def _count_if(condition: ColumnElement[bool]) -> ColumnElement[int]:
    # SUM(CASE ...) rather than COUNT(*) FILTER (...): the same SQL on every SQLite version and PostgreSQL.
    return func.coalesce(func.sum(case((condition, 1), else_=0)), 0)


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None
