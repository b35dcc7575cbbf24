"""Hot queries keep their plans while a run moves from all-queued to mostly finished, with the statistics
that submit left (no ANALYZE after the workers' changes, autovacuum off as on every machine of ours):
the state a user looks at. Each state is a run of JOBS jobs submitted and analysed as `vlmbatch submit`
leaves it, then 10%, 50% or 90% finished as workers leave them (attempts and results written, a mix of
succeeded, failed and truncated). Plans, not timings: no statement reads `jobs` or `results`
sequentially, sorts or hashes what it scans of them, and the maintenance pass's statistics refresh
analyses exactly the tables that changed."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, event, text
from sqlalchemy.orm import Session, sessionmaker

from tests.conftest import POSTGRES_URL, _admin_dsn, _with_database
from tests.integration.ledger_helpers import make_run
from tests.integration.plans import Plan, explained
from vlmbatch.producer.browser.queries import ResultFilter, get_run, job_page
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.claims import QueueClaimer
from vlmbatch.schema.ledger.database import make_engine, make_session_factory
from vlmbatch.schema.ledger.enqueue import refresh_midrun_statistics, refresh_statistics
from vlmbatch.schema.ledger.recent import RECENT_SAMPLE, recent_finishes

JOBS = 60_000

_SUBMIT = """
INSERT INTO jobs (run_id, input_key, images, question, state, attempt_count, attempt_base, transient_failures,
                  accepted_samples, created_at, queued_at)
SELECT :run, md5(i::text), json_build_array('file:///img/' || i || '.jpg'), 'what?', 'queued', 0, 0, 0, 0,
       now(), now()
FROM generate_series(1, CAST(:jobs AS bigint)) AS i
"""
# Workers finish the oldest jobs first: 2% fail, ~3% are truncated, the rest succeed.
_ATTEMPTS = """
INSERT INTO attempts (job_id, number, worker, outcome, started_at, finished_at, prompt_tokens, completion_tokens)
SELECT id, 1, 'w', CASE WHEN id % 50 = 0 THEN 'failed' WHEN id % 37 = 0 THEN 'truncated' ELSE 'succeeded' END,
       now(), now(), 300, 100
FROM jobs WHERE run_id = :run AND id <= :last
"""
_JOBS_DONE = """
UPDATE jobs SET state = a.outcome, current_attempt_id = a.id, attempt_count = 1, finished_at = now(),
       error_type = CASE WHEN a.outcome = 'failed' THEN 'input.unreadable' END,
       error_message = CASE WHEN a.outcome = 'failed' THEN 'cannot decode' END
FROM attempts a WHERE a.job_id = jobs.id AND jobs.run_id = :run
"""
_RESULTS = """
INSERT INTO results (job_id, attempt_id, sample_index, answer, reasoning, raw_text, finish_reason, trace_closed,
                     completion_tokens, correct, created_at)
SELECT job_id, id, 0, 'B', 'because', '<think>because</think>B', CASE WHEN outcome = 'truncated' THEN 'length'
       ELSE 'stop' END, outcome = 'succeeded', 100, CASE WHEN job_id % 3 = 0 THEN false ELSE true END, now()
