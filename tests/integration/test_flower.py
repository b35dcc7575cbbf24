"""Flower, as the compose stack runs it, sees the fleet: a real worker on Redis, and the tasks it ran."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from tests.conftest import fill_bucket
from tests.fixtures.bad_images import good_jpeg
from tests.processes import free_port, service_env, start_worker, stop_worker, vlmbatch_json, wait_until_done
from vlmbatch.schema.ledger.database import open_ledger


def _get(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as answer:
        return json.loads(answer.read())


def _until(probe: Any, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        try:
            value = probe()
        except OSError:
            value = None
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.5)


def test_flower_lists_a_running_worker_and_its_tasks(
    postgres_url: str, redis_url: str, queue_name: str, s3_endpoint: str, s3_bucket: str, tmp_path: Path
) -> None:
    fill_bucket(s3_endpoint, s3_bucket, {f"f/{i:02d}.jpg": good_jpeg(16, 16, seed=i) for i in range(40)})
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        s3_endpoint=s3_endpoint,
        VLMBATCH_WORKER_ID="flower-w0",
    )
    port = free_port()
    flower_env = {**os.environ, "FLOWER_UNAUTHENTICATED_API": "true"}
    flower = subprocess.Popen(
        [sys.executable, "-m", "celery", "--broker", redis_url, "flower", f"--port={port}", "--address=127.0.0.1"],
        env=flower_env,
        stdout=(tmp_path / "flower.log").open("wb"),
        stderr=subprocess.STDOUT,
    )
    worker = start_worker(env, tmp_path / "worker.log")
    try:
        base = f"http://127.0.0.1:{port}"
        workers = _until(lambda: _get(f"{base}/api/workers?refresh=1"), timeout=60)
        assert workers and "vlmbatch@flower-w0" in workers, (tmp_path / "flower.log").read_text()[-2000:]
        run = vlmbatch_json(["submit", f"s3://{s3_bucket}/f/", "-q", "What is it?", "--json"], env)
        assert isinstance(run, dict)
        _, sessions = open_ledger(postgres_url)
        wait_until_done(sessions, run["run"], timeout=120)

        def run_jobs_tasks() -> list[dict[str, Any]]:
            tasks = _get(f"{base}/api/tasks")
            return [t for t in tasks.values() if t.get("name") == "vlmbatch.run_jobs" and t.get("state") == "SUCCESS"]

        done = _until(lambda: len(run_jobs_tasks()) >= 3 and run_jobs_tasks(), timeout=30)
        assert done, "Flower saw no finished vlmbatch.run_jobs task"
        # 40 jobs in messages of 16: three tasks, each on our worker.
        assert len(done) == 3 and {t["worker"] for t in done} == {"vlmbatch@flower-w0"}
    finally:
        stop_worker(worker)
        flower.terminate()
        flower.wait(timeout=30)
