"""A supervised fleet of `vlmbatch worker` processes: a worker that dies (killed, or exiting after engine
death) is started again, as systemd or Kubernetes would. Each start gets its own worker id, so leases
and attempts say which incarnation held them."""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.processes import VLMBATCH


@dataclass
class Slot:
    index: int
    generation: int = 0
    process: subprocess.Popen[bytes] | None = None
    exits: list[int] = field(default_factory=list)

    @property
    def worker_id(self) -> str:
        return f"chaos-w{self.index}-g{self.generation}"


class Fleet:
    def __init__(self, *, size: int, env: dict[str, str], logs: Path) -> None:
        self._env = env
        self._logs = logs
        self.slots = [Slot(i) for i in range(size)]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._watcher = threading.Thread(target=self._supervise, name="fleet", daemon=True)
        self.restarts = 0

    def start(self) -> None:
        for slot in self.slots:
            self._spawn(slot)
        self._watcher.start()

    def _spawn(self, slot: Slot) -> None:
        slot.generation += 1
        env = dict(self._env, VLMBATCH_WORKER_ID=slot.worker_id)
        log = (self._logs / f"{slot.worker_id}.log").open("ab")
        slot.process = subprocess.Popen(
            [*VLMBATCH, "worker", "--loglevel", "INFO"],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def _supervise(self) -> None:
        while not self._stop.wait(0.5):
            with self._lock:
                for slot in self.slots:
                    if slot.process is not None and slot.process.poll() is not None:
                        slot.exits.append(slot.process.returncode)
                        self.restarts += 1
                        self._spawn(slot)

    def signal(self, index: int, signum: int) -> str:
        """Send `signum` to worker `index`'s whole process group (the engine's children too)."""
        with self._lock:
            slot = self.slots[index]
            assert slot.process is not None
            os.killpg(slot.process.pid, signum)
            return slot.worker_id

    def stop(self, timeout: float = 60) -> list[int]:
        self._stop.set()
        self._watcher.join(timeout=5)
        codes = []
        for slot in self.slots:
            process = slot.process
            if process is None or process.poll() is not None:
                continue
            os.killpg(process.pid, signal.SIGCONT)
            process.send_signal(signal.SIGTERM)
            try:
                codes.append(process.wait(timeout=timeout))
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                codes.append(process.wait())
        return codes

    def wait_started(self, timeout: float) -> None:
        """Wait until every worker logged that it is ready to consume."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ready = [(self._logs / f"{s.worker_id}.log") for s in self.slots]
            if all(p.exists() and b" ready." in p.read_bytes() for p in ready):
                return
            time.sleep(0.5)
        raise TimeoutError("workers did not start")
