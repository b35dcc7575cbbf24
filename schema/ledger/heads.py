"""Where a claim finds a run's next jobs, without walking the jobs the run has finished.

A claimed job leaves its entry at the head of the run's queued range in ix_jobs_run_state_id, dead but in
place until a VACUUM (PostgreSQL keeps the old row version; autovacuum may be off, and when on it waits
for a fifth of the table). A claim that starts at the head walks all of them: at 90% of a run finished it
read 459 buffers at 2*10^4 jobs and 2,199 at 10^5. So each claimer keeps a cursor per run, the highest
never-claimed job it took, and a claim reads three kinds of range:

- requeued jobs (claimed before: a retry, a resample, a lease taken back, a resubmit), wherever their ids
  are, through the small partial index ix_jobs_run_requeued; first, as they are the older;
- never-claimed jobs after the cursor, in id order: the dead entries it passes are those the other
  claimers left since this one's last claim, a few claims' worth whatever the run's size;
- a sweep from the head up to the cursor, when the range after the cursor came up short, at most every
  `sweep_seconds` per run: what a cursor may pass without taking it (a job another claimer held, whose
  claim then rolled back; a never-claimed job cancelled and later resubmitted) is found there. A
  claimer's own rolled-back claim puts its cursors back (QueueClaimer).

Why a cursor and not the maintenance pass vacuuming `jobs` when `n_dead_tup` says so: a VACUUM reads the
table's changed pages and every index of `jobs` whole, a cost that grows with the ledger (1.7 s at 10^6
jobs 90% finished, 620 MB, measured; ten times that at 10^7), and between two of them the walk grows with
what finished since; the cursor keeps each claim's walk to what the fleet claimed since its last claim.
Nothing here changes what a claim locks or writes: the fence, the attempt numbers and the counters stay
claims.py's.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import ARRAY, BigInteger, Select, bindparam, exists, func, literal, or_, select, text, true, tuple_
from sqlalchemy.orm import Session, aliased

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.dialect import claims_runs_at_once, lock_for_claim
from vlmbatch.schema.ledger.keyset import Keyset
from vlmbatch.schema.ledger.tables import REQUEUED, Job, Run

# A claimer sweeps a run's range from the head at most this often (when the range after its cursor came
# up short): a job a cursor passed waits this long at most once the run's other jobs are taken.
SWEEP_SECONDS = 30.0


def past_backoff(now: datetime) -> Any:
    return or_(Job.not_before.is_(None), Job.not_before <= now)


def claimable_run(run_id: Any) -> Any:
    # The run may still be claimed from: a pause takes effect at the next claim, whatever a claimer cached.
    return exists().where(Run.id == run_id, Run.held.is_(False), Run.paused_at.is_(None)).correlate_except(Run)


@dataclass
class Cursors:
    """A claimer's place in each run's queued jobs: the highest never-claimed job id it took, and when it
    last swept the run from the head."""

    after: dict[int, int] = field(default_factory=dict)
    swept_at: dict[int, datetime] = field(default_factory=dict)

    def copy(self) -> Cursors:
        return Cursors(dict(self.after), dict(self.swept_at))

    def restore(self, saved: Cursors) -> None:
        """Go back to `saved` (a claim rolled back): never forward, so restores applied out of order
        still end at the oldest."""
        self.after = {r: min(a, saved.after[r]) for r, a in self.after.items() if r in saved.after}
        self.swept_at = {r: min(t, saved.swept_at[r]) for r, t in self.swept_at.items() if r in saved.swept_at}


@dataclass
class ClaimWalk:
    """The ranges one claim reads, run by run; each range goes on after the jobs this claim took from it
    already (they stay `queued`, locked by this claim, until its UPDATE)."""

    cursors: Cursors
    now: datetime
    sweep_seconds: float
    fresh_up_to: dict[int, int] = field(default_factory=dict)
    requeued_up_to: dict[int, int] = field(default_factory=dict)
    swept_up_to: dict[int, int] = field(default_factory=dict)

    def take(self, session: Session, wanted: Mapping[int, int]) -> dict[int, list[Job]]:
        """Up to `wanted[run]` claimable jobs of each run, locked: requeued ones first, then never-claimed
        ones after the cursor, then a sweep of a run that came up short."""
        taken: dict[int, list[Job]] = {run_id: [] for run_id in wanted}
        for job in _heads(session, wanted, self.requeued_up_to, self.now, requeued=True):
            taken[job.run_id].append(job)
        _advance(self.requeued_up_to, taken)
        rest = {r: n - len(taken[r]) for r, n in wanted.items() if n > len(taken[r])}
        after = {r: max(self.cursors.after.get(r, 0), self.fresh_up_to.get(r, 0)) for r in rest}
        fresh: dict[int, list[Job]] = {run_id: [] for run_id in rest}
        for job in _heads(session, rest, after, self.now, requeued=False):
            fresh[job.run_id].append(job)
        _advance(self.fresh_up_to, fresh)
        for run_id, n in rest.items():
            taken[run_id] += fresh[run_id]
            if len(fresh[run_id]) < n and self._sweep_due(run_id):
                taken[run_id] += self._sweep(session, run_id, n - len(fresh[run_id]))
            elif run_id not in self.cursors.after:  # a walk from the head is a sweep too
                self.cursors.swept_at[run_id] = self.now
        return taken

    def advance_cursors(self) -> None:
        """Move the cursors past the never-claimed jobs this claim took."""
        for run_id, top in self.fresh_up_to.items():
            self.cursors.after[run_id] = max(self.cursors.after.get(run_id, 0), top)

    def _sweep_due(self, run_id: int) -> bool:
        if self.cursors.after.get(run_id, 0) <= 0:
            return False  # no cursor yet: this claim walked from the head already
        last = self.cursors.swept_at.get(run_id)
        return last is None or (self.now - last).total_seconds() >= self.sweep_seconds

    def _sweep(self, session: Session, run_id: int, wanted: int) -> list[Job]:
        """Never-claimed jobs from the head up to the cursor (the range after it was walked already)."""
        self.cursors.swept_at[run_id] = self.now
        after = self.swept_up_to.get(run_id, 0)
        stmt = _fresh(session, run_id, self.now, after=after, up_to=self.cursors.after[run_id])
        jobs = list(session.scalars(lock_for_claim(stmt.limit(wanted), session, of=Job)))
        if jobs:
            self.swept_up_to[run_id] = jobs[-1].id
        return jobs


def _advance(up_to: dict[int, int], taken: Mapping[int, list[Job]]) -> None:
    for run_id, jobs in taken.items():
        if jobs:
            up_to[run_id] = max(up_to.get(run_id, 0), max(job.id for job in jobs))


def _heads(
    session: Session, wanted: Mapping[int, int], after: Mapping[int, int], now: datetime, *, requeued: bool
) -> list[Job]:
    wanted = {r: n for r, n in wanted.items() if n > 0}
    if len(wanted) > 1 and claims_runs_at_once(session):
        return _heads_at_once(session, wanted, after, now, requeued=requeued)
    jobs: list[Job] = []
    for run_id, n in wanted.items():
        if requeued:
            stmt = _requeued(session, run_id, now, after=after.get(run_id, 0))
        else:
            stmt = _fresh(session, run_id, now, after=after.get(run_id, 0))
        jobs += session.scalars(lock_for_claim(stmt.limit(n), session, of=Job))
    return jobs


def _fresh(session: Session, run_id: int, now: datetime, *, after: int, up_to: int | None = None) -> Select[Any]:
    """The run's never-claimed queued jobs after `after` (up to `up_to`): one range of ix_jobs_run_state_id."""
    queued = Keyset([(Job.run_id, run_id), (Job.state, JobState.QUEUED.value)])
    stmt = select(Job).where(Job.attempt_count == 0, past_backoff(now), claimable_run(run_id))
    return queued.page(stmt, session=session, after=after, up_to=up_to)


