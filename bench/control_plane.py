"""Control-plane benchmark: producer, worker path and producer memory, side by side in one run.

(a) producer: N jobs from a manifest, and from an S3 server over HTTP, into PostgreSQL + Redis with
    `vlmbatch submit`, against a naive baseline in the same run (one ORM insert and one
    `send_task()` per job, as a quick Celery script does). The S3 server's own listing rate is shown
    beside ours: submit cannot list faster than the server answers.
(b) worker path: the fake engine answering instantly, real Redis + PostgreSQL + S3 fetch and decode of
    small images, 2 worker processes; end-to-end jobs/s from first claim to last result.
(c) producer memory: peak RSS of `vlmbatch submit` at a small and a large manifest (streaming: flat).

  python bench/control_plane.py --quick     # a few minutes on 2 cores
  python bench/control_plane.py             # N = 100,000; memory at 1,000,000
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.processes import VLMBATCH, free_port  # noqa: E402

POSTGRES = os.environ.get("VLMBATCH_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")
REDIS = os.environ.get("VLMBATCH_BENCH_REDIS_URL", "redis://127.0.0.1:6379/13")


def fresh_database() -> str:
    import psycopg

    name = f"vlmbatch_cp_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(POSTGRES.replace("postgresql+psycopg://", "postgresql://"), autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    url = POSTGRES.rsplit("/", 1)[0] + "/" + name
    subprocess.run([*VLMBATCH, "db", "upgrade"], env=env_for(url), check=True, capture_output=True)
    return url


def env_for(database_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_")}
    env.update(VLMBATCH_DATABASE_URL=database_url, VLMBATCH_BROKER_URL=REDIS, VLMBATCH_QUEUE="cp", **extra)
    return env


def flush_redis() -> None:
    import redis

    redis.Redis.from_url(REDIS).flushdb()


# Linux carries a process's peak RSS across fork and exec: a command started by this process reports at
# least this process's size (the 10^7 scale run once read 139 MB for both submit and reconcile: its own
# size). A small launcher in between, freshly exec'd, reports the command's own peak.
_LAUNCHER = (
    "import os, sys\n"
    "pid = os.posix_spawn(sys.argv[2], sys.argv[2:], os.environ)\n"
    "_, status, usage = os.wait4(pid, 0)\n"
    "print(usage.ru_maxrss, file=open(sys.argv[1], 'w'))\n"
    "sys.exit(os.waitstatus_to_exitcode(status))\n"
)


def timed(command: list[str], env: dict[str, str]) -> tuple[float, float, str]:
    """Run `command` (its first item a full path); return wall seconds, its peak RSS in MB, its stdout."""
    with tempfile.NamedTemporaryFile("r", suffix=".maxrss") as report:
        launcher = [sys.executable, "-c", _LAUNCHER, report.name, *command]
        started = time.perf_counter()
        done = subprocess.run(launcher, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - started
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(command[3:6])} failed: {done.stderr[-2000:]}")
        peak_kib = int(report.read().strip())
    return wall, peak_kib / 1024, done.stdout


def write_manifest(path: Path, n: int, bucket: str = "bench") -> Path:
    with path.open("w") as handle:
        for i in range(n):
            handle.write(f'{{"image": "s3://{bucket}/img-{i:08d}.jpg"}}\n')
    return path


NAIVE = """
import sys, time
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.contracts.models import JobSpec, RunSettings
from vlmbatch.schema.ledger.runs import create_or_reuse_run
from vlmbatch.schema.contracts.settings import Settings
from vlmbatch.schema.ledger.tables import Job
from vlmbatch.worker.transport.celery_app import RUN_JOBS_TASK, make_celery
settings = Settings()
_, sessions = open_ledger(settings.resolved_database_url())
app = make_celery(settings)
run = create_or_reuse_run(sessions, name="naive", settings=RunSettings(), queue="cp", source=None)
n = int(sys.argv[1])
for i in range(n):
    spec = JobSpec(images=(f"s3://bench/img-{i:08d}.jpg",), question="What is shown?")
    with sessions() as session, session.begin():
        job = Job(run_id=run.id, input_key=spec.input_key(), images=list(spec.images), question=spec.question)
        session.add(job)
        session.flush()
        job_id = job.id
    app.send_task(RUN_JOBS_TASK, args=[[job_id]], queue="cp")
