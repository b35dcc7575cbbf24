"""A model that does not load, on the real vLLM CPU build: a `vlmbatch worker` whose model folder holds a
corrupt `model.safetensors` exits at start, and each failed start counts for the circuit breaker of the
runs it would serve; the run is paused with vLLM's own error as its reason instead of staying queued with
none. The two failing workers start together (two of a fleet): each start costs ~1 min of vLLM imports
and process spawns on 2 cores, mostly single-threaded, so side by side they take about the time of one.
Restarts one after another, counted across them, are test_run_breaker.py's (fake engine)."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.processes import service_env, start_worker, vlmbatch_json
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Run, RunBreaker

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def test_a_worker_whose_model_does_not_load_trips_the_breaker_of_its_runs(
    tmp_path: Path, tiny_model: Path, postgres_url: str, redis_url: str, queue_name: str
) -> None:
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_model, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 64)  # a copy cut short: not a safetensors file
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        VLMBATCH_ENGINE="vllm",
        VLMBATCH_MODEL=str(broken),
        VLMBATCH_TRUST_REMOTE_CODE="true",
        VLMBATCH_ENFORCE_EAGER="true",
        VLMBATCH_MAX_MODEL_LEN="4096",
        VLMBATCH_KV_CACHE_BYTES=str(256 * 2**20),
        VLMBATCH_BREAKER_STREAK="2",
    )
    manifest = tmp_path / "m.jsonl"
    manifest.write_text('{"image": "https://example.org/a.jpg"}\n{"image": "https://example.org/b.jpg"}\n')
    submitted = vlmbatch_json(["submit", str(manifest), "-q", "What?", "--model", str(broken), "--json"], env)
    assert isinstance(submitted, dict)
    logs = [tmp_path / f"worker-{n}.log" for n in range(2)]
    workers = [start_worker(env, log) for log in logs]
    try:
        for worker, log in zip(workers, logs, strict=True):
            assert worker.wait(timeout=400) != 0, log.read_text()[-3000:]
    finally:  # a worker that started after all is not left serving, nor its engine processes
        for worker in workers:
            if worker.poll() is None:
                os.killpg(worker.pid, signal.SIGKILL)
                worker.wait()
    _, sessions = open_ledger(postgres_url)
    with sessions() as session:
        run = session.get(Run, submitted["run"])
        breaker = session.get(RunBreaker, submitted["run"])
        assert run is not None and breaker is not None
        assert run.paused_at is not None and breaker.trips == 1
        assert run.pause_reason is not None and run.pause_reason.startswith("circuit breaker: 2 failures in a row")
        assert "first error engine.start: " in run.pause_reason, run.pause_reason
    status = vlmbatch_json(["status", str(submitted["run"]), "--json"], env)
    assert isinstance(status, dict) and status["paused"] and status["counts"]["queued"] == 2