def _requeued(session: Session, run_id: int, now: datetime, *, after: int) -> Select[Any]:
    """The run's requeued jobs after `after`: one range of the partial index ix_jobs_run_requeued (its
    predicate written out as it is, so that the planner can prove it whatever the parameters)."""
    stmt = select(Job).where(text(REQUEUED), past_backoff(now), claimable_run(run_id))
    return Keyset([(Job.run_id, run_id)]).page(stmt, session=session, after=after)


def _heads_at_once(
    session: Session, wanted: Mapping[int, int], after: Mapping[int, int], now: datetime, *, requeued: bool
) -> list[Job]:
    """PostgreSQL: the next claimable jobs of several runs in one statement (a claim shared among runs
    costs one round trip, not one per run): a LATERAL index range per run, each bounded on both sides as
    schema.ledger.keyset explains, locked with SKIP LOCKED."""
    # The plan as three arrays (unnest), not a VALUES list: one statement text for any plan, compiled once.
    runs = sorted(wanted)
    arrays = {
        "plan_runs": runs,
        "plan_wanted": [wanted[r] for r in runs],
        "plan_after": [after.get(r, 0) for r in runs],
    }
    plan = (
        func.unnest(*(bindparam(name, type_=ARRAY(BigInteger)) for name in arrays))
        .table_valued("run_id", "wanted", "after")
        .render_derived(name="plan")
    )
    bounds: list[Any]
    order: list[Any]
    if requeued:  # ix_jobs_run_requeued
        bounds = [
            tuple_(Job.run_id, Job.id) >= tuple_(plan.c.run_id, plan.c.after + 1),
            Job.run_id <= plan.c.run_id,
            text(REQUEUED),
        ]
        order = [Job.run_id, Job.id]
    else:  # ix_jobs_run_state_id
        queued = literal(JobState.QUEUED.value)
        bounds = [
            tuple_(Job.run_id, Job.state, Job.id) >= tuple_(plan.c.run_id, queued, plan.c.after + 1),
            tuple_(Job.run_id, Job.state) <= tuple_(plan.c.run_id, queued),
            Job.attempt_count == 0,
        ]
        order = [Job.run_id, Job.state, Job.id]
    head = (
        select(Job)
        .where(*bounds, past_backoff(now), claimable_run(plan.c.run_id))
        .order_by(*order)
        .limit(plan.c.wanted)
        .with_for_update(skip_locked=True)
        .lateral("head")
    )
    return list(session.scalars(select(aliased(Job, head)).select_from(plan).join(head, true()), arrays))