"""


def producer(work: Path, n: int, n_naive: int, n_s3: int) -> dict[str, Any]:
    manifest = write_manifest(work / "manifest.jsonl", n)
    rows: dict[str, Any] = {}
    flush_redis()
    db = fresh_database()
    wall, rss, _ = timed([*VLMBATCH, "submit", str(manifest), "-q", "What is shown?", "--json"], env_for(db))
    rows["vlmbatch submit, manifest"] = {"jobs": n, "wall_s": wall, "jobs_per_s": n / wall, "peak_rss_mb": rss}
    flush_redis()
    db = fresh_database()
    wall, rss, _ = timed([sys.executable, "-c", NAIVE, str(n_naive)], env_for(db))
    rows["naive: ORM insert + send_task per job"] = {
        "jobs": n_naive,
        "wall_s": wall,
        "jobs_per_s": n_naive / wall,
        "peak_rss_mb": rss,
    }
    rows.update(s3_producer(work, n_s3))
    return rows


def s3_producer(work: Path, n: int) -> dict[str, Any]:
    import logging
    from concurrent.futures import ThreadPoolExecutor

    from moto.server import ThreadedMotoServer

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    os.environ.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench", AWS_DEFAULT_REGION="us-east-1")
    try:
        from vlmbatch.media.stores import make_s3_client

        client: Any = make_s3_client(endpoint)
        client.create_bucket(Bucket="bench")
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="bench", Key=f"p/img-{i:08d}.jpg", Body=b"x"), range(n)))
        started = time.perf_counter()
        listed = sum(
            len(page.get("Contents", []))
            for page in client.get_paginator("list_objects_v2").paginate(Bucket="bench", Prefix="p/")
        )
        listing = time.perf_counter() - started
        flush_redis()
        db = fresh_database()
        env = env_for(db, VLMBATCH_S3_ENDPOINT_URL=endpoint, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench")
        wall, rss, _ = timed([*VLMBATCH, "submit", "s3://bench/p/", "-q", "What is shown?", "--json"], env)
    finally:
        server.stop()
    return {
        "S3 server's own listing (boto3 paginator)": {
            "jobs": listed,
            "wall_s": listing,
            "jobs_per_s": listed / listing,
        },
        "vlmbatch submit, s3:// prefix": {"jobs": n, "wall_s": wall, "jobs_per_s": n / wall, "peak_rss_mb": rss},
    }


def worker_path(work: Path, n: int) -> dict[str, Any]:
    """2 worker processes, fake engine answering at once, images fetched from S3 and decoded."""
    from concurrent.futures import ThreadPoolExecutor

    from moto.server import ThreadedMotoServer

    from tests.fixtures.bad_images import good_jpeg

    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{port}"
    try:
        from vlmbatch.media.stores import make_s3_client

        client: Any = make_s3_client(endpoint)
        client.create_bucket(Bucket="work")
        image = good_jpeg(64, 64)
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.put_object(Bucket="work", Key=f"w/{i:07d}.jpg", Body=image), range(n)))
        started = time.perf_counter()
        with ThreadPoolExecutor(16) as pool:
            list(pool.map(lambda i: client.get_object(Bucket="work", Key=f"w/{i:07d}.jpg")["Body"].read(), range(n)))
        get_rate = n / (time.perf_counter() - started)
        s3_span = _run_workers(work, "s3://work/w/", n, endpoint)
        local = work / "local-images"
        local.mkdir()
        for i in range(n):
            (local / f"{i:07d}.jpg").write_bytes(image)
        local_span = _run_workers(work, str(local), n, endpoint)
    finally:
        server.stop()
    return {
        "S3 server's own GET rate (boto3, 16 threads)": {"jobs": n, "wall_s": n / get_rate, "jobs_per_s": get_rate},
        "2 workers, fake engine, S3 fetch + decode": {
            "jobs": s3_span.requests,
            "wall_s": s3_span.wall_s,
            "jobs_per_s": s3_span.requests / s3_span.wall_s,
        },
        "2 workers, fake engine, local files + decode": {
            "jobs": local_span.requests,
            "wall_s": local_span.wall_s,
            "jobs_per_s": local_span.requests / local_span.wall_s,
        },
    }


def _run_workers(work: Path, source: str, n: int, endpoint: str) -> Any:
    from bench.workload import ledger_span, wait_for_run

    workers: list[subprocess.Popen[bytes]] = []
    try:
        flush_redis()
        db = fresh_database()
        env = env_for(
            db,
            VLMBATCH_S3_ENDPOINT_URL=endpoint,
            VLMBATCH_ENGINE="fake",
            VLMBATCH_MODEL="fake-model",
            AWS_ACCESS_KEY_ID="bench",
            AWS_SECRET_ACCESS_KEY="bench",
        )
        out = subprocess.run(
            [*VLMBATCH, "submit", source, "-q", "What?", "--model", "fake-model", "--json"],
            env=env,
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        run_id = json.loads(out.strip().splitlines()[-1])["run"]
        for _ in range(2):
            log = (work / f"worker-{len(workers)}.log").open("wb")
            workers.append(
                subprocess.Popen(
                    [*VLMBATCH, "worker", "--loglevel", "WARNING"], env=env, stdout=log, stderr=subprocess.STDOUT
                )
            )
        wait_for_run(db, run_id, timeout=600)
        return ledger_span(db, run_id, "worker path")
    finally:
        for process in workers:
            process.terminate()
        for process in workers:
            process.wait(timeout=60)


def memory(work: Path, small: int, large: int) -> dict[str, Any]:
    rows = {}
    for n in (small, large):
        manifest = write_manifest(work / f"mem-{n}.jsonl", n)
        flush_redis()
        db = fresh_database()
        wall, rss, _ = timed([*VLMBATCH, "submit", str(manifest), "-q", "What is shown?", "--json"], env_for(db))
        rows[f"vlmbatch submit, {n:,} jobs"] = {"jobs": n, "wall_s": wall, "jobs_per_s": n / wall, "peak_rss_mb": rss}
    return rows


def _table(title: str, rows: dict[str, Any], baseline: str | None = None) -> str:
    lines = [title, f"{'path':<46} {'jobs':>9} {'wall s':>8} {'jobs/s':>9} {'peak RSS MB':>12} {'ratio':>7}"]
    base = rows[baseline]["jobs_per_s"] if baseline else None
    for name, row in rows.items():
        rss = f"{row['peak_rss_mb']:.0f}" if "peak_rss_mb" in row else "-"
        ratio = f"{row['jobs_per_s'] / base:.1f}x" if base else "-"
        lines.append(
            f"{name:<46} {row['jobs']:>9,} {row['wall_s']:>8.1f} {row['jobs_per_s']:>9,.0f} {rss:>12} {ratio:>7}"
        )
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "control_plane.json")
    args = parser.parse_args()
    n, n_naive, n_s3, n_worker = (20_000, 2_000, 5_000, 2_000) if args.quick else (100_000, 5_000, 100_000, 10_000)
    small, large = (20_000, 200_000) if args.quick else (100_000, 1_000_000)
    work = Path(tempfile.mkdtemp(prefix="vlmbatch-cp-"))
    produced = producer(work, n, n_naive, n_s3)
    worked = worker_path(work, n_worker)
    memory_rows = memory(work, small, large)
    print(f"\n{platform.machine()}, {os.cpu_count()} cores; PostgreSQL and Redis on the same machine\n")
    print(_table("(a) producer into PostgreSQL + Redis", produced, baseline="naive: ORM insert + send_task per job"))
    print()
    print(_table("(b) worker path", worked))
    print()
    print(_table("(c) producer memory (streaming)", memory_rows))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps(
            {
                "date": time.strftime("%Y-%m-%d %H:%M"),
                "quick": args.quick,
                "producer": produced,
                "worker": worked,
                "memory": memory_rows,
            },
            indent=2,
        )
    )
    print(f"\nwrote {args.out}")
    return 0


if __name__ == "__main__":
    resource.setrlimit(resource.RLIMIT_NOFILE, (4096, 4096))
    sys.exit(main())
