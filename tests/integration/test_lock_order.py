"""The ledger's one lock order on PostgreSQL: cancel, claims, the outcome writer, lease renewal and the
reconciler run at once in threads, and none of them deadlocks or leaves an attempt `running` on a job
that already ended."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.ledger_helpers import ledger, make_run
from tests.ledger_invariants import running_attempts_on_terminal_jobs
from vlmbatch.schema.contracts.states import TERMINAL_STATES, AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import ClaimedJob, claim_next
from vlmbatch.schema.ledger.liveness import renew_leases
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.resubmit import cancel_run
from vlmbatch.schema.ledger.tables import Job

ROUNDS = 4
JOBS = 300


def _success(claim: ClaimedJob) -> AttemptReport:
    sample = SampleRecord(
        sample_index=0,
        answer="42",
        reasoning="because",
        raw_text="because</think>42",
        finish_reason="stop",
        trace_closed=True,
        completion_tokens=3,
        reasoning_tokens=1,
        answer_tokens=2,
    )
    return AttemptReport(
        job_id=claim.job_id, attempt_id=claim.attempt_id, outcome=AttemptOutcome.SUCCEEDED, samples=[sample]
    )


class _Round:
    """One run, and the writers that race over it until the run is cancelled and drained."""

    def __init__(self, sessions: sessionmaker[Session], run_id: int, seed: int) -> None:
        self.sessions = sessions
        self.run_id = run_id
        self.rng = random.Random(seed)
        self.claimed: list[ClaimedJob] = []
        self.guard = threading.Lock()
        self.stop = threading.Event()
        self.errors: list[BaseException] = []

    def _loop(self, step: Callable[[Session], None]) -> None:
        try:
            while not self.stop.is_set():
                with self.sessions() as session, session.begin():
                    step(session)
        except BaseException as error:  # every failure is the test's finding
            self.errors.append(error)

    def claim(self, session: Session) -> None:
        # Half the leases are already expired, so the reconciler has work at the same time.
        lease = self.rng.choice([-1.0, 60.0])
        got = claim_next(session, limit=25, worker="w", lease_seconds=lease, run_id=self.run_id)
        with self.guard:
            self.claimed.extend(got)

    def write(self, session: Session) -> None:
        with self.guard:
            batch, self.claimed[:] = self.claimed[:40], self.claimed[40:]
        self.rng.shuffle(batch)
        record_outcomes(session, [_success(c) for c in batch])

    def renew(self, session: Session) -> None:
        with self.guard:
            attempts = [c.attempt_id for c in self.claimed]
        self.rng.shuffle(attempts)
        renew_leases(session, worker="w", attempt_ids=attempts, lease_seconds=60.0)

    def reconcile(self, session: Session) -> None:
        requeue_expired_leases(session, run_id=self.run_id)

    def _started(self) -> int:
        with self.sessions() as session:
            return session.scalar(select(func.count()).where(Job.run_id == self.run_id, Job.state != "queued")) or 0

    def run(self) -> None:
        steps = [self.claim, self.claim, self.write, self.renew, self.reconcile]
        threads = [threading.Thread(target=self._loop, args=(step,)) for step in steps]
        for thread in threads:
            thread.start()
        try:
            # Cancel while the others are busy over the run.
            while self._started() < 60 and not self.errors:
                pass
            with self.sessions() as session, session.begin():
                cancel_run(session, run_id=self.run_id)
        except BaseException as error:
            self.errors.append(error)
        finally:
            self.stop.set()
            for thread in threads:
                thread.join(timeout=60)


def test_cancel_claims_outcomes_and_reconcile_at_once_neither_deadlock_nor_leave_running_attempts(
    postgres_url: str,
) -> None:
    sessions = ledger(postgres_url)
    for round_number in range(ROUNDS):
        run_id, _ = make_run(sessions, name=f"race-{round_number}", jobs=JOBS)
        race = _Round(sessions, run_id, seed=round_number)
        race.run()
        assert race.errors == [], f"round {round_number}: {race.errors[0]!r}"
        with sessions() as session:
            states = set(session.scalars(select(Job.state).where(Job.run_id == run_id)))
            assert states <= {s.value for s in TERMINAL_STATES}, states
            assert JobState.CANCELLED.value in states
            assert running_attempts_on_terminal_jobs(session) == 0
