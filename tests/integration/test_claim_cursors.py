"""A claimer walks each run on from its cursor (schema/ledger/heads.py) and still takes every claimable job
once: jobs requeued behind the cursor (a retry, a resubmit) at the next claim, the jobs of its own
rolled-back claim again, and a job its cursor passed while another claim held it (that claim then rolled
back) by a sweep from the head. On SQLite and PostgreSQL where both can show it; the passed job needs two
claims at once, which only PostgreSQL runs."""

from __future__ import annotations

from collections import Counter

import pytest
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.contracts.states import AttemptOutcome
from vlmbatch.schema.ledger.claims import ClaimedJob, QueueClaimer
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.resubmit import resubmit_jobs
from vlmbatch.schema.ledger.tables import Attempt, Job

TOKEN = 16


def _claim(sessions: sessionmaker[Session], claimer: QueueClaimer, limit: int = TOKEN) -> list[ClaimedJob]:
    with sessions() as session, session.begin():
        return claimer.claim(session, limit=limit, worker="w", lease_seconds=60)


def _succeed(sessions: sessionmaker[Session], claimed: list[ClaimedJob]) -> None:
    sample = SampleRecord(0, "a", None, "a", "stop", True, 1, None, None)
    reports = [AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.SUCCEEDED, samples=[sample]) for c in claimed]
    with sessions() as session, session.begin():
        assert len(record_outcomes(session, reports)) == len(claimed)


def _attempts_per_job(sessions: sessionmaker[Session]) -> Counter[int]:
    with sessions() as session:
        rows = session.execute(select(Attempt.job_id, func.count()).group_by(Attempt.job_id)).tuples().all()
        return Counter(dict(rows))


def test_a_job_requeued_behind_the_cursor_is_claimed_at_the_next_claim(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=60)
    claimer = QueueClaimer(queue="q")
    first = _claim(sessions, claimer)
    assert [c.job_id for c in first] == ids[:16]
    retried = first[2]
    with sessions() as session, session.begin():  # a transient failure, claimable again at once
        report = AttemptReport(retried.job_id, retried.attempt_id, AttemptOutcome.FAILED, retry_after_s=0.0)
        assert record_outcomes(session, [report])
    second = _claim(sessions, claimer)
    # The retried job first (the oldest), then the never-claimed jobs after the cursor.
    assert [c.job_id for c in second] == [retried.job_id, *ids[16:31]]
    assert second[0].attempt_number == 2


def test_a_rolled_back_claim_puts_the_claimers_cursor_back(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=40)
    claimer = QueueClaimer(queue="q")
    with sessions() as session, session.begin():
        lost = claimer.claim(session, limit=TOKEN, worker="w", lease_seconds=60)
        session.rollback()  # the claim's transaction never committed (the database restarted, say)
    assert [c.job_id for c in lost] == ids[:16]
    again = _claim(sessions, claimer)
    assert [c.job_id for c in again] == ids[:16]
    assert [c.attempt_number for c in again] == [1] * 16


def test_finished_jobs_resubmitted_behind_every_cursor_are_all_claimed_once_more(database_url: str) -> None:
    sessions = ledger(database_url)
    _, ids = make_run(sessions, jobs=40)
    claimer = QueueClaimer(queue="q")
    while claimed := _claim(sessions, claimer):
        _succeed(sessions, claimed)
    with sessions() as session, session.begin():
        assert resubmit_jobs(session, job_ids=ids) == ids
    again: list[ClaimedJob] = []
    while claimed := _claim(sessions, claimer):
        again += claimed
    assert sorted(c.job_id for c in again) == ids
    assert {c.attempt_number for c in again} == {2}
    assert _attempts_per_job(sessions) == Counter(dict.fromkeys(ids, 2))


@pytest.fixture
def held_then_released(postgres_url: str) -> tuple[sessionmaker[Session], list[int], QueueClaimer]:
    """48 jobs; claimer B claimed 17-32 while another claim held 1-16 locked (B skipped them, its cursor
    passed them), then that claim rolled back: 1-16 are queued, never claimed, behind B's cursor."""
    sessions = ledger(postgres_url)
    _, ids = make_run(sessions, jobs=48)
    claimer = QueueClaimer(queue="q", sweep_seconds=0)
    with sessions() as held, held.begin():
        # Where another claim stands between its SELECT ... FOR UPDATE and its writes (which would take a
        # counter row this thread's second connection might then wait for).
        locked = held.scalars(select(Job.id).where(Job.id <= ids[15]).order_by(Job.id).with_for_update())
        assert list(locked) == ids[:16]
        assert [c.job_id for c in _claim(sessions, claimer)] == ids[16:32]
        held.rollback()
    return sessions, ids, claimer


def test_a_job_a_cursor_passed_while_another_claim_held_it_is_found_by_a_sweep(
    held_then_released: tuple[sessionmaker[Session], list[int], QueueClaimer],
) -> None:
    sessions, ids, claimer = held_then_released
    assert [c.job_id for c in _claim(sessions, claimer)] == ids[32:48]
    # After its cursor the run has nothing left: the claimer sweeps from the head and finds them.
    assert [c.job_id for c in _claim(sessions, claimer)] == ids[:16]
    assert _claim(sessions, claimer) == []
    assert _attempts_per_job(sessions) == Counter(dict.fromkeys(ids, 1))


def test_a_sweep_comes_at_most_every_sweep_interval_and_a_new_claimer_walks_from_the_head(
    held_then_released: tuple[sessionmaker[Session], list[int], QueueClaimer],
) -> None:
    sessions, ids, claimer = held_then_released
    claimer.sweep_seconds = 3600.0  # its walk from the head (its first claim) was a sweep
    assert [c.job_id for c in _claim(sessions, claimer)] == ids[32:48]
    assert _claim(sessions, claimer) == []
    assert [c.job_id for c in _claim(sessions, QueueClaimer(queue="q"))] == ids[:16]
    with sessions() as session:
        assert session.scalar(select(func.count()).select_from(Attempt)) == 48
