"""Taking work in: jobs claimed from the ledger into the worker's capacity.

Two feeds: `admit(jobs)` from Celery tasks (claim tokens, the distributed path), whose claims are
coalesced across messages, and `feed_run(run_id)`, which claims a run's queued jobs straight from the
database (the embedded path of `vlmbatch run`). Either way a slot is taken before a claim and given back
for every job that could not be claimed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import replace
from functools import partial
from typing import Any

from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.checkpoints import checkpoints_of
from vlmbatch.schema.ledger.claims import ClaimedJob, QueueClaimer, claim_next
from vlmbatch.schema.ledger.controls import run_paused
from vlmbatch.schema.ledger.runs import run_drained
from vlmbatch.worker.pipeline.capacity import Capacity
from vlmbatch.worker.pipeline.db_pool import DatabasePool
from vlmbatch.worker.pipeline.inflight import Attempts, StopState
from vlmbatch.worker.pipeline.running import AttemptRunner

# Jobs claimed in one transaction at most, when several messages wait to be claimed.
CLAIM_BATCH = 1024
# The embedded feed polls the database this often when it has nothing to claim.
FEED_POLL_S = 0.25


def claim_with_checkpoints(session: Session, claim: Callable[..., list[ClaimedJob]], **kwargs: Any) -> list[ClaimedJob]:
    """`claim(session, **kwargs)`, each claimed job with its checkpoint (one more SELECT, in the claim's
    transaction: the checkpoint is the one the fence now protects)."""
    jobs = claim(session, **kwargs)
    found = checkpoints_of(session, job_ids=[job.job_id for job in jobs])
    return [replace(job, checkpoint=found[job.job_id]) if job.job_id in found else job for job in jobs]


class WorkerStopping(Exception):
    """The pipeline no longer takes work (shutting down, or its engine died)."""


class Admission:
    def __init__(
        self,
        *,
        settings: Settings,
        worker_id: str,
        model: str,
        capacity: Capacity,
        fingerprint: str | None = None,
        db: DatabasePool,
        attempts: Attempts,
        state: StopState,
        runner: AttemptRunner,
    ) -> None:
        self._settings = settings
        self._worker_id = worker_id
        self._model = model
        self._capacity = capacity
        self._db = db
        self._attempts = attempts
        self._state = state
        self._runner = runner
        self._claims: asyncio.Queue[tuple[int, asyncio.Future[int]]] = asyncio.Queue()
        # Claims between their transaction's start and their jobs' launch: a hand-back waits for them, or
        # the jobs they commit would stay `running` until their leases lapse.
        self._claiming = 0
        # Only the claim loop uses it (one task): it remembers the queue's runs with queued jobs.
        self._claimer = QueueClaimer(queue=settings.queue, model=model, fingerprint=fingerprint)

    def _check_running(self) -> None:
        reason = self._state.reason
        if reason is not None:
            raise WorkerStopping(reason)

    async def admit(self, jobs: int) -> int:
        """Claim up to `jobs` queued jobs once there is room; return how many were claimed (fewer when
        the queue has fewer claimable jobs: a spare token claims nothing)."""
        self._check_running()
        claimed = 0
        # A token may ask for more jobs than the whole capacity: claim it in capacity-sized parts.
        step = self._capacity.total
        for start in range(0, jobs, step):
            part = min(step, jobs - start)
            await self._capacity.take(part)
            if self._state.reason is not None:
                await self._capacity.give(part)
                self._check_running()
            done: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._claims.put_nowait((part, done))
            mine = await done
            claimed += mine
            if mine < part:  # the queue ran dry: the rest of the token would claim nothing either
                break
        return claimed

    async def quiesce(self, *, timeout_s: float = 10.0) -> None:
        """Wait (up to `timeout_s`) until no claim is between its transaction and its jobs' launch."""
        deadline = asyncio.get_running_loop().time() + timeout_s
        while self._claiming and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.01)

    async def claim_loop(self) -> None:
        """Claims what the Celery tasks ask for, several tokens per transaction: one round of claiming
        costs the database about the same for 16 jobs as for 500."""
        while True:
            batch = [await self._claims.get()]
            while not self._claims.empty() and sum(part for part, _ in batch) < CLAIM_BATCH:
                batch.append(self._claims.get_nowait())
            self._claiming += 1
            try:
                await self._claim_batch(batch)
            finally:
                self._claiming -= 1

    async def _claim_batch(self, batch: list[tuple[int, asyncio.Future[int]]]) -> None:
        try:
            jobs = await self._db.transaction(
                partial(
                    claim_with_checkpoints,
                    claim=self._claimer.claim,
                    limit=sum(part for part, _ in batch),
                    worker=self._worker_id,
                    lease_seconds=self._settings.lease_seconds,
                )
            )
        except Exception as exc:
            for part, done in batch:
                await self._capacity.give(part)
                done.set_exception(exc)
            return
        # The claimed jobs go to the tokens in their order; a token left short gives its slots back.
        left = len(jobs)
        for part, done in batch:
            mine = min(part, left)
            left -= mine
            await self._capacity.give(part - mine)
            done.set_result(mine)
        for job in jobs:
            await self._runner.launch(job)

    async def _feed_claim(self, run_id: int, taken: int) -> list[ClaimedJob]:
        """Claim up to `taken` of the run's jobs into the slots taken, give back the rest, launch them."""
        jobs: list[ClaimedJob] = await self._db.transaction(
            partial(
                claim_with_checkpoints,
                claim=claim_next,
                limit=taken,
                worker=self._worker_id,
                lease_seconds=self._settings.lease_seconds,
                run_id=run_id,
            )
        )
        await self._capacity.give(taken - len(jobs))
        for job in jobs:
            await self._runner.launch(job)
        return jobs

    async def feed_run(self, run_id: int) -> None:
        """Claim the run's queued jobs as room frees up, until none is queued or running, or it is paused
        and none of its jobs runs here."""
        batch = max(1, min(self._settings.jobs_per_message, self._capacity.total))
        while True:
            self._check_running()
            taken = self._capacity.take_free(self._capacity.free)
            jobs: list[ClaimedJob] = []
            if taken:
                self._claiming += 1
                try:
                    jobs = await self._feed_claim(run_id, taken)
                finally:
                    self._claiming -= 1
            if jobs:
                await self._capacity.wait_for_free(batch, timeout=FEED_POLL_S)
                continue
            if not self._attempts.holds_jobs_of(run_id) and await self._db.transaction(
                partial(run_drained, run_id=run_id)
            ):
                return
            if not self._attempts.holds_jobs_of(run_id) and await self._db.transaction(
                partial(run_paused, run_id=run_id)
            ):
                return  # paused (by `vlmbatch pause` or its breaker): what ran has finished
            await self._capacity.wait_for_free(self._capacity.total, timeout=FEED_POLL_S)
