"""The hot queries are served by indexes at scale (docs/ARCHITECTURE.md, "Scale"): on a PostgreSQL ledger of 300,000
jobs with fresh statistics, every statement that claiming, heartbeats, lease expiry, the reconciler,
status and the browser's pages send is EXPLAINed as it is sent, and none reads `jobs` sequentially.
Plans, not timings: a plan that scans the table is as slow at 10^7 jobs on any machine."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker

from tests.integration.ledger_helpers import make_run
from tests.integration.plans import Plan, explained
from vlmbatch.producer.browser.queries import ResultFilter, job_page
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.claims import QueueClaimer, claim_jobs, claim_next
from vlmbatch.schema.ledger.database import make_engine, make_session_factory
from vlmbatch.schema.ledger.enqueue import refresh_statistics
from vlmbatch.schema.ledger.liveness import renew_leases
from vlmbatch.schema.ledger.reconcile import requeue_expired_leases
from vlmbatch.schema.ledger.resubmit import select_for_resubmit
from vlmbatch.schema.ledger.status import run_progress
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.reconciler import reconcile

# Three runs of 100,000 jobs each, laid out as submits and workers leave them: the oldest run is
# finished, the next was submitted and waits (all queued), and the target, the newest run (its id the
# highest: the case that fools PostgreSQL's row-comparison estimate), is 60% done (oldest ids first),
# 2% running (half with expired leases), 38% queued.
JOBS = 300_000
RUN_JOBS = 100_000
ERROR_TYPES = ("input.not_found", "input.unreadable", "storage.transient")

# Queued jobs as submit leaves them: never claimed (attempt_count 0); a claim reads requeued ones elsewhere.
_FILL = f"""
INSERT INTO jobs (run_id, input_key, images, question, state, attempt_count, attempt_base,
                  transient_failures, accepted_samples, created_at, queued_at, finished_at,
                  current_attempt_id, lease_owner, lease_expires_at, error_type)
SELECT CASE WHEN i <= {RUN_JOBS} THEN :other1 WHEN i <= 2 * {RUN_JOBS} THEN :other2 ELSE :target END,
       md5(i::text), json_build_array('file:///img/' || i || '.jpg'), 'what?', s.state,
       CASE WHEN s.state = 'queued' THEN 0 ELSE 1 END, 0, 0, 0,
       now() - interval '2 hours', now() - interval '2 hours',
       CASE WHEN s.state IN ('queued', 'running') THEN NULL ELSE now() - (i % 7200) * interval '1 second' END,
       CASE WHEN s.state = 'running' THEN i END,
       CASE WHEN s.state = 'running' THEN 'w-' || (i % 4) END,
       CASE WHEN s.state = 'running' THEN now() + CASE WHEN i % 2 = 0 THEN interval '1 hour'
                                                       ELSE interval '-1 hour' END END,
       CASE WHEN s.state = 'failed' THEN (ARRAY{list(ERROR_TYPES)})[1 + i % 3] END
FROM generate_series(1, {JOBS}) AS i,
     LATERAL (SELECT CASE WHEN i <= {RUN_JOBS} THEN 0.0 WHEN i <= 2 * {RUN_JOBS} THEN 0.99
                          ELSE (i - 2 * {RUN_JOBS})::float / {RUN_JOBS} END AS progress) AS p,
     LATERAL (SELECT CASE WHEN p.progress >= 0.62 THEN 'queued' WHEN p.progress >= 0.60 THEN 'running'
                          WHEN i % 100 < 85 THEN 'succeeded' WHEN i % 100 < 91 THEN 'failed'
                          WHEN i % 100 < 96 THEN 'truncated' ELSE 'cancelled' END AS state) AS s
"""
_ABOUT_JOBS = re.compile(r"\b(FROM|JOIN|UPDATE|INTO) jobs\b", re.I)
_COUNT = """
INSERT INTO run_counts (run_id, state, error_type, shard, jobs)
SELECT run_id, state, CASE WHEN state = 'failed' THEN error_type ELSE '' END, 0, count(*)
FROM jobs GROUP BY 1, 2, 3
"""


# 100 more runs on the queue, 200 queued jobs each, with their counters (rolled back after the test).
_MANY_RUNS = """
WITH new_runs AS (
    INSERT INTO runs (name, model, queue, settings, created_at, held, priority, weight)
    SELECT 'many-' || r, 'fake-model', 'q', '{}', now(), false, 0, 1 FROM generate_series(1, 100) AS r
    RETURNING id
)
INSERT INTO jobs (run_id, input_key, images, question, state, attempt_count, attempt_base, transient_failures,
                  accepted_samples, created_at, queued_at)
