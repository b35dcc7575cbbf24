"""Starting real vlmbatch processes (workers, CLI commands) for integration and chaos tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.tables import Job

VLMBATCH = [sys.executable, "-m", "vlmbatch.producer.cli"]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def service_env(
    *, database_url: str, broker_url: str, queue: str, s3_endpoint: str | None = None, **extra: str
) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_") or k.startswith("VLMBATCH_TEST_")}
    env.update(
        {
            "VLMBATCH_DATABASE_URL": database_url,
            "VLMBATCH_BROKER_URL": broker_url,
            "VLMBATCH_QUEUE": queue,
            "VLMBATCH_ENGINE": "fake",
            "VLMBATCH_MODEL": "fake-model",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if s3_endpoint:
        env["VLMBATCH_S3_ENDPOINT_URL"] = s3_endpoint
    env.update(extra)
    return env


def vlmbatch(
    args: list[str], env: Mapping[str, str], *, timeout: float = 120, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    """Run a vlmbatch command with `env`'s settings on top of this process's non-vlmbatch environment
    (in `cwd`, where given: relative SOURCE paths are the user's)."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("VLMBATCH_") or k.startswith("VLMBATCH_TEST_")}
    full.update(env)
    return subprocess.run([*VLMBATCH, *args], env=full, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def vlmbatch_json(args: list[str], env: Mapping[str, str], *, timeout: float = 120, cwd: Path | None = None) -> object:
    done = vlmbatch(args, env, timeout=timeout, cwd=cwd)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def start_worker(env: Mapping[str, str], log: Path, *extra_args: str) -> subprocess.Popen[bytes]:
    handle = log.open("ab")
    return subprocess.Popen(
        [*VLMBATCH, "worker", "--loglevel", "INFO", *extra_args],
        env=dict(env),
        stdout=handle,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )


def stop_worker(process: subprocess.Popen[bytes], *, timeout: float = 60) -> int:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
    try:
        return process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()


def wait_until_done(sessions: sessionmaker[Session], run_id: int, *, timeout: float) -> dict[str, int]:
    """Poll the ledger until no job of the run is queued or running; return counts per state."""
    deadline = time.monotonic() + timeout
    while True:
        with sessions() as session:
            counts = dict(
                session.execute(select(Job.state, func.count()).where(Job.run_id == run_id).group_by(Job.state)).all()
            )
        if not counts.get(JobState.QUEUED, 0) and not counts.get(JobState.RUNNING, 0) and counts:
            return counts
        if time.monotonic() > deadline:
            raise TimeoutError(f"run {run_id} not done after {timeout}s: {counts}")
        time.sleep(0.25)
