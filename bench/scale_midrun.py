"""Mid-run scale benchmark: the hot queries while a run is 10%, 50% and 90% finished, on the statistics
that submit left (no ANALYZE after the load, autovacuum off), two sizes side by side in one run.

At each size, into a fresh PostgreSQL database: N queued jobs inserted and analysed as `vlmbatch submit`
leaves them, then finished oldest first by SQL as workers leave them (attempts and results written; 2%
failed, ~3% truncated), in three steps. At each step, without a statistics refresh: every browser page
and JSON summary (rendered in-process by the browser app), the run page's charts' read alone, `status`,
and a claim of one token's jobs (rolled back), each as its median wall time and the shared buffers its
statements read (EXPLAIN (ANALYZE, BUFFERS), summed): flat means the buffers do not grow with N. The
claim is a worker's claimer, which claimed before (its cursors: schema/ledger/heads.py); "new claimer" is
a worker's first claim.

  python bench/scale_midrun.py --quick     # 10^5 and 10^6 jobs
  python bench/scale_midrun.py             # 10^6 and 10^7
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from sqlalchemy import Engine, event, text  # noqa: E402

from bench.control_plane import POSTGRES  # noqa: E402
from tests.integration.test_query_plans_midrun import _ATTEMPTS, _COUNT, _JOBS_DONE, _RESULTS  # noqa: E402

STEPS = (0.1, 0.5, 0.9)
REPEATS = 5
_SUBMIT = """
INSERT INTO jobs (run_id, input_key, images, question, state, attempt_count, attempt_base, transient_failures,
                  accepted_samples, created_at, queued_at)
SELECT :run, md5(i::text), json_build_array('file:///img/' || i || '.jpg'), 'what?', 'queued', 0, 0, 0, 0,
       now(), now()
