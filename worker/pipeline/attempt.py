"""One attempt of one job: its images loaded, one engine request, and the report the writer commits;
and the run context every attempt of a run shares (`RunContexts`: loaded once per run, not per job).

The decisions are plain functions of their inputs (`generation_report`, `failure_report`), testable without
an event loop or an engine; `run_attempt` is the coroutine that strings the steps together. What the job
asks beyond its run (`JobPlan`: its params and answer constraint) is worked out once, at its start.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path

from PIL.Image import Image
from sqlalchemy.orm import Session

from vlmbatch.media.local_roots import LocalRoots, source_root
from vlmbatch.schema.contracts.errors import JobCancelled, JobError
from vlmbatch.schema.contracts.models import RunSettings, SamplingSettings
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.schema.ledger.outcomes import AttemptReport, Timings, retry_delay
from vlmbatch.schema.ledger.runs import run_facts
from vlmbatch.worker.engines.base import Engine, Generation, TraceProgress
from vlmbatch.worker.pipeline.answers import JobPlan, needs_more_samples, review
from vlmbatch.worker.pipeline.capacity import TimeShare
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inputs import LoadedImage, build_request
from vlmbatch.worker.pipeline.output import attempt_outcome, to_sample


@dataclass(frozen=True)
class RunContext:
    """What a worker needs to know of a job's run (loaded once per run, not per job)."""

    settings: RunSettings
    queue: str
    # Where the run's local images may be read from (its source folder and VLMBATCH_LOCAL_ROOTS).
    local_roots: LocalRoots = field(default_factory=LocalRoots)


@dataclass
class AttemptClock:
    """Where an attempt's time went; a failed attempt reports what it measured before failing."""

    queue_wait_s: float
    fetch_s: float | None = None
    decode_s: float | None = None
    generation_s: float | None = None
    first_token_s: float | None = None
    gpu_seconds: float | None = None

    def timings(self) -> Timings:
        return Timings(
            self.queue_wait_s, self.fetch_s, self.decode_s, self.generation_s, self.first_token_s, self.gpu_seconds
        )


def generation_report(
    job: ClaimedJob,
    run: RunSettings,
    generation: Generation,
    timings: Timings,
    plan: JobPlan | None = None,
    sampling: SamplingSettings | None = None,
) -> AttemptReport:
    """The outcome of an attempt whose generation finished: samples split, graded and checked, the outcome
    (succeeded or truncated), and whether an accept-until-M job needs another sampling round. `sampling`
    is what the engine was asked for (the job's limits name how each sample ended)."""
    opened = generation.trace_opened_by_prompt
    samples = review(
        [to_sample(i, c, opened_by_prompt=opened, sampling=sampling) for i, c in enumerate(generation.completions)],
        run,
        job.reference,
        (plan or JobPlan.of(job, run)).constraint,
        options=job.options,
    )
    accepted = sum(1 for s in samples if s.correct)
    outcome = attempt_outcome(samples)
    completions = generation.completions
    resumed = job.checkpoint if generation.continued_tokens and job.checkpoint is not None else None
    resample = outcome is AttemptOutcome.SUCCEEDED and needs_more_samples(
        run, accepted_before=job.accepted_samples, accepted_now=accepted, attempts_used=job.attempts_used
    )
    return AttemptReport(
        job_id=job.job_id,
        attempt_id=job.attempt_id,
        outcome=outcome,
        samples=samples,
        accepted=accepted,
        resample=resample,
        prompt_tokens=generation.prompt_tokens,
        timings=timings,
        output_token_ids=completions[0].token_ids if len(completions) == 1 else None,
        resumed_from=resumed.attempt_id if resumed is not None else None,
        reused_tokens=generation.continued_tokens if resumed is not None else None,
    )