FROM attempts WHERE outcome <> 'failed'
"""
_COUNT = """
INSERT INTO run_counts (run_id, state, error_type, shard, jobs)
SELECT run_id, state, CASE WHEN state = 'failed' THEN error_type ELSE '' END, 0, count(*) FROM jobs GROUP BY 1, 2, 3
"""


def assert_flat(plans: list[Plan]) -> None:
    """No sequential scan of jobs or results, and nothing sorted or hashed that was read from them."""
    assert plans
    for plan in plans:
        scans = plan.scans()
        assert not [s for s in scans if s.startswith("Seq Scan")], f"sequential scan in: {plan.sql}"
        for node in plan.nodes():
            if node["Node Type"] in ("Sort", "Hash", "Incremental Sort"):
                assert not plan.scans(node), f"{node['Node Type']} over a hot table in: {plan.sql}"


@dataclass(frozen=True)
class MidRun:
    engine: Engine
    sessions: sessionmaker[Session]
    run_id: int
    finished: float


@contextmanager
def midrun_ledger(template: str, *, jobs: int, finished: float) -> Iterator[MidRun]:
    """A fresh database from `template` holding one run of `jobs` jobs, `finished` of them done."""
    name = f"vlmbatch_midrun_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template}"')
    engine = make_engine(_with_database(POSTGRES_URL, name))
    sessions = make_session_factory(engine)
    run_id = make_run(sessions, name="mid", jobs=0)[0]
    with sessions() as session, session.begin():
        session.execute(text(_SUBMIT), {"run": run_id, "jobs": jobs})
    with sessions() as session, session.begin():  # what submit does after its bulk load
        assert refresh_statistics(session, inserted=jobs)
    with sessions() as session, session.begin():
        first = int(session.scalar(text("SELECT min(id) FROM jobs WHERE run_id = :r"), {"r": run_id}) or 0)
        session.execute(text(_ATTEMPTS), {"run": run_id, "last": first + int(jobs * finished) - 1})
        session.execute(text(_JOBS_DONE), {"run": run_id})
        session.execute(text(_RESULTS))
        session.execute(text("DELETE FROM run_counts"))
        session.execute(text(_COUNT))
        session.execute(text("SELECT pg_stat_force_next_flush()"))  # the counters the refresh reads
    try:
        yield MidRun(engine, sessions, run_id, finished)
    finally:
        engine.dispose()
        with psycopg.connect(_admin_dsn(), autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="module", params=[0.1, 0.5, 0.9], ids=["10pct", "50pct", "90pct"])
def midrun(request: pytest.FixtureRequest, postgres_template: str) -> Iterator[MidRun]:
    with midrun_ledger(postgres_template, jobs=JOBS, finished=request.param) as state:
        yield state


@pytest.mark.parametrize(
    "where",
    [
        ResultFilter(),
        ResultFilter(state=JobState.SUCCEEDED),
        ResultFilter(state=JobState.TRUNCATED),
        ResultFilter(state=JobState.QUEUED),
        ResultFilter(state=JobState.FAILED, error_type="input.unreadable"),
        ResultFilter(error_type="input.unreadable"),
    ],
    ids=["all", "succeeded", "truncated", "queued", "failed-by-error", "error"],
)
def test_run_pages_keep_their_plans_on_stale_statistics(midrun: MidRun, where: ResultFilter) -> None:
    with explained(midrun.engine) as plans, midrun.sessions() as session:
        summary = get_run(session, midrun.run_id)
        page = job_page(session, midrun.run_id, where, limit=50, counts=summary.progress.report)
    assert page.rows
    assert_flat(plans)


def test_a_filter_the_counters_say_is_empty_reads_no_job(midrun: MidRun) -> None:
    with midrun.sessions() as session:
        summary = get_run(session, midrun.run_id)
        with explained(midrun.engine) as plans:
            page = job_page(
                session, midrun.run_id, ResultFilter(state=JobState.CANCELLED), limit=50, counts=summary.progress.report
            )
            no_such_error = job_page(
                session, midrun.run_id, ResultFilter(error_type="engine.oom"), limit=50, counts=summary.progress.report
            )
    assert page.rows == [] and no_such_error.rows == []
    assert plans == []


def test_a_claim_keeps_its_plan_on_stale_statistics(midrun: MidRun) -> None:
    claimer = QueueClaimer(queue="q")
    with explained(midrun.engine) as plans, midrun.sessions() as session, session.begin():
        claimed = claimer.claim(session, limit=64, worker="w-plan", lease_seconds=60)
        session.rollback()
    assert len(claimed) == 64
    assert_flat(plans)
    # The job ranges it reads: the requeued jobs' partial index, and the queued range (schema.ledger.heads).
    scans = {scan for plan in plans for scan in plan.scans()}
    assert {"Index Scan:ix_jobs_run_requeued", "Index Scan:ix_jobs_run_state_id"} <= scans


@contextmanager
def buffers_read(engine: Engine) -> Iterator[list[int]]:
    """Shared buffers (hit + read) each SELECT the engine sends reads, by EXPLAIN (ANALYZE, BUFFERS)."""
    counted: list[int] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if executemany or not statement.lstrip().upper().startswith("SELECT"):
            return
        with conn.connection.dbapi_connection.cursor() as probe:
            probe.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
            plan = probe.fetchone()[0][0]["Plan"]
            counted.append(int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)))

    event.listen(engine, "before_cursor_execute", explain)
    try:
        yield counted
    finally:
        event.remove(engine, "before_cursor_execute", explain)


def _warm_claim_buffers(state: MidRun) -> int:
    """The buffers a claim reads from a claimer that claimed before (as a worker's does)."""
    claimer = QueueClaimer(queue="q")
    with state.sessions() as session, session.begin():
        assert len(claimer.claim(session, limit=16, worker="w-warm", lease_seconds=60)) == 16
    with buffers_read(state.engine) as counted, state.sessions() as session, session.begin():
        assert len(claimer.claim(session, limit=64, worker="w-buffers", lease_seconds=60)) == 64
        session.rollback()
    return sum(counted)


def test_a_claim_reads_the_same_buffers_at_six_times_the_jobs_90pct_finished(postgres_template: str) -> None:
    """Finished jobs leave dead entries at the head of the run's queued range until a VACUUM (autovacuum
    off): a claim that walked them read 459 buffers at 2*10^4 jobs and 2,199 at 10^5. A claimer's cursor
    walks on past them."""
    buffers = []
    for jobs in (10_000, 60_000):
        with midrun_ledger(postgres_template, jobs=jobs, finished=0.9) as state:
            buffers.append(_warm_claim_buffers(state))
    small, large = buffers
    # A B-tree one level deeper at the larger size costs a buffer per index descent, not hundreds.
    assert large <= small + 10, buffers


def test_the_run_page_charts_read_the_latest_finishes_on_their_index(midrun: MidRun) -> None:
    """The charts' read (schema.ledger.recent) is most of a run page's buffers: RECENT_SAMPLE jobs off
    ix_jobs_run_finished, each with its current attempt by primary key, and nothing sorted after."""
    with explained(midrun.engine) as plans, midrun.sessions() as session:
        finishes = recent_finishes(session, midrun.run_id)
    assert len(finishes) == min(RECENT_SAMPLE, int(JOBS * midrun.finished))
    assert [f.finished_at for f in finishes] == sorted(f.finished_at for f in finishes)
    assert_flat(plans)
    (plan,) = plans
    assert {"Index Scan:ix_jobs_run_finished"} == set(plan.scans())
    attempts = [node for node in plan.nodes() if node.get("Relation Name") == "attempts"]
    assert [node.get("Index Name") for node in attempts] == ["attempts_pkey"], plan.sql
    assert not [node for node in plan.nodes() if node["Node Type"] in ("Sort", "Incremental Sort")]


def _charts_buffers(state: MidRun) -> int:
    with buffers_read(state.engine) as counted, state.sessions() as session:
        assert len(recent_finishes(session, state.run_id)) == RECENT_SAMPLE
    return sum(counted)


def test_the_run_page_charts_read_the_same_buffers_at_six_times_the_jobs_90pct_finished(
    postgres_template: str,
) -> None:
    """A fixed sample: about three buffers per finish (an attempts_pkey descent and its heap page) at any
    size; a read of the run's finished jobs or attempts would grow with them."""
    buffers = []
    for jobs in (10_000, 60_000):
        with midrun_ledger(postgres_template, jobs=jobs, finished=0.9) as state:
            buffers.append(_charts_buffers(state))
    small, large = buffers
    # A deeper attempts_pkey at the larger size costs a buffer per probe at most.
    assert small <= 4 * RECENT_SAMPLE + 100, buffers
    assert large <= small + RECENT_SAMPLE, buffers


def test_the_maintenance_pass_refreshes_what_the_workers_changed(midrun: MidRun) -> None:
    with midrun.sessions() as session, session.begin():
        analyzed = refresh_midrun_statistics(session)
    # jobs changed by the finished fraction (>= 2% of its rows); attempts and results were never analysed.
    assert sorted(analyzed) == ["attempts", "jobs", "results"]
    with midrun.sessions() as session, session.begin():
        assert refresh_midrun_statistics(session) == []  # fresh now: the next pass reads one catalog row each


def test_ledger_connections_never_jit_compile(midrun: MidRun) -> None:
    """On statistics a run has outgrown, a page's estimated cost passed jit_above_cost and PostgreSQL spent
    1.3 s compiling a 50-row query: the ledger's connections turn JIT off."""
    with midrun.engine.connect() as connection:
        assert connection.execute(text("SHOW jit")).scalar() == "off"