SELECT new_runs.id, md5(new_runs.id || '-' || i), json_build_array('file:///img/' || i || '.jpg'), 'what?',
       'queued', 0, 0, 0, 0, now(), now()
FROM new_runs, generate_series(1, 200) AS i
"""
_COUNT_MANY = """
INSERT INTO run_counts (run_id, state, error_type, shard, jobs)
SELECT run_id, 'queued', '', 0, count(*) FROM jobs WHERE run_id IN (SELECT id FROM runs WHERE name LIKE 'many-%')
GROUP BY run_id
"""


@dataclass(frozen=True)
class Ledger:
    engine: Engine
    sessions: sessionmaker[Session]
    target: int


@pytest.fixture(scope="module")
def big_ledger(postgres_template: str) -> Iterator[Ledger]:
    """One ledger of JOBS jobs for the whole module (the queries below read it; the few writes are
    small), analysed as submit leaves it."""
    import uuid

    import psycopg

    from tests.conftest import POSTGRES_URL, _admin_dsn, _with_database

    name = f"vlmbatch_plans_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{postgres_template}"')
    engine = make_engine(_with_database(POSTGRES_URL, name))
    sessions = make_session_factory(engine)
    runs = [make_run(sessions, name=f"run-{i}", jobs=0)[0] for i in range(3)]
    with sessions() as session, session.begin():
        session.execute(text(_FILL), {"other1": runs[0], "other2": runs[1], "target": runs[2]})
        session.execute(text(_COUNT))
    with sessions() as session, session.begin():
        assert refresh_statistics(session, inserted=JOBS)
    yield Ledger(engine, sessions, runs[2])
    engine.dispose()
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _assert_indexed(plans: Sequence[Plan], *, expect: str) -> None:
    """No plan reads `jobs` sequentially, and at least one reads it through the index `expect`."""
    assert plans, "no statement about jobs was sent"
    scans = [scan for plan in plans for scan in plan.scans_of_jobs()]
    seq = [plan.sql for plan in plans if any(s.startswith("Seq Scan") for s in plan.scans_of_jobs())]
    assert not seq, f"sequential scan of jobs in: {seq}"
    assert any(scan.endswith(f":{expect}") for scan in scans), f"{expect} not used; scans: {scans}"


def _assert_streams(plans: Sequence[Plan], *, page: int) -> None:
    """A LIMITed page reads its index in order and stops: nothing sorts or hashes the jobs it scans, and
    the planner expects the scan to yield at least a page (an estimate of one row is what leads it to
    hash the whole run for a join, whichever plan it happens to pick here)."""
    for plan in plans:
        for node in plan.nodes():
            if node["Node Type"] in ("Sort", "Hash", "Incremental Sort"):
                inner = Plan(plan.sql, node)
                assert not inner.scans_of_jobs(), f"{node['Node Type']} over jobs in: {plan.sql}"
            if node.get("Relation Name") == "jobs" and "Scan" in node["Node Type"]:  # not the UPDATE's own node
                assert node["Plan Rows"] >= page, f"estimated {node['Plan Rows']} rows in: {plan.sql}"


def _queued_ids(ledger: Ledger, n: int) -> list[int]:
    with ledger.sessions() as session:
        stmt = select(Job.id).where(Job.run_id == ledger.target, Job.state == "queued").order_by(Job.id.desc())
        return list(session.scalars(stmt.limit(n)))


def test_claiming_by_message_ids_reads_the_primary_key(big_ledger: Ledger) -> None:
    ids = _queued_ids(big_ledger, 16)
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session, session.begin():
        claimed = claim_jobs(session, job_ids=ids, worker="w-plan", lease_seconds=60, model=None)
        session.rollback()
    assert len(claimed) == 16
    _assert_indexed(plans, expect="jobs_pkey")


def test_claiming_a_runs_next_jobs_reads_its_queued_keys(big_ledger: Ledger) -> None:
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session, session.begin():
        claimed = claim_next(session, limit=64, worker="w-plan", lease_seconds=60, run_id=big_ledger.target)
        session.rollback()
    assert len(claimed) == 64
    _assert_indexed(plans, expect="ix_jobs_run_state_id")
    _assert_streams(plans, page=64)


def test_a_claim_token_shares_the_queues_runs_and_takes_their_oldest_jobs_by_their_keys(big_ledger: Ledger) -> None:
    claimer = QueueClaimer(queue="q")
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session, session.begin():
        claimed = claimer.claim(session, limit=64, worker="w-plan", lease_seconds=60)
        session.rollback()
    assert len(claimed) == 64
    # The two runs with queued jobs share the claim, each its oldest queued jobs.
    by_run = Counter(c.run_id for c in claimed)
    assert set(by_run) == set(claimer.open_runs) and len(by_run) == 2 and big_ledger.target in by_run
    assert by_run[big_ledger.target] == 32
    _assert_indexed(plans, expect="ix_jobs_run_state_id")
    _assert_streams(plans, page=32)


def test_a_claim_with_a_hundred_active_runs_reads_a_few_of_them_by_their_keys(big_ledger: Ledger) -> None:
    """100 more runs with queued jobs on the queue: a claim still reads each run it takes from through
    ix_jobs_run_state_id, and takes from at most RUNS_PER_CLAIM of them."""
    from vlmbatch.schema.ledger.shares import RUNS_PER_CLAIM

    with big_ledger.sessions() as session, session.begin():
        session.execute(text(_MANY_RUNS))
        session.execute(text(_COUNT_MANY))
        claimer = QueueClaimer(queue="q")
        with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans:
            claimed = claimer.claim(session, limit=64, worker="w-plan", lease_seconds=60)
        runs = len(claimer.open_runs)
        session.rollback()
    assert len(claimed) == 64 and runs == 102
    assert len({c.run_id for c in claimed}) == RUNS_PER_CLAIM
    _assert_indexed(plans, expect="ix_jobs_run_state_id")


def test_a_heartbeat_reads_its_workers_running_jobs_and_writes_none(big_ledger: Ledger) -> None:
    with big_ledger.sessions() as session:
        attempts = list(
            session.scalars(select(Job.current_attempt_id).where(Job.lease_owner == "w-1", Job.state == "running"))
        )
    assert len(attempts) > 100
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session, session.begin():
        lost = renew_leases(session, worker="w-1", attempt_ids=attempts, lease_seconds=60)
        session.rollback()
    assert lost == set()
    _assert_indexed(plans, expect="ix_jobs_running_owner")
    assert [p.sql for p in plans if re.match(r"\s*(UPDATE|INSERT|DELETE)", p.sql)] == []  # no job row written


def test_lease_expiry_reads_only_running_jobs(big_ledger: Ledger) -> None:
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session, session.begin():
        requeued = requeue_expired_leases(session, limit=100)
        session.rollback()
    assert requeued.count == 100
    _assert_indexed(plans, expect="ix_jobs_running_attempt")


def test_the_embedded_feeds_drain_check_probes_the_runs_state_keys(big_ledger: Ledger) -> None:
    from vlmbatch.schema.ledger.runs import run_drained

    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session, session.begin():
        drained = run_drained(session, run_id=big_ledger.target)
        session.rollback()
    assert not drained
    pending = [p for p in plans if "lease_expires_at" not in p.sql]
    assert len(pending) == 1  # queued jobs found: the running ones need no look
    _assert_indexed(pending, expect="ix_jobs_run_state_id")
    _assert_streams(pending, page=1)
    _assert_indexed(plans, expect="ix_jobs_running_attempt")


def test_status_reads_counters_and_the_recent_finishes(big_ledger: Ledger) -> None:
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session:
        progress = run_progress(session, big_ledger.target)
    with big_ledger.sessions() as session:
        real = dict(
            session.execute(
                select(Job.state, func.count()).where(Job.run_id == big_ledger.target).group_by(Job.state)
            ).all()
        )
    assert progress.report.total == RUN_JOBS
    # 60,000 finishes spread over two hours: 8.3 a second, measured on the latest RATE_SAMPLE of them.
    assert 7.5 < progress.jobs_per_second < 9.2
    assert {state: n for state, n in progress.report.counts.items() if n} == real
    # The counts come from run_counts; only the throughput window touches jobs, through its index.
    assert len(plans) == 1
    _assert_indexed(plans, expect="ix_jobs_run_finished")


@pytest.mark.parametrize(
    ("where", "expect"),
    [
        (ResultFilter(), "ix_jobs_run_id"),
        (ResultFilter(state=JobState.QUEUED), "ix_jobs_run_state_id"),
        (ResultFilter(state=JobState.SUCCEEDED), "ix_jobs_run_state_id"),
        (ResultFilter(state=JobState.FAILED, error_type="input.unreadable"), "ix_jobs_run_failed_error"),
    ],
    ids=["all", "queued", "succeeded", "failed-by-error"],
)
@pytest.mark.parametrize("depth", ["first", "deep"])
def test_browser_pages_are_keyset_index_scans(big_ledger: Ledger, where: ResultFilter, expect: str, depth: str) -> None:
    after = 0 if depth == "first" else _near_the_end(big_ledger, where)
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session:
        page = job_page(session, big_ledger.target, where, limit=50, after=after)
    assert page.rows
    assert all(row.id > after for row in page.rows)
    _assert_indexed(plans, expect=expect)
    _assert_streams([p for p in plans if "FROM results" not in p.sql], page=50)


def _near_the_end(ledger: Ledger, where: ResultFilter) -> int:
    """A key a few dozen rows before the last of the run's jobs that pass `where`."""
    stmt = select(Job.id).where(Job.run_id == ledger.target)
    if where.state is not None:
        stmt = stmt.where(Job.state == where.state.value)
    if where.error_type is not None:
        stmt = stmt.where(Job.error_type == where.error_type)
    with ledger.sessions() as session:
        return int(session.scalars(stmt.order_by(Job.id.desc()).offset(60).limit(1)).one())


