"""When an attempt continues its job's checkpoint, and when the worker writes checkpoints (issue 26):
the restart defaults of the outcome contract (worker/pipeline/resume.py) and the checkpointer's interval
and token thresholds (worker/pipeline/checkpointing.py), with the ledger replaced by a recorder."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import pytest

from vlmbatch.schema.contracts.models import RepetitionDetection, SamplingSettings
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.checkpoints import Checkpoint
from vlmbatch.schema.ledger.claims import ClaimedJob
from vlmbatch.worker.engines.base import AnswerConstraint, Continuation, GenerationRequest, TraceProgress
from vlmbatch.worker.engines.vllm_requests import streams
from vlmbatch.worker.pipeline.checkpointing import Checkpointer
from vlmbatch.worker.pipeline.inflight import Attempts
from vlmbatch.worker.pipeline.resume import continuation

GREEDY = SamplingSettings(temperature=0.0, max_tokens=100)
LOOPS = RepetitionDetection(max_pattern_size=8, min_count=3)
RUNNING = Checkpoint(job_id=1, attempt_id=10, token_ids=(5, 6, 7), text="abc")


def test_a_checkpoint_is_continued_token_for_token_with_the_jobs_sampling() -> None:
    assert continuation(RUNNING, GREEDY, seed=None, constraint=None) == Continuation((5, 6, 7), "abc")
    truncated = Checkpoint(1, 10, (5, 6, 7), "abc", finish_reason="length")
    assert continuation(truncated, GREEDY, seed=None, constraint=None) == Continuation((5, 6, 7), "abc")


@pytest.mark.parametrize(
    ("sampling", "seed", "constraint"),
    [
        (GREEDY.model_copy(update={"samples": 2}), None, None),
        (GREEDY, 1234, None),
        (GREEDY, None, AnswerConstraint(choices=("A", "B"))),
        (GREEDY, None, AnswerConstraint(json_schema={"type": "object"})),
        (GREEDY.model_copy(update={"thinking_token_budget": 50}), None, None),
        (GREEDY.model_copy(update={"repetition_detection": LOOPS}), None, None),
        (GREEDY.model_copy(update={"max_tokens": 3}), None, None),
    ],
    ids=["n>1", "seed", "choices", "json-schema", "thinking-budget", "repetition-detection", "no-tokens-left"],
)
def test_where_a_continuation_is_not_the_same_draw_the_attempt_restarts(
    sampling: SamplingSettings, seed: int | None, constraint: AnswerConstraint | None
) -> None:
    assert continuation(RUNNING, sampling, seed=seed, constraint=constraint) is None


@pytest.mark.parametrize("finish", ["context", "repetition", "stop"])
def test_a_trace_that_ended_otherwise_than_at_max_tokens_is_not_continued(finish: str) -> None:
    ended = Checkpoint(1, 10, (5, 6, 7), "abc", finish_reason=finish)
    assert continuation(ended, GREEDY, seed=None, constraint=None) is None


class _Ledger:
    """Records each batch of checkpoints; `refuse` lists the jobs whose attempt lost its fence."""

    def __init__(self) -> None:
        self.batches: list[list[Checkpoint]] = []
        self.refuse: set[int] = set()

    async def transaction(self, fn: Callable[..., Any]) -> list[int]:
        checkpoints: Sequence[Checkpoint] = fn.keywords["checkpoints"]  # type: ignore[attr-defined]
        self.batches.append(list(checkpoints))
        return [c.job_id for c in checkpoints if c.job_id not in self.refuse]


class _Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def _job(job_id: int) -> ClaimedJob:
    now = datetime(2026, 12, 7)
    return ClaimedJob(
        job_id=job_id,
        attempt_id=100 + job_id,
        attempt_number=1,
        run_id=1,
        images=("file:///a.jpg",),
        question="q",
        reference=None,
        overrides=None,
        queued_at=now,
        claimed_at=now,
    )


def _checkpointer(
    ledger: _Ledger, clock: _Clock, *, every_s: float = 30.0, every_tokens: int | None = None
) -> tuple[Checkpointer, Attempts]:
    settings = Settings(model="m", checkpoint_seconds=every_s, checkpoint_tokens=every_tokens)
    attempts = Attempts()
    return Checkpointer(settings=settings, attempts=attempts, db=ledger, clock=clock), attempts  # type: ignore[arg-type]


def test_a_trace_is_checkpointed_once_per_interval_all_attempts_in_one_batch() -> None:
    ledger, clock = _Ledger(), _Clock()
    checkpointer, attempts = _checkpointer(ledger, clock)
    first = attempts.add(_job(1), progress=TraceProgress(), now=clock.now)
    second = attempts.add(_job(2), progress=TraceProgress(), now=clock.now)
    idle = attempts.add(_job(3), progress=TraceProgress(), now=clock.now)
    first.progress.add([1, 2, 3], "abc")  # type: ignore[union-attr]
    second.progress.add([4], "d")  # type: ignore[union-attr]
    clock.now = 29.0
    assert asyncio.run(checkpointer.checkpoint(everything=False)) == 0
    clock.now = 30.0
    assert asyncio.run(checkpointer.checkpoint(everything=False)) == 2
    assert ledger.batches == [[Checkpoint(1, 101, (1, 2, 3), "abc"), Checkpoint(2, 102, (4,), "d")]]
    clock.now = 61.0  # nothing grew: nothing is written again
    assert asyncio.run(checkpointer.checkpoint(everything=False)) == 0
    assert (len(ledger.batches), idle.checkpointed_tokens) == (1, 0)


def test_a_trace_that_grew_by_checkpoint_tokens_is_written_before_its_interval() -> None:
    ledger, clock = _Ledger(), _Clock()
    checkpointer, attempts = _checkpointer(ledger, clock, every_tokens=16)
    entry = attempts.add(_job(1), progress=TraceProgress(), now=clock.now)
    entry.progress.add(list(range(15)), "")  # type: ignore[union-attr]
    clock.now = 1.0
    assert asyncio.run(checkpointer.checkpoint(everything=False)) == 0
    entry.progress.add([15], "")  # type: ignore[union-attr]
    assert asyncio.run(checkpointer.checkpoint(everything=False)) == 1
    assert entry.checkpointed_tokens == 16


def test_a_drain_writes_every_grown_trace_and_a_refused_one_is_not_counted_as_kept() -> None:
    ledger, clock = _Ledger(), _Clock()
    checkpointer, attempts = _checkpointer(ledger, clock)
    kept = attempts.add(_job(1), progress=TraceProgress(), now=clock.now)
    lost = attempts.add(_job(2), progress=TraceProgress(), now=clock.now)
    done = attempts.add(_job(3), progress=TraceProgress(), now=clock.now)
    for entry in (kept, lost, done):
        entry.progress.add([7, 8], "xy")  # type: ignore[union-attr]
    done.reported = True  # its outcome is with the writer: its result, not a checkpoint, is what counts
    ledger.refuse = {2}
    assert asyncio.run(checkpointer.checkpoint(everything=True)) == 1
    assert [c.job_id for c in ledger.batches[0]] == [1, 2]
    assert (kept.checkpointed_tokens, lost.checkpointed_tokens) == (2, 0)


def test_a_continued_checkpoint_is_not_written_again_until_the_trace_grows() -> None:
    ledger, clock = _Ledger(), _Clock()
    checkpointer, attempts = _checkpointer(ledger, clock)
    resumed = _job(1)
    resumed = ClaimedJob(**{**resumed.__dict__, "checkpoint": RUNNING})
    entry = attempts.add(resumed, progress=TraceProgress(), now=clock.now)
    entry.progress.add(RUNNING.token_ids, RUNNING.text)  # type: ignore[union-attr]
    assert asyncio.run(checkpointer.checkpoint(everything=True)) == 0
    entry.progress.add([9], "z")  # type: ignore[union-attr]
    assert asyncio.run(checkpointer.checkpoint(everything=True)) == 1
    assert ledger.batches == [[Checkpoint(1, 101, (5, 6, 7, 9), "abcz")]]


def test_the_engine_streams_into_the_workers_progress_and_puts_a_continuation_first() -> None:
    progress = TraceProgress()
    request = GenerationRequest("r", images=[], question="q", sampling=GREEDY, max_tiles=1, progress=progress)
    assert streams(request, 0) == {0: progress}  # the worker's own (still empty) progress, not a copy
    continued = GenerationRequest(
        "r", images=[], question="q", sampling=GREEDY, max_tiles=1, continuation=Continuation((5, 6), "ab")
    )
    (mine,) = streams(continued, 2).values()  # type: ignore[union-attr]
    assert mine.snapshot() == ((5, 6), "ab")
    plain = GenerationRequest("r", images=[], question="q", sampling=GREEDY, max_tiles=1)
    assert streams(plain, 0) is None  # final outputs only