FROM generate_series(CAST(:first AS bigint), CAST(:last AS bigint)) AS i
"""


@contextmanager
def buffers_read() -> Iterator[list[int]]:
    """Shared buffers (hit + read) of every SELECT any engine sends (the browser has its own read-only one),
    by EXPLAIN (ANALYZE, BUFFERS)."""
    counted: list[int] = []

    def explain(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if executemany or not statement.lstrip().upper().startswith(("SELECT", "WITH")):
            return
        with conn.connection.dbapi_connection.cursor() as probe:
            probe.execute("EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + statement, parameters)
            plan = probe.fetchone()[0][0]["Plan"]
            counted.append(int(plan.get("Shared Hit Blocks", 0)) + int(plan.get("Shared Read Blocks", 0)))

    event.listen(Engine, "before_cursor_execute", explain)
    try:
        yield counted
    finally:
        event.remove(Engine, "before_cursor_execute", explain)


def median_ms(action: Callable[[], object]) -> float:
    times = []
    for _ in range(REPEATS):
        started = time.perf_counter()
        action()
        times.append((time.perf_counter() - started) * 1000)
    return statistics.median(times)


def fresh_ledger() -> tuple[str, Engine, Any]:
    import psycopg

    from vlmbatch.schema.ledger.database import make_session_factory, open_ledger, upgrade

    name = f"vlmbatch_midrun_{uuid.uuid4().hex[:8]}"
    admin = POSTGRES.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES.rsplit("/", 1)[0] + "/" + name
    engine, _ = open_ledger(url, auto_migrate=False)
    upgrade(engine)
    return url, engine, make_session_factory(engine)


def drop(url: str) -> None:
    import psycopg

    admin = POSTGRES.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[-1]}" WITH (FORCE)')


def measure(n: int, only: str | None = None) -> dict[str, float]:
    from tests.integration.ledger_helpers import make_run
    from vlmbatch.producer.browser.app import build_app
    from vlmbatch.schema.contracts.settings import Settings
    from vlmbatch.schema.ledger.claims import QueueClaimer
    from vlmbatch.schema.ledger.enqueue import refresh_statistics
    from vlmbatch.schema.ledger.recent import recent_finishes
    from vlmbatch.schema.ledger.status import run_progress

    url, engine, sessions = fresh_ledger()
    row: dict[str, float] = {}
    try:
        run_id = make_run(sessions, name="mid", jobs=0)[0]
        started = time.perf_counter()
        for first in range(1, n + 1, 500_000):
            with sessions() as session, session.begin():
                session.execute(text(_SUBMIT), {"run": run_id, "first": first, "last": min(n, first + 499_999)})
        with sessions() as session, session.begin():
            refresh_statistics(session, inserted=n)
        print(f"{n:,}: submitted by SQL in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        app = build_app(Settings(database_url=url), token=None)  # type: ignore[call-arg]
        headers = {"host": "127.0.0.1:8000"}
        pages = {
            "run page": f"/runs/{run_id}",
            "?status=succeeded": f"/runs/{run_id}?status=succeeded",
            "?status=truncated": f"/runs/{run_id}?status=truncated",
            "?status=failed&error=": f"/runs/{run_id}?status=failed&error=input.unreadable",
            "?error=": f"/runs/{run_id}?error=input.unreadable",
            "?status=cancelled (none)": f"/runs/{run_id}?status=cancelled",
            "deep keyset page": f"/runs/{run_id}?after={n - 500}",
            "runs list": "/",
            "JSON summary": f"/api/runs/{run_id}",
        }
        first_id = 1
        with engine.connect() as connection:
            first_id = int(connection.execute(text("SELECT min(id) FROM jobs")).scalar() or 1)
        for step in STEPS:
            started = time.perf_counter()
            with sessions() as session, session.begin():
                session.execute(text("DELETE FROM results; DELETE FROM attempts"))
                session.execute(text(_ATTEMPTS), {"run": run_id, "last": first_id + int(n * step) - 1})
                session.execute(text(_JOBS_DONE), {"run": run_id})
                session.execute(text(_RESULTS))
                session.execute(text("DELETE FROM run_counts"))
                session.execute(text(_COUNT))
            print(f"{n:,}: {step:.0%} finished in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
            at = f"{step:.0%}"

            def get(target: str) -> Callable[[], None]:
                def page() -> None:
                    assert app.respond(target, headers).status == 200, target

                return page

            def charts() -> None:  # the run page's charts' read alone (every run page above includes it)
                with sessions() as session:
                    recent_finishes(session, run_id)

            def status() -> None:
                with sessions() as session:
                    run_progress(session, run_id)

            # A worker keeps its claimer (and the claimer its cursors) for its life: one claim committed
            # first, then the claims measured roll back (and put the cursors back).
            warm = QueueClaimer(queue="q")
            with sessions() as session, session.begin():
                assert warm.claim(session, limit=16, worker="w", lease_seconds=60)

            def claimer(kept: QueueClaimer | None) -> Callable[[], None]:
                def claim() -> None:
                    with sessions() as session, session.begin():
                        taker = kept or QueueClaimer(queue="q")
                        assert taker.claim(session, limit=16, worker="w", lease_seconds=60)
                        session.rollback()

                return claim

            actions = {
                **{name: get(target) for name, target in pages.items()},
                "page charts (recent finishes)": charts,
                "status": status,
                "claim": claimer(warm),
                "claim, new claimer": claimer(None),
            }
            for name, action in actions.items():
                if only is not None and not name.startswith(only):
                    continue
                row[f"{at} {name}, ms"] = median_ms(action)
                with buffers_read() as counted:
                    action()
                row[f"{at} {name}, buffers"] = float(sum(counted))
    finally:
        engine.dispose()
        drop(url)
    return row


def table(sizes: list[int], rows: list[dict[str, float]]) -> str:
    lines = [
        f"| {'':<40} | " + " | ".join(f"{n:>12,}" for n in sizes) + " | ratio |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    for name in rows[0]:
        values = [row.get(name, float("nan")) for row in rows]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        lines.append(f"| {name:<40} | " + " | ".join(f"{v:>12,.1f}" for v in values) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^5 and 10^6 jobs instead of 10^6 and 10^7")
    parser.add_argument("--sizes", help="comma-separated job counts instead")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    parser.add_argument("--only", help="measure only the requests whose name starts with this (e.g. claim)")
    args = parser.parse_args()
    sizes = [100_000, 1_000_000] if args.quick else [1_000_000, 10_000_000]
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    rows = [measure(n, args.only) for n in sizes]
    print(table(sizes, rows))
    print(f"\n{os.cpu_count()} cores; medians of {REPEATS} in-process calls; buffers: shared hit + read, summed.")
    if args.json:
        args.json.write_text(json.dumps({"sizes": sizes, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
