"""Per-run job counts kept with the state changes: every statement that moves jobs between states adds
its deltas to `run_counts` in the same transaction, so that a count is exact whenever it is read, and
reading it costs a few rows whatever the size of the run (docs/ARCHITECTURE.md, "Scale").

Deltas are applied last in their transaction and in one sorted order, after the job rows are locked:
a transaction holding a counter row never waits for a job row, so counters add no deadlock. On
PostgreSQL each transaction adds to one of `SHARDS` rows per count, picked at random, so that workers
claiming and writing at once rarely queue on the same counter row; readers sum the shards.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import func, or_, select
from sqlalchemy.orm import Session

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.dialect import counter_shard, insert_for
from vlmbatch.schema.ledger.tables import Run, RunCount

# Counter rows per (run, state, error type) on PostgreSQL. SQLite serialises writers anyway: one row.
SHARDS = 16


@dataclass(frozen=True, order=True)
class Bucket:
    """What a job is counted under: its run, its state and (failed jobs only) its error type."""

    run_id: int
    state: str
    error_type: str = ""

    @classmethod
    def of(cls, run_id: int, state: str, error_type: str | None = None) -> Bucket:
        return cls(run_id, state, (error_type or "") if state == JobState.FAILED.value else "")


class CountDeltas:
    """Changes to the run counts, collected while a transaction moves jobs, then applied once."""

    def __init__(self) -> None:
        self._deltas: Counter[Bucket] = Counter()

    def add(self, bucket: Bucket, n: int = 1) -> None:
        self._deltas[bucket] += n

    def move(self, source: Bucket, target: Bucket, n: int = 1) -> None:
        """`n` jobs left `source` for `target`."""
        self._deltas[source] -= n
        self._deltas[target] += n

    def apply(self, session: Session) -> None:
        """Add the deltas to `run_counts` in the session's transaction (call it after the job updates)."""
        changes = sorted((bucket, n) for bucket, n in self._deltas.items() if n)
        self._deltas.clear()
        if not changes:
            return
        shard = counter_shard(session, SHARDS)
        rows = [
            {"run_id": b.run_id, "state": b.state, "error_type": b.error_type, "shard": shard, "jobs": n}
            for b, n in changes
        ]
        insert = insert_for(session, RunCount)
        stmt = insert.on_conflict_do_update(
            index_elements=["run_id", "state", "error_type", "shard"],
            set_={"jobs": RunCount.jobs + insert.excluded.jobs},
        )
        # One multi-row VALUES statement (not an executemany, which SQLAlchemy may split into batches):
        # PostgreSQL inserts its rows in order, so the lock order stays the sorted order.
        session.execute(stmt.values(rows))


@dataclass(frozen=True)
class RunCounts:
    """A run's jobs per state (every state present) and its failed jobs per error type."""

    by_state: dict[str, int]
    errors: dict[str, int]

    @property
    def total(self) -> int:
        return sum(self.by_state.values())


def read_counts(session: Session, run_id: int) -> RunCounts:
    """The run's counts, summed over the counter shards (a few dozen rows at most)."""
    by_state = {state.value: 0 for state in JobState}
    errors: dict[str, int] = {}
    stmt = (
        select(RunCount.state, RunCount.error_type, func.sum(RunCount.jobs))
        .where(RunCount.run_id == run_id)
        .group_by(RunCount.state, RunCount.error_type)
    )
    for state, error_type, n in session.execute(stmt):
        count = int(n or 0)
        by_state[state] = by_state.get(state, 0) + count
        if state == JobState.FAILED.value and error_type and count:
            errors[error_type] = count
    return RunCounts(by_state=by_state, errors=dict(sorted(errors.items(), key=lambda kv: (-kv[1], kv[0]))))


def queued_by_queue(session: Session, *, run_id: int | None, cutoff: datetime) -> dict[str, int]:
    """Queued jobs per queue (by the run counters, on ix_run_counts_state) of the runs whose last submit
    published before `cutoff`. With `run_id`: that run's queue, since tokens belong to a queue."""
    stmt = (
        select(Run.queue, func.sum(RunCount.jobs))
        .join(RunCount, RunCount.run_id == Run.id)
        .where(
            RunCount.state == JobState.QUEUED.value,
            Run.held.is_(False),  # a batch still validating: no token may claim its jobs yet
            or_(Run.published_at.is_(None), Run.published_at < cutoff),
        )
        .group_by(Run.queue)
    )
    if run_id is not None:
        stmt = stmt.where(Run.queue == select(Run.queue).where(Run.id == run_id).scalar_subquery())
    totals: dict[str, int] = defaultdict(int)
    for queue, queued in session.execute(stmt):
        if queued:
            totals[queue] += int(queued)
    return dict(totals)
