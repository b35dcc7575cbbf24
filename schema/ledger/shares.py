"""Which runs a claim takes from: the highest priority first, and a priority's jobs shared by weight.

Stride scheduling on the run counters (schema.ledger.counters). A run's service is its jobs out of the
queue (claimed: running or finished; a job requeued for a retry counts again once claimed again), read from
its counters; its pass is `(served + share_offset) / weight`. A claim of N jobs hands them out a quantum at
a time to the run of the lowest pass, whose pass then grows by quantum / weight. Runs of equal weight thus
take turns claim by claim, a run of weight 2 gets twice the jobs, and a run that joins (new, resumed,
resubmitted, moved to another priority) gets the lowest pass of those already active as its start
(`share_offset`): level with them, neither owed what they were served before it came nor left waiting
behind it. A new small run is therefore served from the very next claim, and finishes long before a large
one of the same priority.

What a claim reads is a few counter rows per active run (ix_run_counts_state and the counters' primary
key), never the jobs table, and it writes no more than it did: the state counts it moves anyway.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

from sqlalchemy import ColumnElement, Table, bindparam, func, or_, select, update
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.dialect import lock_for_claim
from vlmbatch.schema.ledger.tables import Run, RunCount

# A claim takes from this many runs at most (one index range each): with hundreds of active runs a claim
# costs a few ranges, not one per run, and the turns go round over successive claims instead.
RUNS_PER_CLAIM = 4


@dataclass
class ActiveRun:
    """A run of the queue with queued jobs, as its counters say, and its place in the share."""

    run_id: int
    priority: int
    weight: int
    queued: int
    served: int
    # None: the run just (re)joined; `join` sets it level with the others.
    offset: float | None

    @property
    def pass_(self) -> float:
        return (self.served + (self.offset or 0.0)) / max(1, self.weight)


def serves(model: str, fingerprint: str | None) -> ColumnElement[bool]:
    """Runs a worker of `model` serves: those naming it, and with a fingerprint, those whose model is the
    same folder under another path (schema/contracts/model_identity.py)."""
    if fingerprint is None:
        return Run.model == model
    return or_(Run.model == model, Run.model_fingerprint == fingerprint)


def active_runs(
    session: Session, *, queue: str, model: str | None = None, fingerprint: str | None = None
) -> list[ActiveRun]:
    """The runs of `queue` (serving `model`, when given) whose jobs may be claimed (not held, not paused)
    and that have queued jobs, with their jobs out of the queue (`served`): a few counter rows per run.
    Those that just joined have no offset yet (`join` gives them one)."""
    stmt = (
        select(Run.id, Run.priority, Run.weight, Run.share_offset, func.sum(RunCount.jobs))
        .join(Run, Run.id == RunCount.run_id)
        .where(
            RunCount.state == JobState.QUEUED.value,
            Run.queue == queue,
            Run.held.is_(False),
            Run.paused_at.is_(None),
        )
        .group_by(Run.id, Run.priority, Run.weight, Run.share_offset)
        .having(func.sum(RunCount.jobs) > 0)
    )
    if model is not None:
        stmt = stmt.where(serves(model, fingerprint))
    runs = [
        ActiveRun(run_id=r, priority=p, weight=w, queued=int(q), served=0, offset=o)
        for r, p, w, o, q in session.execute(stmt)
    ]
    if runs:
        served = (
            select(RunCount.run_id, func.sum(RunCount.jobs))
            .where(RunCount.run_id.in_([r.run_id for r in runs]), RunCount.state != JobState.QUEUED.value)
            .group_by(RunCount.run_id)
        )
        by_run = {run_id: int(n or 0) for run_id, n in session.execute(served)}
        for run in runs:
            run.served = by_run.get(run.run_id, 0)
    return runs


def join(runs: Sequence[ActiveRun]) -> list[ActiveRun]:
    """Give the runs that just joined (no offset) the lowest pass among the others of their priority;
    return them (the caller may store their offsets, schema.ledger.shares.store_offsets)."""
    joined = [r for r in runs if r.offset is None]
    for run in joined:
        others = [o.pass_ for o in runs if o.offset is not None and o.priority == run.priority]
        start = min(others) if others else 0.0
        run.offset = start * max(1, run.weight) - run.served
    return joined


def store_offsets(session: Session, runs: Sequence[ActiveRun]) -> None:
    """Keep the offsets of runs that just joined: the first claimer to see them wins, later claimers read
    it. A runs row another transaction holds (a submit, a pause) is skipped, never waited for: the next
    claim stores it, and a claim never waits on a runs row while holding job and counter rows."""
    if not runs:
        return
    free = select(Run.id).where(Run.id.in_([r.run_id for r in runs]), Run.share_offset.is_(None))
    free = lock_for_claim(free, session, of=Run)  # skipping rows another transaction holds
    ids = set(session.scalars(free.order_by(Run.id)))
    if not ids:
        return
    table = cast(Table, Run.__table__)
    session.execute(
        update(table).where(table.c.id == bindparam("b_id")).values(share_offset=bindparam("b_offset")),
        [{"b_id": r.run_id, "b_offset": r.offset} for r in sorted(runs, key=lambda r: r.run_id) if r.run_id in ids],
    )


def rejoin(session: Session, *, run_id: int) -> None:
    """The run's share starts again level with the active runs at its next claim (it was resumed,
    resubmitted or moved to another priority): it is owed nothing for the time it was away."""
    session.execute(
        update(Run).where(Run.id == run_id).values(share_offset=None).execution_options(synchronize_session=False)
    )


def allocate(runs: Sequence[ActiveRun], limit: int) -> list[tuple[ActiveRun, int]]:
    """How many of `limit` jobs to take from which runs, in the order to take them: the highest priority
    first, each run's turn by its pass, a quantum at a time (at most RUNS_PER_CLAIM runs per priority
    served, unless they run short). Passes are advanced as if every job given were taken."""
    plan: dict[int, int] = {}
    order: list[ActiveRun] = []
    left = limit
    for priority in sorted({r.priority for r in runs}, reverse=True):
        tier = [r for r in runs if r.priority == priority]
        quantum = max(1, math.ceil(left / min(len(tier), RUNS_PER_CLAIM)))
        heap = [(r.pass_, r.served, r.run_id, r) for r in tier]
        heapq.heapify(heap)
        while left > 0 and heap:
            _, _, _, run = heapq.heappop(heap)
            room = run.queued - plan.get(run.run_id, 0)
            give = min(quantum, left, room)
            if give <= 0:
                continue
            if run.run_id not in plan:
                order.append(run)
            plan[run.run_id] = plan.get(run.run_id, 0) + give
            left -= give
            run.served += give
            if room > give:
                heapq.heappush(heap, (run.pass_, run.served, run.run_id, run))
        if left <= 0:
            break
    for run in order:  # the passes advanced above are a plan, not yet the counters
        run.served -= plan[run.run_id]
    return [(run, plan[run.run_id]) for run in order]
