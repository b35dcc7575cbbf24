"""Scale benchmark: what each per-pass, per-claim, per-heartbeat, per-status and per-page cost does as a
run grows a hundredfold, two sizes side by side in one run (docs/ARCHITECTURE.md, "Scale": each must stay flat).

At each size, into a fresh PostgreSQL database and Redis: `vlmbatch submit` of N jobs (wall, jobs/s,
peak RSS); `vlmbatch reconcile` with nothing lost and again after 1% of the messages were deleted from
Redis (wall, peak RSS, jobs whose tokens were republished); the claim of one token's jobs (the queue's
oldest 16 queued jobs, median of 20, rolled back);
`status` and the browser's run page, `?status=queued` page and a deep keyset page (median of 5, rendered
in-process by the browser app); 2 `vlmbatch worker` processes on the fake engine, jobs/s over the first
WINDOW seconds after their first result; one heartbeat of a worker running 10,000 jobs (and the job rows
it wrote: none, leases live in the worker's own row); `vlmbatch export` of what the workers finished;
the ledger's disk size per million jobs.

A size above `--seed-above` S (10^6) is reached by seeding (bench/scale_seed.py): the run is grown to N - S
queued jobs by SQL, their claim tokens published by `vlmbatch reconcile --grace 0`, then the last S jobs are
submitted into that run by `vlmbatch submit --run NAME`; submit's rows measure that submit, into a ledger
already holding N - S jobs (a note under the table says so, with the seeding's time, which is not a row).

  python bench/scale.py --quick     # 10^4 and 10^6 jobs (about ten minutes on 2 cores)
  python bench/scale.py             # 10^5 and 10^7 (9*10^6 seeded + 10^6 submitted; ~8 min on 2 cores)
  python bench/scale.py --sizes 10000,200000 --seed-above 100000    # the seeded path, small (~1.5 min)
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.control_plane import env_for, flush_redis, fresh_database, timed  # noqa: E402
from bench.scale_seed import seed_ledger  # noqa: E402
from tests.fixtures.bad_images import good_jpeg  # noqa: E402
from tests.processes import VLMBATCH, free_port  # noqa: E402

QUEUE = "cp"  # bench.control_plane.env_for's queue
HEARTBEAT_JOBS = 10_000
MESSAGE_JOBS = 16  # the default jobs_per_message
# Every size submits with these flags (and --run scale-N): a seeded run is created with the settings they give.
SUBMIT_ARGS = ["-q", "x", "--model", "fake-model"]
SEED_ABOVE = 1_000_000


def write_manifest(folder: Path, n: int) -> Path:
    """N distinct jobs over one small image (distinct questions), so that workers can really run them."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "img.jpg").write_bytes(good_jpeg(32, 32))
    path = folder / "manifest.jsonl"
    with path.open("w") as handle:
        for i in range(n):
            handle.write(f'{{"image": "img.jpg", "question": "What is shown in view {i}?"}}\n')
    return path


def median_ms(action: Callable[[], object], repeats: int) -> float:
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        action()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples)


