"""Several workers on one host, each pinned to its own GPUs: `vlmbatch workers --gpus-per-worker 2`.

Every worker is a process running `worker_command` (the CLI passes `vlmbatch worker`) whose environment
gives it a disjoint group of GPUs (`CUDA_VISIBLE_DEVICES`), a tensor-parallel size equal to that group's
size, its own worker id and its own metrics port. The launcher restarts a worker that exits (engine death, a
stalled consumer, a crash), and on SIGTERM/SIGINT forwards the signal so that every worker drains and hands
its leases back.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
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


class Supervisor:
    """Keeps one worker process running per plan; forwards SIGTERM/SIGINT to them and waits."""

    def __init__(self, plans: Sequence[WorkerPlan], *, worker_command: Sequence[str]) -> None:
        self._plans = list(plans)
        self._command = list(worker_command)
        self._processes: dict[int, subprocess.Popen[bytes]] = {}
        self._started: dict[int, float] = {}
        self.stopping = False

    def start(self, plan: WorkerPlan) -> None:
        process = subprocess.Popen(self._command, env=plan.env)
        self._processes[plan.index] = process
        self._started[plan.index] = time.monotonic()
        log.info("worker %d on GPUs %s: pid %d", plan.index, ",".join(plan.gpus), process.pid)

    def forward(self, signum: int, _frame: object = None) -> None:
        self.stopping = True
        for process in self._processes.values():
            if process.poll() is None:
                process.send_signal(signum)

    def restart_exited(self) -> None:
        for plan in self._plans:
            code = self._processes[plan.index].poll()
            if code is None or self.stopping:
                continue
            log.warning("worker %d exited with %d; restarting it", plan.index, code)
            time.sleep(max(0.0, RESTART_BACKOFF_S - (time.monotonic() - self._started[plan.index])))
            if not self.stopping:
                self.start(plan)

    def run(self) -> int:
        signal.signal(signal.SIGTERM, self.forward)
        signal.signal(signal.SIGINT, self.forward)
        for plan in self._plans:
            self.start(plan)
        while not self.stopping:
            time.sleep(0.5)
            self.restart_exited()
        for process in self._processes.values():
            process.wait()
        return 0


def run_workers(plans: Sequence[WorkerPlan], *, worker_command: Sequence[str]) -> int:
    """Run `worker_command` once per plan (in the plan's environment) until told to stop; restart any that
    exits on its own."""
    return Supervisor(plans, worker_command=worker_command).run()


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
