"""Several workers on one host, each pinned to its own GPUs: `vlmbatch workers --gpus-per-worker 2`.

Every worker is a `vlmbatch worker` process whose environment gives it a disjoint group of GPUs
(`CUDA_VISIBLE_DEVICES`), a tensor-parallel size equal to that group's size, its own worker id and its own
metrics port. The launcher restarts a worker that exits (engine death, a stalled consumer, a crash), and
on SIGTERM/SIGINT forwards the signal so that every worker drains and hands its leases back.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass

log = logging.getLogger(__name__)

# A worker that keeps dying faster than this is not restarted in a tight loop.
RESTART_BACKOFF_S = 5.0


@dataclass(frozen=True)
class WorkerPlan:
    index: int
    gpus: tuple[str, ...]
    env: dict[str, str]


def parse_gpus(spec: str) -> list[str]:
    """`0,1,2,3` or `0-3` (or a mix, `0-1,4`) → ["0", "1", "2", "3"]."""
    gpus: list[str] = []
    for part in spec.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part:
            low, high = (int(x) for x in part.split("-", 1))
            if high < low:
                raise ValueError(f"bad GPU range {part!r}")
            gpus.extend(str(i) for i in range(low, high + 1))
        else:
            gpus.append(str(int(part)))
    if len(set(gpus)) != len(gpus):
        raise ValueError(f"GPU {spec!r} lists a GPU twice")
    return gpus


def plan_workers(
    gpus: Sequence[str],
    *,
    per_worker: int,
    base_env: dict[str, str],
    worker_id_prefix: str,
    metrics_port: int | None,
) -> list[WorkerPlan]:
    """Split `gpus` into groups of `per_worker` (tensor-parallel size), one worker per group."""
    if per_worker < 1 or len(gpus) % per_worker:
        raise ValueError(f"{len(gpus)} GPUs do not split into groups of {per_worker}")
    plans = []
    for index in range(len(gpus) // per_worker):
        group = tuple(gpus[index * per_worker : (index + 1) * per_worker])
        env = dict(base_env)
        env.update(
            CUDA_VISIBLE_DEVICES=",".join(group),
            VLMBATCH_TENSOR_PARALLEL_SIZE=str(per_worker),
            VLMBATCH_WORKER_ID=f"{worker_id_prefix}-w{index}",
        )
        if metrics_port is not None:
            env["VLMBATCH_METRICS_PORT"] = str(metrics_port + index)
        plans.append(WorkerPlan(index=index, gpus=group, env=env))
    return plans


def run_workers(plans: Sequence[WorkerPlan], *, extra_args: Sequence[str] = ()) -> int:
    """Run one `vlmbatch worker` per plan until told to stop; restart any that exits on its own."""
    command = [sys.executable, "-c", "from producer.cli import main; main()", "worker", *extra_args]
    processes: dict[int, subprocess.Popen[bytes]] = {}
    started: dict[int, float] = {}
    stopping = False

    def start(plan: WorkerPlan) -> None:
        processes[plan.index] = subprocess.Popen(command, env=plan.env)
        started[plan.index] = time.monotonic()
        log.info("worker %d on GPUs %s: pid %d", plan.index, ",".join(plan.gpus), processes[plan.index].pid)

    def forward(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for process in processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for plan in plans:
        start(plan)
    while True:
        time.sleep(0.5)
        if stopping:
            for process in processes.values():
                process.wait()
            return 0
        for plan in plans:
            code = processes[plan.index].poll()
            if code is None:
                continue
            log.warning("worker %d exited with %d; restarting it", plan.index, code)
            delay = RESTART_BACKOFF_S - (time.monotonic() - started[plan.index])
            if delay > 0:
                time.sleep(delay)
            if not stopping:
                start(plan)


def visible_gpus() -> list[str]:
    """The GPUs this host offers: CUDA_VISIBLE_DEVICES if set, else those nvidia-smi lists."""
    if os.environ.get("CUDA_VISIBLE_DEVICES"):
        return parse_gpus(os.environ["CUDA_VISIBLE_DEVICES"])
    try:
        listed = subprocess.run(
            ["nvidia-smi", "--query-gpu=index", "--format=csv,noheader"], capture_output=True, text=True, check=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return []
    return [line.strip() for line in listed.splitlines() if line.strip()]