def measure(work: Path, n: int, window: float, seed_above: int) -> tuple[dict[str, float], str | None]:
    from sqlalchemy import select, text

    from vlmbatch.producer.browser.app import build_app
    from vlmbatch.schema.contracts.settings import Settings
    from vlmbatch.schema.ledger.claims import QueueClaimer, claim_jobs
    from vlmbatch.schema.ledger.database import open_ledger
    from vlmbatch.schema.ledger.liveness import renew_leases
    from vlmbatch.schema.ledger.status import run_progress
    from vlmbatch.schema.ledger.tables import Job

    row: dict[str, float] = {}
    flush_redis()
    db = fresh_database()
    env = env_for(db, VLMBATCH_ENGINE="fake", VLMBATCH_MODEL="fake-model")
    submitted = min(n, seed_above)
    manifest = write_manifest(work / f"m{n}", submitted)
    submit_args = [*SUBMIT_ARGS, "--run", f"scale-{n}"]
    seeded_run, note = seed(db, env, manifest, submit_args, n - submitted)

    wall, rss, out = timed([*VLMBATCH, "submit", str(manifest), *submit_args, "--json"], env)
    report = json.loads(out.strip().splitlines()[-1])
    run_id = report["run"]
    assert report["submitted"] == submitted and report["skipped"] == 0, out
    assert seeded_run in (None, run_id), (seeded_run, out)
    row |= {"submit jobs/s": submitted / wall, "submit peak RSS MB": rss}

    wall, rss, out = timed([*VLMBATCH, "reconcile", "--grace", "0", "--json"], env)
    row |= {"reconcile, nothing lost: s": wall, "reconcile, nothing lost: MB": rss}
    assert json.loads(out)["republished"] == 0, out
    import redis

    broker = redis.Redis.from_url(env["VLMBATCH_BROKER_URL"])
    broker.rpop(QUEUE, max(1, broker.llen(QUEUE) // 100))
    wall, rss, out = timed([*VLMBATCH, "reconcile", "--grace", "0", "--json"], env)
    row |= {"reconcile, 1% lost: s": wall, "reconcile, 1% lost: MB": rss, "republished": json.loads(out)["republished"]}

    _, sessions = open_ledger(db, auto_migrate=False)
    claimer = QueueClaimer(queue=QUEUE, model="fake-model")  # as a worker keeps it: warm after one claim

    def claim_once() -> None:
        with sessions() as session, session.begin():
            assert len(claimer.claim(session, limit=MESSAGE_JOBS, worker="bench", lease_seconds=60)) == MESSAGE_JOBS
            session.rollback()

    row["claim of one token, ms"] = median_ms(claim_once, 20)

    def status_once() -> None:
        with sessions() as session:
            run_progress(session, run_id)

    row["status, ms"] = median_ms(status_once, 5)
    port = free_port()
    browser = build_app(Settings(database_url=db), token=None)  # type: ignore[call-arg]
    headers = {"host": f"127.0.0.1:{port}"}
    deep = n - 500

    def page(target: str) -> Callable[[], None]:
        def get() -> None:
            response = browser.respond(target, headers)
            assert response.status == 200, (target, response.status)

        return get

    row["browser run page, ms"] = median_ms(page(f"/runs/{run_id}"), 5)
    row["browser ?status=queued, ms"] = median_ms(page(f"/runs/{run_id}?status=queued"), 5)
    row["browser deep keyset page, ms"] = median_ms(page(f"/runs/{run_id}?after={deep}"), 5)

    with sessions() as session, session.begin():
        queued = list(
            session.scalars(
                select(Job.id)
                .where(Job.run_id == run_id, Job.state == "queued")
                .order_by(Job.id.desc())
                .limit(min(HEARTBEAT_JOBS, n // 2))
            )
        )
        attempts = [c.attempt_id for c in claim_jobs(session, job_ids=queued, worker="beat", lease_seconds=600)]
    table = "(SELECT oid FROM pg_class WHERE relname = 'jobs')"
    written = text(f"SELECT pg_stat_get_xact_tuples_updated({table})")

    def beat() -> None:
        with sessions() as session, session.begin():
            # The counter adds up over the transaction: this beat's job rows are the difference across it.
            before = session.scalar(written)
            assert not renew_leases(session, worker="beat", attempt_ids=attempts, lease_seconds=600)
            rows_written.append(int(session.scalar(written) or 0) - int(before or 0))

    rows_written: list[int] = []
    row["heartbeat of 10,000 running jobs, ms"] = median_ms(beat, 3)
    row["job rows written per heartbeat"] = statistics.median(rows_written)

    row["worker jobs/s (2, fake engine)"] = worker_rate(work, env, sessions, run_id, window)

    out_path = work / f"export-{n}.jsonl"
    wall, _, _ = timed([*VLMBATCH, "export", str(run_id), "--format", "jsonl", "--out", str(out_path)], env)
    exported = sum(1 for _ in out_path.open())
    row["export jobs/s"] = exported / wall
    with sessions() as session:
        size = session.scalar(text("SELECT pg_database_size(current_database())"))
    row["ledger MB per million jobs"] = float(size or 0) / n / 1024 / 1024 * 1_000_000
    sessions.kw["bind"].dispose()
    browser_engine = browser._sessions.kw["bind"]
    browser_engine.dispose()
    drop_database(db)
    return row, note


def seed(
    db: str, env: dict[str, str], manifest: Path, submit_args: list[str], jobs: int
) -> tuple[int | None, str | None]:
    """Seed `jobs` jobs into the run that `vlmbatch submit MANIFEST SUBMIT_ARGS` will reuse (none: no
    seeding); return the run's id and the note printed under the table."""
    if jobs <= 0:
        return None, None
    print(f"seeding {jobs:,} jobs", file=sys.stderr, flush=True)
    seeded = seed_ledger(
        db, env, manifest=manifest, submit_args=submit_args, queue=QUEUE, jobs=jobs, per_message=MESSAGE_JOBS
    )
    submitted = sum(1 for _ in manifest.open())
    note = (
        f"at {jobs + submitted:,}: submit of the last {submitted:,} jobs into a ledger of {jobs:,} seeded by SQL; "
        f"seeding took {seeded.total_s:.1f} s, not measured (INSERTs {seeded.insert_s:.1f} s, refresh_statistics "
        f"{seeded.statistics_s:.1f} s, reconcile publishing {seeded.tokens:,} tokens {seeded.reconcile_s:.1f} s)"
    )
    print(note, file=sys.stderr, flush=True)
    return seeded.run_id, note


def drop_database(url: str) -> None:
    import psycopg

    from bench.control_plane import POSTGRES

    admin = POSTGRES.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(admin, autocommit=True) as connection:
        connection.execute(f'DROP DATABASE IF EXISTS "{url.rsplit("/", 1)[-1]}" WITH (FORCE)')


def worker_rate(work: Path, env: dict[str, str], sessions: Any, run_id: int, window: float) -> float:
    """Jobs finished per second by 2 workers over `window` seconds, from their first result on."""
    from vlmbatch.schema.ledger.status import run_status

    def done() -> int:
        with sessions() as session:
            counts = run_status(session, run_id).counts
        return sum(v for k, v in counts.items() if k not in ("queued", "running"))

    def finished() -> bool:
        with sessions() as session:
            counts = run_status(session, run_id).counts
        return counts["queued"] == 0  # the heartbeat's own leased jobs stay running

    workers = [
        subprocess.Popen(
            [*VLMBATCH, "worker", "--loglevel", "WARNING"],
            env={**env, "VLMBATCH_WORKER_ID": f"bench-{i}", "VLMBATCH_METRICS_PORT": str(free_port())},
            stdout=(work / f"worker-{run_id}-{i}.log").open("wb"),
            stderr=subprocess.STDOUT,
        )
        for i in range(2)
    ]
    try:
        deadline = time.monotonic() + 120
        while done() == 0 and time.monotonic() < deadline:
            time.sleep(0.2)
        start_count, started = done(), time.monotonic()
        while time.monotonic() - started < window and not finished():
            time.sleep(0.5)
        return (done() - start_count) / (time.monotonic() - started)
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait(timeout=120)


def table(sizes: list[int], rows: list[dict[str, float]]) -> str:
    names = list(rows[0])
    lines = [
        f"| {'':<36} | " + " | ".join(f"{n:>12,}" for n in sizes) + " | ratio |",
        "|---|" + "---|" * len(sizes) + "---|",
    ]
    for name in names:
        values = [row.get(name, float("nan")) for row in rows]
        ratio = values[-1] / values[0] if values[0] else float("nan")
        lines.append(f"| {name:<36} | " + " | ".join(f"{v:>12,.1f}" for v in values) + f" | {ratio:.2f} |")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="10^4 and 10^6 jobs instead of 10^5 and 10^7")
    parser.add_argument("--window", type=float, default=30.0, help="seconds of worker throughput measured")
    parser.add_argument("--sizes", help="comma-separated job counts instead (a smoke run of this script)")
    parser.add_argument(
        "--seed-above", type=int, default=SEED_ABOVE, help="larger sizes: all but this many jobs seeded by SQL"
    )
    args = parser.parse_args()
    sizes = [10_000, 1_000_000] if args.quick else [100_000, 10_000_000]
    if args.sizes:
        sizes = [int(size) for size in args.sizes.split(",")]
    with tempfile.TemporaryDirectory(prefix="vlmbatch-scale-") as folder:
        measured = [measure(Path(folder), n, args.window, args.seed_above) for n in sizes]
    rows = [row for row, _ in measured]
    print(table(sizes, rows))
    for _, note in measured:
        if note:
            print(f"\n{note}.")
    print(f"\n{os.cpu_count()} cores; medians of repeated in-process calls for claim, status and pages.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
