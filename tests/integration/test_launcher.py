"""`vlmbatch workers` on real processes: each worker's environment, both draining one queue, a killed
worker restarted, and SIGTERM draining them all."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import psutil
from sqlalchemy import select

from tests.fixtures.bad_images import good_jpeg
from tests.processes import VLMBATCH, service_env, vlmbatch_json, wait_until_done
from vlmbatch.schema.contracts.states import JobState
from vlmbatch.schema.ledger.database import open_ledger
from vlmbatch.schema.ledger.tables import Attempt


def _workers(launcher: subprocess.Popen[bytes], *, not_pid: int | None = None, timeout: float = 60) -> dict[str, int]:
    """Worker name (w0, w1) → pid, once both run (Celery retitles its process: its name is in the title)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = {}
        for child in psutil.Process(launcher.pid).children():
            with contextlib.suppress(psutil.Error):
                title = " ".join(child.cmdline())
                match = re.search(r"vlmbatch@\S+-(w\d+)", title)
                if match and child.pid != not_pid and child.status() != psutil.STATUS_ZOMBIE:
                    found[match.group(1)] = child.pid
        if len(found) == 2:
            return found
        time.sleep(0.2)
    raise TimeoutError("the workers did not start")


def test_each_worker_gets_its_own_gpus_and_all_drain_one_queue(
    tmp_path: Path, postgres_url: str, redis_url: str, queue_name: str
) -> None:
    env = service_env(database_url=postgres_url, broker_url=redis_url, queue=queue_name, VLMBATCH_FAKE_LATENCY_S="0.2")
    folder = tmp_path / "imgs"
    folder.mkdir()
    for i in range(200):
        (folder / f"{i:03d}.jpg").write_bytes(good_jpeg(32, 32, seed=i))
    launcher = subprocess.Popen(
        [*VLMBATCH, "workers", "--gpus", "0-3", "--gpus-per-worker", "2", "--loglevel", "INFO"],
        env=env,
        stdout=(tmp_path / "launcher.log").open("wb"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    log = tmp_path / "launcher.log"
    try:
        pids = _workers(launcher)
        os.kill(pids["w0"], signal.SIGKILL)  # the launcher must start it again, with the same GPUs
        restarted = _workers(launcher, not_pid=pids["w0"])
        assert restarted["w1"] == pids["w1"] and restarted["w0"] != pids["w0"]

        submitted = vlmbatch_json(["submit", str(folder), "--question", "What?", "--json"], env)
        assert isinstance(submitted, dict)
        _, sessions = open_ledger(postgres_url)
        assert wait_until_done(sessions, submitted["run"], timeout=120) == {JobState.SUCCEEDED: 200}
        with sessions() as session:
            workers = set(session.scalars(select(Attempt.worker)))
        assert {w.rsplit("-", 1)[-1] for w in workers} == {"w0", "w1"}  # both groups took work
    finally:
        launcher.send_signal(signal.SIGTERM)
        code = launcher.wait(timeout=90)
    assert code == 0
    started = re.findall(
        r"worker \S+-(w\d): model \S+, tensor_parallel_size (\d), CUDA_VISIBLE_DEVICES=(\S+),", log.read_text()
    )
    assert sorted(set(started)) == [("w0", "2", "0,1"), ("w1", "2", "2,3")]
    assert started.count(("w0", "2", "0,1")) == 2  # started again after the kill, on the same GPUs
    assert not [c for c in psutil.process_iter(["cmdline"]) if queue_name in " ".join(c.info["cmdline"] or [])]