def test_resubmit_selection_reads_the_runs_failed_keys(big_ledger: Ledger) -> None:
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans, big_ledger.sessions() as session:
        selection = select_for_resubmit(session, run_id=big_ledger.target, states=[JobState.FAILED])
    assert len(selection.job_ids) == 3600
    _assert_indexed(plans, expect="ix_jobs_run_failed_error")


class _CountingPublisher:
    def __init__(self) -> None:
        self.published = 0

    def publish(self, queue: str, jobs: int, *, countdown: float | None = None) -> int:
        self.published += jobs
        return 1


def test_reconciler_reads_no_queued_job(big_ledger: Ledger, redis_url: str) -> None:
    """Tokens are counted, not matched to jobs: the pass reads running jobs for expired leases and the run
    counters, and never a queued job, however many there are."""
    with big_ledger.sessions() as session:
        queued = session.scalar(select(func.count()).select_from(Job).where(Job.state == "queued"))
        expired = session.scalar(
            select(func.count()).select_from(Job).where(Job.state == "running", Job.lease_expires_at < func.now())
        )
    publisher = _CountingPublisher()
    with explained(big_ledger.engine, about=_ABOUT_JOBS) as plans:
        report = reconcile(
            sessions=big_ledger.sessions,
            publisher=publisher,
            broker_url=redis_url,
            jobs_per_message=16,
            run_id=big_ledger.target,
            # The whole queue: its broker list is empty, so every queued job lacks a token.
            unacked_stale_seconds=300,
        )
    assert report.leases_requeued == expired and expired > 500
    # The broker's list is empty (this publisher only counts): tokens for every queued job of the queue,
    # the requeued ones included.
    assert report.republished == queued + expired
    assert publisher.published == report.leases_requeued + report.republished
    _assert_indexed(plans, expect="ix_jobs_running_attempt")
    scans = [scan for plan in plans for scan in plan.scans_of_jobs()]
    assert not any(scan.endswith(":ix_jobs_run_state_id") for scan in scans), scans
