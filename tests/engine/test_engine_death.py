"""Engine death on the real vLLM CPU build: the engine-core process is killed under a working
`vlmbatch worker`; the worker hands its jobs back and exits non-zero; a restarted worker finishes the run
with no job lost and none written twice."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import psutil
import pytest
from sqlalchemy import func, select

from tests.fixtures.bad_images import good_jpeg
from tests.processes import service_env, start_worker, stop_worker, vlmbatch_json, wait_until_done
from vlmbatch.schema.contracts.errors import ErrorType
from vlmbatch.schema.contracts.states import AttemptOutcome, JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Attempt, Job, Result
from vlmbatch.worker.process.main import EXIT_ENGINE_DEAD

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(600)]


def _engine_core(worker: psutil.Process, timeout: float = 240) -> psutil.Process:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for child in worker.children(recursive=True):
            try:
                if "EngineCore" in " ".join(child.cmdline()) or child.name().startswith("VLLM::Engine"):
                    return child
            except psutil.Error:
                continue
        time.sleep(0.5)
    raise TimeoutError("no engine-core process")


def _running(sessions: object) -> int:
    with sessions() as session:  # type: ignore[operator]
        return int(session.scalar(select(func.count()).select_from(Job).where(Job.state == JobState.RUNNING)) or 0)


def test_a_worker_whose_engine_dies_hands_back_its_jobs_and_a_restart_finishes_the_run(
    tmp_path: Path, tiny_model: Path, postgres_url: str, redis_url: str, queue_name: str
) -> None:
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(8):
        (folder / f"{i:02d}.jpg").write_bytes(good_jpeg(448, 448, seed=i))
    env = service_env(
        database_url=postgres_url,
        broker_url=redis_url,
        queue=queue_name,
        VLMBATCH_ENGINE="vllm",
        VLMBATCH_MODEL=str(tiny_model),
        VLMBATCH_TRUST_REMOTE_CODE="true",
        VLMBATCH_ENFORCE_EAGER="true",
        VLMBATCH_MAX_MODEL_LEN="4096",
        VLMBATCH_MAX_NUM_SEQS="16",
        VLMBATCH_KV_CACHE_BYTES=str(256 * 2**20),
        VLMBATCH_HEARTBEAT_SECONDS="1",
    )
    submitted = vlmbatch_json(
        [
            "submit",
            str(folder),
            "--question",
            "Describe.",
            "--model",
            str(tiny_model),
            "--max-tokens",
            "3000",
            "--ignore-eos",
            "--json",
        ],
        env,
    )
    assert isinstance(submitted, dict)
    _, sessions = open_ledger(postgres_url)
    first = start_worker(env, tmp_path / "worker-1.log")
    try:
        core = _engine_core(psutil.Process(first.pid))
        deadline = time.monotonic() + 240
        while _running(sessions) == 0 and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _running(sessions) > 0, "no job started generating"
        os.kill(core.pid, signal.SIGKILL)
        code = first.wait(timeout=120)
    finally:
        stop_worker(first)
    log = (tmp_path / "worker-1.log").read_text(errors="replace")
    assert code == EXIT_ENGINE_DEAD, log[-3000:]
    assert _running(sessions) == 0  # handed back at once, not left to expire
    with sessions() as session:
        handed_back = session.execute(
            select(Attempt.outcome, Attempt.error_type).where(Attempt.outcome != AttemptOutcome.RUNNING)
        ).all()
    assert handed_back and all(
        (outcome, error) == (AttemptOutcome.ABANDONED, ErrorType.ENGINE_DEAD) for outcome, error in handed_back
    )

    second = start_worker({**env, "VLMBATCH_MAX_NUM_SEQS": "16"}, tmp_path / "worker-2.log")
    try:
        counts = wait_until_done(sessions, submitted["run"], timeout=420)
    finally:
        stop_worker(second)
    assert counts == {JobState.TRUNCATED: 8}  # ignore_eos: every job ends at max_tokens, all accounted for
    with sessions() as session:
        per_job = set(session.scalars(select(func.count(func.distinct(Result.attempt_id))).group_by(Result.job_id)))
    assert per_job == {1}  # one committed result per job
