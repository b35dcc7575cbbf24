"""What a run produced and what it cost: accept rate, trace lengths, truncation, errors, tokens and GPU time.

Every number is computed in SQL (counts, sums, and a window function for the percentiles:
schema.ledger.run_tallies); nothing loads a table into memory. *Standing* samples are the results of each
finished job's current attempt (what `vlmbatch export` writes); earlier attempts of resubmitted or retried
jobs count only towards cost.

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
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.finish import CONTEXT, LENGTH, REPETITION
from vlmbatch.schema.contracts.states import TERMINAL_STATES, JobState
from vlmbatch.schema.ledger.checkpoints import token_reuse
from vlmbatch.schema.ledger.run_tallies import (
    AttemptSums,
    attempt_errors,
    attempt_sums,
    sample_tallies,
    trace_tally,
    trace_tokens_at_ranks,
)
from vlmbatch.schema.ledger.runs import RunView
from vlmbatch.schema.ledger.status import run_status

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


def run_stats(session: Session, run: RunView) -> RunStats:
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
        errors=ErrorCounts(jobs=status.errors, attempts=attempt_errors(session, run_id=run.id)),
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
    return Accounting(
        all_attempts=_totals(attempt_sums(session, run_id=run_id)),
        standing=_totals(attempt_sums(session, run_id=run_id, standing_in=_FINISHED)),
    )


def trace_tokens(session: Session, run_id: int) -> TraceTokens:
    """Nearest-rank percentiles, max and mean of the standing samples' reasoning tokens (the percentiles
    from one sorted pass in the database: schema.ledger.run_tallies.trace_tokens_at_ranks)."""
    tally = trace_tally(session, run_id=run_id, finished=_FINISHED)
    if not tally.samples:
        return TraceTokens(samples=0, p50=None, p90=None, p99=None, max=None, mean=None)
    ranks = {p: nearest_rank(p, tally.samples) for p in PERCENTILES}
    at_rank = trace_tokens_at_ranks(session, run_id=run_id, finished=_FINISHED, ranks=ranks.values())
    return TraceTokens(
        samples=tally.samples,
        p50=at_rank[ranks[50]],
        p90=at_rank[ranks[90]],
        p99=at_rank[ranks[99]],
        max=tally.largest,
        mean=tally.mean,
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
    tally = sample_tallies(session, run_id=run_id, finished=_FINISHED, truncating=_TRUNCATING)
    stats = SampleStats(
        standing=tally.standing,
        graded=tally.graded,
        correct=tally.correct,
        accept_rate=_rate(tally.correct, tally.graded),
        jobs_graded=tally.jobs_graded,
        jobs_with_correct=tally.jobs_with_correct,
        job_accept_rate=_rate(tally.jobs_with_correct, tally.jobs_graded),
    )
    return stats, tally.by_finish, ThinkingCapped(samples=tally.capped_samples, jobs=tally.capped_jobs)


def _totals(sums: AttemptSums) -> Totals:
    return Totals(
        attempts=sums.attempts,
        prompt_tokens=sums.prompt_tokens,
        completion_tokens=sums.completion_tokens,
        reasoning_tokens=sums.reasoning_tokens,
        answer_tokens=sums.answer_tokens,
        gpu_seconds=sums.gpu_seconds,
    )


def _rate(part: int, whole: int) -> float | None:
    return part / whole if whole else None