def failure_report(job: ClaimedJob, error: JobError, run: RunSettings | None, timings: Timings) -> AttemptReport:
    """The outcome of an attempt that failed with `error`: cancelled, or failed with its stable type; a
    transient error within the run's retry budget comes back after a backoff (`retry_after_s`)."""
    outcome = AttemptOutcome.CANCELLED if isinstance(error, JobCancelled) else AttemptOutcome.FAILED
    retry_after = None
    limit = run.max_transient_retries if run is not None else 0
    if error.retry_limit is not None:
        limit = min(limit, error.retry_limit)
    if error.transient and run is not None and job.transient_failures < limit:
        retry_after = retry_delay(job.transient_failures + 1)
    return AttemptReport(
        job_id=job.job_id,
        attempt_id=job.attempt_id,
        outcome=outcome,
        error_type=error.error_type,
        error_message=error.message,
        timings=timings,
        retry_after_s=retry_after,
    )


async def run_attempt(
    job: ClaimedJob,
    *,
    request_id: str,
    run: RunContext,
    clock: AttemptClock,
    load: Callable[[str], Awaitable[LoadedImage]],
    engine: Engine,
    time_share: TimeShare,
    tensor_parallel_size: int,
    worker_max_tiles: int,
    progress: TraceProgress | None = None,
) -> AttemptReport:
    """Load the job's images (concurrently), generate, and report. Raises what loading and the engine
    raise (job errors, EngineDead); `clock` holds the timings measured so far either way."""
    loaded = await asyncio.gather(*(load(uri) for uri in job.images))
    images: list[Image] = [item.image for item in loaded]
    clock.fetch_s = sum(item.fetch_s for item in loaded)
    clock.decode_s = sum(item.decode_s for item in loaded)
    plan = JobPlan.of(job, run.settings)
    request = build_request(
        request_id=request_id,
        job=job,
        settings=run.settings,
        images=images,
        worker_max_tiles=worker_max_tiles,
        plan=plan,
        progress=progress,
    )
    started = time.perf_counter()
    share = time_share.enter()
    try:
        generation = await engine.generate(request)
    finally:
        clock.gpu_seconds = time_share.leave(share) * tensor_parallel_size
    clock.generation_s = time.perf_counter() - started
    clock.first_token_s = generation.first_token_s
    hashes = tuple(item.sha256 for item in loaded) if all(item.sha256 for item in loaded) else None
    if run.settings.grader is None:
        report = generation_report(job, run.settings, generation, clock.timings(), plan, request.sampling)
    else:
        # Grading can wait on a symbolic comparison (math-verify in a child process): not on the event loop.
        report = await asyncio.to_thread(
            generation_report, job, run.settings, generation, clock.timings(), plan, request.sampling
        )
    return replace(report, image_hashes=hashes)


def load_run_context(session: Session, *, run_id: int, extra_roots: Sequence[Path]) -> RunContext:
    """A run's settings, queue and the local folders its jobs may read (once per run, not per job)."""
    run = run_facts(session, run_id=run_id)
    return RunContext(
        settings=run.settings, queue=run.queue, local_roots=LocalRoots.of([source_root(run.source), *extra_roots])
    )


class RunContexts:
    """The contexts of the runs this worker has jobs of, each loaded from the ledger once: jobs of a new run
    arrive hundreds at a time, and all of them wait on the one load."""

    def __init__(self, *, db: DatabasePool, extra_roots: Sequence[Path]) -> None:
        self._db = db
        self._extra_roots = list(extra_roots)
        self._known: dict[int, RunContext] = {}
        self._loading: dict[int, asyncio.Future[RunContext]] = {}

    def known(self, run_id: int) -> RunContext | None:
        """The run's context if it is loaded already (no database call)."""
        return self._known.get(run_id)

    async def get(self, run_id: int) -> RunContext:
        run = self._known.get(run_id)
        if run is not None:
            return run
        loading = self._loading.get(run_id)
        if loading is None:
            loading = asyncio.ensure_future(
                self._db.transaction(partial(load_run_context, run_id=run_id, extra_roots=self._extra_roots))
            )
            self._loading[run_id] = loading
        try:
            run = await asyncio.shield(loading)
        finally:
            self._loading.pop(run_id, None)
        self._known[run_id] = run
        return run
