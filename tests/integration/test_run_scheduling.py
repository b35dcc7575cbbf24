"""Many runs on one queue: a claim takes from the highest priority first and shares a priority's jobs by
weight, a new small run is served from the next claim on and finishes long before a large one, and a
paused run is claimed from by no worker, whatever it remembered, until it is resumed. On SQLite and
PostgreSQL, through the claimer workers use, with outcomes written as workers write them."""

from __future__ import annotations

from collections import Counter

from sqlalchemy.orm import Session, sessionmaker

from tests.integration.ledger_helpers import ledger, make_run
from vlmbatch.schema.contracts.models import RunSettings
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.claims import ClaimedJob, QueueClaimer
from vlmbatch.schema.ledger.controls import pause_run, resume_run, set_schedule
from vlmbatch.schema.ledger.counters import read_counts
from vlmbatch.schema.ledger.outcomes import AttemptReport, SampleRecord, record_outcomes
from vlmbatch.schema.ledger.runs import Schedule, create_or_reuse_run
from vlmbatch.worker.transport.reconciler import queued_by_queue

TOKEN = 16  # jobs per claim token


def _claim(sessions: sessionmaker[Session], claimer: QueueClaimer, limit: int = TOKEN) -> list[ClaimedJob]:
    with sessions() as session, session.begin():
        return claimer.claim(session, limit=limit, worker="w", lease_seconds=60)


def _finish(sessions: sessionmaker[Session], claimed: list[ClaimedJob]) -> None:
    sample = SampleRecord(0, "a", None, "a", "stop", True, 1, None, None)
    reports = [AttemptReport(c.job_id, c.attempt_id, AttemptOutcome.SUCCEEDED, samples=[sample]) for c in claimed]
    with sessions() as session, session.begin():
        assert len(record_outcomes(session, reports)) == len(claimed)


def _queued(sessions: sessionmaker[Session], run_id: int) -> int:
    with sessions() as session:
        return read_counts(session, run_id).by_state[JobState.QUEUED.value]


def _scheduled_run(sessions: sessionmaker[Session], name: str, jobs: int, **schedule: int) -> int:
    create_or_reuse_run(
        sessions, name=name, settings=RunSettings(), queue="q", source="test", schedule=Schedule(**schedule)
    )
    return make_run(sessions, name=name, jobs=jobs)[0]


def test_a_small_run_submitted_behind_a_large_one_finishes_first_within_a_bounded_number_of_claims(
    database_url: str,
) -> None:
    sessions = ledger(database_url)
    large, _ = make_run(sessions, name="captions", jobs=600)
    claimer = QueueClaimer(queue="q")
    for _ in range(5):  # the large run has the fleet to itself for a while
        _finish(sessions, _claim(sessions, claimer))
    small, _ = make_run(sessions, name="eval", jobs=40)
    claims = 0
    large_served = 0
    while _queued(sessions, small):
        claimed = _claim(sessions, claimer)
        claims += 1
        large_served += sum(1 for c in claimed if c.run_id == large)
        _finish(sessions, claimed)
        assert claims <= 6, "the small run waits behind the large one"
    # Equal shares: 40 jobs at 8 a claim, served from the first claim after its submit; the large run
    # keeps its half meanwhile instead of stopping.
    assert claims == 5
    assert large_served == 40
    assert _queued(sessions, large) == 600 - 5 * TOKEN - 40


def test_shares_follow_weights_within_a_priority(database_url: str) -> None:
    sessions = ledger(database_url)
    light = _scheduled_run(sessions, "light", 400, weight=1)
    heavy = _scheduled_run(sessions, "heavy", 400, weight=3)
    claimer = QueueClaimer(queue="q")
    served: Counter[int] = Counter()
    for _ in range(10):
        claimed = _claim(sessions, claimer)
        served.update(c.run_id for c in claimed)
        _finish(sessions, claimed)
    assert served[light] + served[heavy] == 10 * TOKEN
    assert served[heavy] == 3 * served[light]


def test_higher_priority_runs_are_taken_first_and_a_priority_change_reorders_them(database_url: str) -> None:
    sessions = ledger(database_url)
    old = _scheduled_run(sessions, "old", 100)
    urgent = _scheduled_run(sessions, "urgent", 40, priority=5)
    claimer = QueueClaimer(queue="q")
    order = []
    while _queued(sessions, urgent):
        claimed = _claim(sessions, claimer)
        order.append({c.run_id for c in claimed})
        _finish(sessions, claimed)
    # 40 urgent jobs: two whole claims, then the rest of the third filled from the lower priority.
    assert order == [{urgent}, {urgent}, {urgent, old}]
    later = _scheduled_run(sessions, "later", 50)
    with sessions() as session, session.begin():
        set_schedule(session, run_id=later, priority=1)
    fresh = QueueClaimer(queue="q")  # a worker started now
    assert {c.run_id for c in _claim(sessions, fresh)} == {later}


def test_a_new_run_starts_level_with_the_active_runs_not_owed_their_past(database_url: str) -> None:
    sessions = ledger(database_url)
    first, _ = make_run(sessions, name="first", jobs=500)
    claimer = QueueClaimer(queue="q")
    for _ in range(10):
        _finish(sessions, _claim(sessions, claimer))
    second, _ = make_run(sessions, name="second", jobs=500)
    served: Counter[int] = Counter()
    for _ in range(6):
        claimed = _claim(sessions, claimer)
        served.update(c.run_id for c in claimed)
        _finish(sessions, claimed)
    # Turn about from the start: the new run does not take every job until it has had the 160 the
    # first one had before it came.
    assert served[first] == served[second] == 3 * TOKEN


def test_a_paused_run_is_claimed_from_by_no_worker_until_resumed(database_url: str) -> None:
    sessions = ledger(database_url)
    paused, _ = make_run(sessions, name="paused", jobs=50)
    other, _ = make_run(sessions, name="other", jobs=50)
    warm = QueueClaimer(queue="q")
    assert {c.run_id for c in _claim(sessions, warm)} == {paused, other}  # it knows both runs now
    with sessions() as session, session.begin():
        assert pause_run(session, run_id=paused)
        assert not pause_run(session, run_id=paused)  # once: the first time and reason stay
    for claimer in (warm, QueueClaimer(queue="q")):  # a warm worker, and one (re)started after the pause
        assert {c.run_id for c in _claim(sessions, claimer)} == {other}
    with sessions() as session:
        demand = queued_by_queue(session, run_id=None, cutoff=_far_future(session))
    assert demand == {"q": _queued(sessions, other)}  # no claim tokens are owed for a paused run
    with sessions() as session, session.begin():
        queued = resume_run(session, run_id=paused)
    assert queued == _queued(sessions, paused) == 50 - TOKEN // 2
    assert paused in {c.run_id for c in _claim(sessions, QueueClaimer(queue="q"))}


def _far_future(session: Session):  # type: ignore[no-untyped-def]
    from datetime import timedelta

    from vlmbatch.schema.ledger.clock import database_now

    return database_now(session) + timedelta(days=1)
