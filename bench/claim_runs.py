"""What many active runs add to a claim: one token's claim (16 jobs, rolled back) on a queue whose only run
has N queued jobs, against the same on a queue with 100 more runs active (priorities and shares are read
from their counters, schema/ledger/shares.py). The two ledgers are claimed from in turn, claim by claim, so
that a shared machine's load falls on both alike; medians over `--claims` rounds.

  python bench/claim_runs.py                 # 10^5 jobs, 100 more runs of 100 jobs, 150 rounds (~1 min)
  python bench/claim_runs.py --jobs 1000000 --runs 1000
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control_plane import fresh_database  # noqa: E402
from bench.scale import MESSAGE_JOBS, QUEUE, drop_database, other_runs  # noqa: E402


def ledger(jobs: int) -> tuple[str, Any]:
    from sqlalchemy import text

    from vlmbatch.schema.contracts.models import RunSettings
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.enqueue import refresh_statistics
    from vlmbatch.schema.ledger.runs import create_or_reuse_run

    db = fresh_database()
    _, sessions = open_ledger(db)
    run = create_or_reuse_run(sessions, name="big", settings=RunSettings(model="fake-model"), queue=QUEUE, source=None)
    with sessions() as session, session.begin():
        session.execute(
            text(
                "INSERT INTO jobs (run_id, input_key, images, question, state, attempt_count, attempt_base, "
                "transient_failures, accepted_samples, created_at, queued_at) SELECT :run, md5(i::text), "
                "json_build_array('file:///img.jpg'), 'x', 'queued', 0, 0, 0, 0, now(), now() "
                "FROM generate_series(1, :jobs) AS i"
            ),
            {"run": run.id, "jobs": jobs},
        )
        session.execute(
            text(
                "INSERT INTO run_counts (run_id, state, error_type, shard, jobs) VALUES (:run, 'queued', '', 0, :jobs)"
            ),
            {"run": run.id, "jobs": jobs},
        )
    with sessions() as session, session.begin():
        refresh_statistics(session, inserted=jobs)
    return db, sessions


def main() -> int:
    from vlmbatch.schema.ledger.claims import QueueClaimer

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="queued jobs of the large run")
    parser.add_argument("--runs", type=int, default=100, help="more runs active on the second ledger")
    parser.add_argument("--claims", type=int, default=150, help="rounds (one claim on each ledger a round)")
    args = parser.parse_args()
    one, many = ledger(args.jobs), ledger(args.jobs)
    samples: dict[str, list[float]] = {"1 run": [], f"{args.runs + 1} runs": []}
    with other_runs(many[1], args.runs):
        claimers = [QueueClaimer(queue=QUEUE, model="fake-model") for _ in range(2)]
        for _ in range(args.claims):
            for (_, sessions), claimer, label in zip((one, many), claimers, samples, strict=True):
                started = time.perf_counter()
                with sessions() as session, session.begin():
                    claimed = claimer.claim(session, limit=MESSAGE_JOBS, worker="bench", lease_seconds=60)
                    assert len(claimed) == MESSAGE_JOBS
                    session.rollback()
                samples[label].append((time.perf_counter() - started) * 1000)
    for label, values in samples.items():
        print(f"claim of one token ({MESSAGE_JOBS} jobs), {label} active: median {statistics.median(values):.1f} ms")
    for db, sessions in (one, many):
        sessions.kw["bind"].dispose()
        drop_database(db)
    return 0


if __name__ == "__main__":
    sys.exit(main())
